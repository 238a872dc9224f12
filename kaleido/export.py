"""``python -m kaleido export``: a checkpoint for sampling and evaluation only.

A training checkpoint holds the trained weights, their EMA average, Adam's two moments and the loops'
state: about four times the model. What ``kaleido.load`` (and so ``sample``, ``evaluate``,
``adherence`` and the notebooks) needs is the model's record, its hyperparameters and one set of
weights. The export keeps those, optionally in bf16 for half the size: bf16 autocast rounds the weights
of every matmul and convolution to bf16 anyway, so at ``--precision bf16`` only the weights used outside
them (embedding tables, norms' scales) are used differently from the source; float32 keeps the source's
numbers exactly. It cannot resume training (no optimiser state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from kaleido.checkpoint import EXPORT_KEY, Weights, exported_weights, holds_average
from kaleido.checkpoint_io import CHECKPOINT_KEY, read_checkpoint

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export(
    ckpt_path: Path,
    output: Path,
    weights: Weights = "averaged",
    dtype: Literal["float32", "bfloat16"] = "float32",
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint's model for sampling and evaluation: its record, hyperparameters and one set of weights.

    Args:
        ckpt_path: a checkpoint written by ``fit`` (or an export).
        output: the file to write.
        weights: "averaged", the EMA average where the run kept one (else the trained weights); "trained",
            the optimiser's own weights.
        dtype: of the floating-point weights: "float32" (as trained) or "bfloat16" (half the size).
        overwrite: write over an existing file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if weights not in ("averaged", "trained"):
        raise ValueError(f"--weights must be 'averaged' or 'trained', got {weights!r}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists; pass --overwrite true to write it again")
    checkpoint = read_checkpoint(ckpt_path)
    held = exported_weights(checkpoint)
    if held is not None and weights != held:
        raise ValueError(f"{ckpt_path} is an export of the {held} weights only; it has no {weights} weights to export")
    has_average = holds_average(checkpoint)
    state = checkpoint["current_model_state" if has_average and weights == "trained" else "state_dict"]
    kept: Weights = held or ("averaged" if has_average and weights == "averaged" else "trained")
    cast = DTYPES[dtype]
    slim = {
        CHECKPOINT_KEY: checkpoint[CHECKPOINT_KEY],
        "hyper_parameters": checkpoint.get("hyper_parameters", {}),
        "state_dict": {name: value.to(cast) if value.is_floating_point() else value for name, value in state.items()},
        EXPORT_KEY: {"source": str(ckpt_path), "weights": kept, "dtype": dtype, "global_step": checkpoint.get("global_step")},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, output)
    model = checkpoint[CHECKPOINT_KEY].get("class_path", "?").rpartition(".")[2]
    step = checkpoint.get("global_step", slim[EXPORT_KEY]["global_step"])
    print(f"export: {model}, {kept} weights of step {step}, {dtype} -> {output} "
          f"({_mib(output):.1f} MiB, from {_mib(Path(ckpt_path)):.1f} MiB)")
    return output


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20


__all__ = ["DTYPES", "export"]
