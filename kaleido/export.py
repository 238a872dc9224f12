"""``python -m kaleido export``: a checkpoint for sampling and evaluation only.

A training checkpoint holds the trained weights, their EMA average, Adam's two moments and the loops'
state: about four times the model. What ``kaleido.load`` (and so ``sample``, ``evaluate``,
``adherence`` and the notebooks) needs is the model's record, its hyperparameters and one set of
weights. The export keeps those, optionally with the parameters in bf16 for half the size (buffers,
such as the VQ's codebook, stay as they are): meant for ``--precision bf16``, where autocast rounds the
weights of every matmul and convolution anyway (docs/evaluation.md says what else changes). It cannot
resume training (no optimiser state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from kaleido.checkpoint import EXPORT_KEY, Weights, check_weights, model_from_checkpoint
from kaleido.checkpoint_io import CHECKPOINT_KEY, read_checkpoint
from kaleido.data.contract import data_section, run_config

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export(
    ckpt_path: Path,
    output: Path,
    weights: Weights = "averaged",
    dtype: Literal["float32", "bfloat16"] = "float32",
    data_config: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint's model for sampling and evaluation: its record, hyperparameters and one set of weights.

    Args:
        ckpt_path: a checkpoint written by ``fit`` (or an export).
        output: the file to write (not ``ckpt_path``).
        weights: "averaged", the EMA average where the run kept one (else the trained weights); "trained",
            the optimiser's own weights.
        dtype: of the floating-point parameters: "float32" (as trained) or "bfloat16" (half the size).
            Buffers (e.g. the VQ's codebook, which its nearest-code search keeps in float32) stay as they are.
        data_config: the training config (or its data section) whose data section the export records, so
            that ``evaluate`` and ``adherence`` read a lone export file without ``--data_config`` (default:
            the ``config.yaml`` beside ``ckpt_path`` or one folder up, or what an exported source recorded).
        overwrite: write over an existing file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_weights(weights)
    output = Path(output)
    if output.resolve() == Path(ckpt_path).resolve():
        raise ValueError(f"--output is the checkpoint being exported ({ckpt_path}); write the export to another file")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists; pass --overwrite true to write it again")
    checkpoint = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(checkpoint, ckpt_path, weights=weights)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # tied weights under each of their names
    cast = DTYPES[dtype]
    state = {name: value.to(cast) if name in parameters and value.is_floating_point() else value for name, value in model.state_dict().items()}
    before = checkpoint.get(EXPORT_KEY) or {}  # an export of an export keeps what its source was
    config = data_config if data_config is not None else run_config(Path(ckpt_path))
    data = data_section(Path(config)) if config is not None else before.get("data")
    step = before.get("global_step", checkpoint.get("global_step"))
    slim = {
        CHECKPOINT_KEY: checkpoint[CHECKPOINT_KEY],
        "hyper_parameters": checkpoint.get("hyper_parameters", {}),
        "state_dict": state,
        EXPORT_KEY: {
            "source": before.get("source", str(ckpt_path)), "weights": model.loaded_weights, "dtype": dtype, "global_step": step,
            "bf16_rounded": dtype == "bfloat16" or bool(before.get("bf16_rounded")), "data": data,
        },
        # What Lightning's `validate` / `test --ckpt_path` read beside the weights.
        "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version"), "epoch": checkpoint.get("epoch"), "global_step": step,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save(slim, partial)
    os.replace(partial, output)  # never a half-written file under the output's name
    model_name = checkpoint[CHECKPOINT_KEY].get("class_path", "?").rpartition(".")[2]
    print(f"export: {model_name}, {model.loaded_weights} weights of step {step}, {dtype} -> {output} "
          f"({_mib(output):.1f} MiB, from {_mib(Path(ckpt_path)):.1f} MiB)")
    if data is None:
        print(f"note: no config.yaml beside {ckpt_path} and no --data_config: the export records no data, so evaluate "
              "and adherence will need --data_config")
    return output


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20


__all__ = ["DTYPES", "export"]
