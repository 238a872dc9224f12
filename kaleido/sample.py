"""``python -m kaleido sample``: images (and the latents they came from) from a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kaleido.checkpoint import Weights, load
from kaleido.devices import Precision, resolve_device, resolve_precision, sampling_autocast
from kaleido.diffusion.guiders import build_guider
from kaleido.diffusion.samplers import SamplerName
from kaleido.modules.base import ConditionalDiffusion
from kaleido.tokenizer import KaleidoTokenizer
from kaleido.viz import samples_grid, save_grid, to_pil


def sample(
    ckpt_path: Path,
    condition: str,
    num_samples: int = 16,
    cfg_scale: float | None = None,
    latent: str | None = None,
    seed: int = 0,
    output: Path = Path("samples"),
    sampler: SamplerName | None = None,
    num_steps: int | None = None,
    guider: str | dict[str, Any] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: Precision = "32",
    weights: Weights = "averaged",
) -> Path:
    """Sample ``num_samples`` images for one condition and write ``OUTPUT/grid.png``, one PNG per
    image and ``OUTPUT/samples.jsonl`` (condition, latent text used, image file, settings); for Kaleido
    also ``OUTPUT/latents.png``, each image with its z drawn over it (types that draw) and written under it.

    Args:
        ckpt_path: a checkpoint of a Kaleido or DiffusionModel (baseline) model.
        condition: the condition text, e.g. "a circle".
        num_samples: how many images.
        cfg_scale: classifier-free guidance scale γ (default: the model's sampling.cfg_scale).
        latent: an editable latent text that replaces the sampled z for every image (Kaleido only).
        seed: fixes the diffusion noise and the latent draws.
        output: the output folder (created).
        sampler: "ddpm" (ancestral, the paper's), "ddim", "dpmpp_2m_sde" (SDE-DPM-Solver++(2M): the fast
            choice, 25 steps) or "dpmpp_2m" (its ODE form; deterministic given the noise)
            (default: the model's).
        num_steps: sampler steps (default: the model's, 250 for DDPM).
        guider: how guidance combines the branches (default: the model's ``sampling.guider``, plain CFG):
            a name, ``cfg``, ``interval``, ``apg``, ``cads``, or ``{"class_path": ..., "init_args": {...}}``
            (docs/sampling.md).
        batch_size: images per forward pass.
        device: "auto" (CUDA if available), "cpu" or "cuda".
        precision: "bf16" runs the networks under bfloat16 autocast; "auto": bf16 on a GPU, 32 on a CPU; default "32".
        weights: "averaged", the EMA average when trained with it; "trained", the optimiser's own
            weights, which the average lags in short runs (``kaleido.load``).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not condition.strip():
        raise ValueError(
            'the condition is empty: give the text to condition on, e.g. --condition "a circle" '
            "(for unconditional samples, --cfg_scale 0 ignores it: the model's dropped condition)"
        )
    device = resolve_device(device)
    chosen = None if guider is None else build_guider(guider)  # a bad guider fails before loading
    model = load(ckpt_path, map_location=device, expected=ConditionalDiffusion, weights=weights)
    if latent is not None and not model.uses_latents:
        raise ValueError(f"{ckpt_path} is a baseline DiffusionModel: it takes no --latent")
    with sampling_autocast(resolve_precision(precision, device), device):
        out = model.generate(
            [condition] * num_samples,
            latents=None if latent is None else [latent] * num_samples,
            cfg_scale=cfg_scale, sampler=sampler, num_steps=num_steps, seed=seed, batch_size=batch_size, guider=chosen,
        )
    output.mkdir(parents=True, exist_ok=True)
    save_grid(out.images, str(output / "grid.png"), upscale=2)
    if out.latent_texts is not None:
        samples_grid(out.images, out.latent_texts, model.tokenizer.latent_types).save(output / "latents.png")
    settings = {
        "cfg_scale": model.sampling.cfg_scale if cfg_scale is None else cfg_scale,
        "sampler": sampler or model.sampling.sampler,
        "num_steps": num_steps or model.sampling.num_steps,
        "guider": build_guider(model.sampling.guider if chosen is None else chosen).spec(),
        "seed": seed,
        "weights": model.loaded_weights,  # "trained" where the checkpoint keeps no average
    }
    unparsed = 0
    with open(output / "samples.jsonl", "w") as lines:
        for index, image in enumerate(out.images):
            name = f"{index:05d}.png"
            to_pil(image).save(output / name)
            record = {"index": index, "condition": condition, "latent": None, "latent_given": latent is not None, "image": name}
            if out.latent_texts is not None:
                record["latent"] = z = out.latent_texts[index]
                record["latent_parses"] = parses = _parses(model.tokenizer, z)
                unparsed += not parses
            lines.write(json.dumps({**record, **settings}) + "\n")
    drawn = ", latents.png" if out.latent_texts is not None else ""
    print(f"wrote {num_samples} samples to {output}/ (grid.png{drawn}, samples.jsonl)")
    if unparsed:
        print(f"{unparsed} of {num_samples} sampled latents do not parse (latent_parses: false in samples.jsonl)")
    return output


def _parses(tokenizer: KaleidoTokenizer, text: str) -> bool:
    """Whether a sampled z reads back through its types' parsers (an undertrained prior may write garbage)."""
    try:
        tokenizer.split_latent_text(text)
    except ValueError:  # LatentParseError, or a part missing from a joined z
        return False
    return True
