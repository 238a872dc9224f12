"""How far bf16 autocast moves the guided denoiser's x0 from float32's, per noise level and CFG scale, and
how much of that a float32 last layer would take back (docs/choices.md, "Sampling precision").

The model draws its own samples (SDE-DPM-Solver++, 25 steps), which are re-noised at each t; the guided
v-output is taken in float32, under bf16 autocast, and under bf16 with the output head's last layer in
float32, and turned into x0 estimates.

    python benchmarks/sampling_precision.py --ckpt_path last.ckpt --output precision.json
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from jsonargparse import CLI
from torch import Tensor, nn

from kaleido.checkpoint import load
from kaleido.diffusion.guiders import build_guider
from kaleido.diffusion.guiders.base import conditioned, guide
from kaleido.modules.base import ConditionalDiffusion


class Float32(nn.Module):
    """A layer run in float32 whatever autocast says."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


@contextmanager
def float32_last_layer(head: nn.Sequential) -> Iterator[None]:
    last = head[-1]
    head[-1] = Float32(last)
    try:
        yield
    finally:
        head[-1] = last


def rms(a: Tensor, b: Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def measure(
    model: ConditionalDiffusion,
    conditions: list[str],
    timesteps: list[int],
    cfg_scales: list[float],
    seed: int = 0,
) -> list[dict[str, float]]:
    """One row per (t, γ): RMS of x0 under bf16 and under bf16 with a float32 last layer, each against
    float32, and of float32's x0 against the clean sample (the model's own error, for scale)."""
    net, schedule, prediction = model.denoiser, model.schedule, model.diffusion_settings.prediction
    head = getattr(net, "out", None)
    if not isinstance(head, nn.Sequential):  # said before any sampling
        raise ValueError(f"{type(net).__name__} has no `out` head (nn.Sequential) whose last layer could run in float32")
    device = model.device
    with torch.no_grad():
        cond, _ = model.sampling_conditioning(conditions, None, seed)  # Kaleido draws z here
        x0 = model.sample_images(cond, 3.0, "dpmpp_2m_sde", 25, torch.Generator(device).manual_seed(seed))
    generator = torch.Generator(device).manual_seed(seed)

    def x0_estimate(x_t: Tensor, t: Tensor, scale: float, bf16: bool) -> Tensor:
        denoise = guide(conditioned(net, cond.states, cond.mask), build_guider("cfg"), scale, schedule, prediction)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = denoise(x_t, t).float()
        return schedule.predict_x0_eps(x_t, t, out, prediction)[0]

    rows = []
    for step in timesteps:
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=device)
        x_t = schedule.add_noise(x0, torch.randn(x0.shape, generator=generator, device=device), t)
        for scale in cfg_scales:
            reference = x0_estimate(x_t, t, scale, bf16=False)
            bf16 = x0_estimate(x_t, t, scale, bf16=True)
            with float32_last_layer(head):
                last_fp32 = x0_estimate(x_t, t, scale, bf16=True)
            rows.append({
                "t": step, "cfg_scale": scale, "bf16": rms(bf16, reference),
                "bf16_last_layer_fp32": rms(last_fp32, reference), "model_error": rms(reference, x0),
            })  # fmt: skip
    return rows


def main(
    ckpt_path: Path,
    conditions: list[str] = ["a circle", "a square", "a triangle"],  # noqa: B006 (jsonargparse reads the default)
    samples_per_condition: int = 22,
    timesteps: list[int] = [900, 600, 300, 100, 20],  # noqa: B006
    cfg_scales: list[float] = [1.0, 4.0],  # noqa: B006
    seed: int = 0,
    device: str = "auto",
    output: Path | None = None,
) -> list[dict[str, float]]:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load(ckpt_path, map_location=device, expected=ConditionalDiffusion)
    torch.manual_seed(seed)
    rows = measure(model, conditions * samples_per_condition, timesteps, cfg_scales, seed)
    print("    t     γ   bf16 − fp32   bf16, last layer fp32   model's own x0 error")
    for row in rows:
        print(f"{row['t']:5d} {row['cfg_scale']:5.1f}   {row['bf16']:.5f}       {row['bf16_last_layer_fp32']:.5f}"
              f"                 {row['model_error']:.4f}")  # fmt: skip
    if output is not None:
        output.write_text(json.dumps({"ckpt_path": str(ckpt_path), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    CLI(main, as_positional=False)
