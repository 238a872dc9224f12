"""Latent adherence of a trained shapes model: sample z ~ p(z|c), then x at a CFG scale, parse x.

    python benchmarks/shapes_adherence.py --ckpt_path CKPT --num_samples 512 --cfg_scale 3 --output DIR

Writes DIR/adherence.json and DIR/grid.png (the first 64 samples). Conditions cycle through the
coarse shapes conditions ("a circle", "a square", "a triangle").
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI

import kaleido
from kaleido.data.shapes import SHAPES
from kaleido.metrics.adherence import text_adherence
from kaleido.viz import save_grid


def main(
    ckpt_path: Path,
    num_samples: int = 512,
    cfg_scale: float = 3.0,
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    num_steps: int = 250,
    seed: int = 0,
    batch_size: int = 256,
    precision: Literal["32", "bf16"] = "32",
    output: Path = Path("adherence"),
) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_float32_matmul_precision("high")
    model = kaleido.load(ckpt_path, map_location=device, expected=kaleido.Kaleido)
    conditions = [f"a {SHAPES[i % len(SHAPES)]}" for i in range(num_samples)]
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    start = time.perf_counter()
    with autocast:
        out = model.generate(conditions, cfg_scale=cfg_scale, sampler=sampler, num_steps=num_steps, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - start
    score = text_adherence(out.images, out.latent_texts or [])
    result = {
        "ckpt_path": str(ckpt_path),
        "num_samples": num_samples,
        "cfg_scale": cfg_scale,
        "sampler": sampler,
        "num_steps": num_steps,
        "seed": seed,
        "precision": precision,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "adherence": score.objects,
        "adherence_exact": score.exact,
        "unparsed_latents": score.unparsed,
        "sampling_seconds": round(seconds, 2),
        "examples": [{"condition": c, "latent": z} for c, z in zip(out.conditions[:6], (out.latent_texts or [])[:6])],
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "adherence.json").write_text(json.dumps(result, indent=2))
    save_grid(out.images[:64], str(output / "grid.png"), nrow=8, upscale=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    CLI(main, as_positional=False)
