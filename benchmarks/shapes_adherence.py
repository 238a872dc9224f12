"""Latent adherence of a trained shapes model: sample z ~ p(z|c), then x at a CFG scale, parse x.

    python benchmarks/shapes_adherence.py --ckpt_path CKPT --num_samples 512 --cfg_scale 3 --output DIR

Writes DIR/adherence.json and DIR/grid.png (the first 64 samples). ``--weights trained`` measures the
optimiser's weights instead of the EMA average (``kaleido.load``). Conditions cycle through the
coarse shapes conditions ("a circle", "a square", "a triangle"). Each latent type of the checkpoint
gets its measure (``kaleido.metrics.adherence.latent_adherence``): text, the share of samples with
every described object; box and blob, the mean IoU with the parsed objects; visual_token, the share
of codes the VQ tokenizer gives back from the sample (the checkpoint the latent type names, or
``--vq_checkpoint``).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI

import kaleido
from kaleido.checkpoint import Weights
from kaleido.data.shapes import SHAPES
from kaleido.latents import LatentType, VisualTokenExtractor
from kaleido.metrics.adherence import latent_adherence
from kaleido.viz import save_grid


def vq_extractor(latent_types: list[LatentType], checkpoint: Path | None, device: str) -> VisualTokenExtractor | None:
    """The visual-token extractor that re-encodes samples, on ``device``; ``None`` without that type."""
    visual = next((t for t in latent_types if t.name == "visual_token"), None)
    if visual is None:
        return None
    path = checkpoint or getattr(visual, "checkpoint", None)
    if not path:
        raise ValueError("the model's visual_token latent names no VQ checkpoint; pass --vq_checkpoint")
    return VisualTokenExtractor(str(path), visual.codebook_size, visual.num_tokens, device)  # type: ignore[attr-defined]


def main(
    ckpt_path: Path,
    num_samples: int = 512,
    cfg_scale: float = 3.0,
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    num_steps: int = 250,
    seed: int = 0,
    batch_size: int = 256,
    precision: Literal["32", "bf16"] = "32",
    vq_checkpoint: Path | None = None,
    output: Path = Path("adherence"),
    compile: bool = False,
    weights: Weights = "averaged",
) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_float32_matmul_precision("high")
    model = kaleido.load(ckpt_path, map_location=device, expected=kaleido.Kaleido, weights=weights)
    latent_types = model.tokenizer.latent_types
    vq = vq_extractor(latent_types, vq_checkpoint, device)  # fails before sampling, not after
    conditions = [f"a {SHAPES[i % len(SHAPES)]}" for i in range(num_samples)]
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    start = time.perf_counter()
    with autocast:
        out = model.generate(
            conditions, cfg_scale=cfg_scale, sampler=sampler, num_steps=num_steps, seed=seed, batch_size=batch_size,
            compile=compile,
        )
    seconds = time.perf_counter() - start
    scores = latent_adherence(out.images, out.latent_texts or [], latent_types, vq=vq)
    result = {
        "ckpt_path": str(ckpt_path),
        "latent_types": [t.name for t in latent_types],
        "num_samples": num_samples,
        "cfg_scale": cfg_scale,
        "sampler": sampler,
        "num_steps": num_steps,
        "seed": seed,
        "precision": precision,
        "compile": compile,
        "weights": model.loaded_weights,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "per_type": {name: asdict(score) for name, score in scores.items()},
        "sampling_seconds": round(seconds, 2),
        "examples": [{"condition": c, "latent": z} for c, z in zip(out.conditions[:6], (out.latent_texts or [])[:6])],
    }
    if "text" in scores:  # the keys of the text-latent runs (docs/results.md, benchmarks/*_shapes_text.sh)
        text = scores["text"]
        result.update(adherence=text.objects, adherence_exact=text.exact, unparsed_latents=text.unparsed)  # type: ignore[union-attr]
    output.mkdir(parents=True, exist_ok=True)
    (output / "adherence.json").write_text(json.dumps(result, indent=2))
    save_grid(out.images[:64], str(output / "grid.png"), nrow=8, upscale=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    CLI(main, as_positional=False)
