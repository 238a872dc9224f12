"""``python -m kaleido adherence``: does a trained Kaleido model draw what its latents say?

Samples ``z ~ p(z | c)`` and then ``x`` at one CFG scale for a list of conditions, reads every latent type
back off the samples and scores each with the type's ``adherence`` hook (:mod:`kaleido.metrics.adherence`):
the data set's own reader where it has one (the data module of the ``config.yaml`` beside the checkpoint,
or ``--data_config``), else the type's extractor. Writes ``adherence.json`` and ``grid.png`` (the first 64
samples, latents drawn over them by the types that draw).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

from kaleido.checkpoint import Weights, load, recorded_data
from kaleido.data.contract import checkpoint_datamodule
from kaleido.devices import Precision, resolve_device, resolve_precision, sampling_autocast
from kaleido.diffusion.guiders import build_guider
from kaleido.diffusion.samplers import SamplerName
from kaleido.metrics.adherence import adherence_readers, data_adherence, latent_adherence
from kaleido.modules.kaleido import Kaleido
from kaleido.modules.settings import Compile
from kaleido.viz import samples_grid


def adherence(
    ckpt_path: Path,
    num_samples: int = 512,
    cfg_scale: float = 3.0,
    sampler: SamplerName = "ddpm",
    num_steps: int = 250,
    guider: str | dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 256,
    conditions: list[str] | None = None,
    data_config: Path | None = None,
    precision: Precision = "32",
    device: str = "auto",
    compile: Compile = False,
    weights: Weights = "averaged",
    data_items: int = 256,
    output: Path = Path("adherence"),
) -> dict[str, Any]:
    """Measure how closely a Kaleido checkpoint's samples follow the latents they were drawn from.

    Args:
        ckpt_path: a Kaleido checkpoint.
        num_samples: images to draw (the conditions are cycled to this many).
        cfg_scale: the guidance scale γ.
        sampler: "ddpm" (ancestral, the paper's), "ddim", "dpmpp_2m_sde" or "dpmpp_2m".
        num_steps: sampler steps.
        guider: the guider (default: the model's ``sampling.guider``, plain CFG): a name or
            ``{"class_path": ..., "init_args": {...}}`` (docs/sampling.md).
        seed: fixes the z draws and the noise.
        batch_size: images per forward pass and per reader call.
        conditions: the condition texts (default: the training data's, in order).
        data_config: the training config (or its data section); used instead of the config.yaml beside
            the checkpoint. Without either, each type is read by its own extractor.
        precision: "bf16" samples under bfloat16 autocast; "auto": bf16 on a GPU, 32 on a CPU; default "32".
        device: "auto" (CUDA if available), "cpu" or "cuda".
        compile: ``torch.compile`` the denoiser for sampling (true, or a mode by name: ``reduce-overhead`` replays it as CUDA graphs).
        weights: "averaged" (the EMA average where the checkpoint keeps one) or "trained".
        data_items: training images read back against their ground-truth latents, where the data set
            has them: each measure's ``data_`` value, what the reader makes of real data (0: skip).
        output: the output folder (created).
    """
    if num_samples < 1 or batch_size < 1 or num_steps < 1:
        raise ValueError(f"--num_samples, --batch_size and --num_steps must be >= 1, got {num_samples}, {batch_size}, {num_steps}")
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    given = None if guider is None else build_guider(guider)  # a bad guider fails before loading
    model = load(ckpt_path, map_location=device, expected=Kaleido, weights=weights)
    chosen = given if given is not None else build_guider(model.sampling.guider)
    latent_types = model.tokenizer.latent_types
    data = checkpoint_datamodule(Path(ckpt_path), data_config, lambda: recorded_data(ckpt_path))
    if data is None:
        print(f"note: no config.yaml beside {ckpt_path} and no --data_config: every latent type is read by its own extractor")
    readers = adherence_readers(latent_types, data, device)  # fails before sampling, not after
    for note in readers.notes():
        print(note)
    if not readers.extractors:
        raise ValueError(f"none of the latent types {[t.name for t in latent_types]} can be measured (see the lines above)")
    prompts = _prompts(conditions, data, num_samples)
    start = time.perf_counter()
    with sampling_autocast(precision, device):
        out = model.generate(
            prompts, sampler=sampler, num_steps=num_steps, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size, compile=compile,
            guider=chosen,
        )
    seconds = time.perf_counter() - start
    texts = out.latent_texts or []
    scores = latent_adherence(out.images, texts, latent_types, readers.extractors, prompts, batch_size)
    for latent_type in latent_types:
        if data is not None and latent_type.name in scores:
            reader = readers.extractors[latent_type.name]
            scores[latent_type.name].data = data_adherence(latent_type, data, reader, data_items, batch_size)
    result = {
        "ckpt_path": str(ckpt_path),
        "latent_types": [t.name for t in latent_types],
        "num_samples": num_samples,
        "cfg_scale": cfg_scale,
        "sampler": sampler,
        "num_steps": num_steps,
        "guider": chosen.spec(),
        "seed": seed,
        "precision": precision,
        "compile": compile,
        "weights": model.loaded_weights,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "per_type": {name: score.flat() for name, score in scores.items()},
        "skipped": readers.skipped,
        "sampling_seconds": round(seconds, 2),
        "examples": [{"condition": c, "latent": z} for c, z in zip(prompts[:6], texts[:6])],
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "adherence.json").write_text(json.dumps(result, indent=2))
    samples_grid(out.images[:64], texts[:64], latent_types, ncols=8, captions=False).save(output / "grid.png")
    print(json.dumps(result, indent=2))
    return result


def _prompts(conditions: Sequence[str] | None, data: object, count: int) -> list[str]:
    if not conditions:
        if data is None or not hasattr(data, "conditions"):
            raise ValueError("no conditions: pass --conditions [...], or --data_config for the training data's")
        conditions = data.conditions("train", count)  # type: ignore[attr-defined]
        if not conditions:
            raise ValueError("no conditions: the training data is empty and --conditions was not given")
    return list(islice(cycle(conditions), count))


__all__ = ["adherence"]
