"""The benchmark's sampling measures (the method: :mod:`kaleido.benchmark`): one raw denoiser forward of
the doubled batch against a CFG sampling step and the whole ``generate``, for each sampler."""

from __future__ import annotations

import typing
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from kaleido.benchmark.clock import seconds, seconds_per_call
from kaleido.benchmark.profile import profile_steps
from kaleido.modules.base import ConditionalDiffusion
from kaleido.modules.settings import Compile, SamplingSettings

SAMPLERS: tuple[str, ...] = typing.get_args(typing.get_type_hints(SamplingSettings)["sampler"])


def measure_sampling(
    model: ConditionalDiffusion, conditions: list[str], cfg_scale: float, sample_steps: int, compile: Compile,
    device: str, autocast: Callable[[], AbstractContextManager], steps: int, warmup: int, profile: int = 0,
) -> dict[str, Any]:
    """The raw forward of the doubled batch, each sampler's step and whole ``generate``; with ``profile`` > 0,
    that many more raw forwards under the profiler (``"profile"``: where sampling's device time goes)."""
    model.eval()
    rows = 2 * len(conditions)
    with torch.no_grad(), autocast():
        cond, _ = model.sampling_conditioning(conditions, None, 0)
    states, mask = cond.states, cond.mask
    if compile:  # the length sample_images pads to when compiling: the sampler's own graph
        extra = max(0, model.conditioning_limit - states.shape[1])
        states, mask = torch.nn.functional.pad(states, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra), value=False)
    net = model.network("denoiser", compile)
    x = torch.randn(rows, 3, model.image_size, model.image_size, device=device)
    t = torch.full((rows,), model.schedule.num_timesteps // 2, device=device)
    uncond = torch.arange(rows, device=device) >= len(conditions)
    doubled = (x, t, states.repeat(2, 1, 1), mask.repeat(2, 1), uncond)

    def forward() -> None:
        with torch.no_grad(), autocast():
            net(*doubled)

    first, raw = seconds_per_call(forward, device, steps, warmup)
    result: dict[str, Any] = {
        "raw_forward_s": raw, "raw_forward_images_per_s": len(conditions) / raw, "first_forward_s": first, "samplers": {},
        "profile": profile_steps(forward, profile, device) if profile else None,
    }
    for sampler in SAMPLERS:

        def run(num_steps: int, sampler: str = sampler) -> None:
            """The sampler's loop alone on the conditioning drawn above (z drawn once, outside)."""
            with torch.no_grad(), autocast():
                model.sample_images(cond, cfg_scale, sampler, num_steps, torch.Generator(device).manual_seed(0), compile)

        def generate(sampler: str = sampler) -> None:
            """The whole ``generate``: z drawn by the prior, the conditioning, every step."""
            with autocast():
                model.generate(conditions, cfg_scale=cfg_scale, sampler=sampler, num_steps=sample_steps, batch_size=len(conditions), compile=compile)

        first = seconds(lambda: run(2), device)  # the denoiser compiled in the raw forward's first call: this warms the rest
        one, full = seconds(lambda: run(1), device), seconds(lambda: run(sample_steps), device)
        step = max(full - one, 0.0) / (sample_steps - 1)
        result["samplers"][sampler] = {
            "first_call_s": first,
            "step_s": step,
            "step_images_per_s": len(conditions) / step if step else None,
            "step_over_raw_forward": step / raw,
            "images_per_s": len(conditions) / seconds(generate, device),
        }
    return result
