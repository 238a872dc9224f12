"""The guider contract, and the one place where the two branches of guidance are run.

A guider is a small object that the guided denoiser calls at every step of the sampler, with two hooks:

    condition(states, mask, segments, level) -> states     before the network (CADS adds noise here)
    combine(cond, uncond, scale, level)      -> output     after it (CFG, interval, APG)

`guided_denoiser` binds a conditioning sequence and a guider to a network `net(x, t, states, mask, uncond)`
and returns the sampler's `DenoiseFn`. It never asks which guider it holds. γ = 1 runs one conditional
pass of batch B; any other scale one pass of batch 2B (rows [0, B) conditional, [B, 2B) with the
condition, and z, dropped), so both branches share a single compile-friendly call.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable
from dataclasses import fields
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from kaleido.diffusion.samplers import DenoiseFn
from kaleido.diffusion.schedule import CosineSchedule, Prediction, output_to_x0_eps, x0_to_output

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(x [N, C, H, W], t [N], uncond [N] bool) -> output [N, C, H, W]; N is B or 2B."""
Net = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""(x, t, states [N, L, D], mask [N, L], uncond [N]) -> output, e.g. `UNet`."""


class Level:
    """Where the sampler is, as a guider sees it: x_t [B, ...], the original timesteps t [B], and (with a
    schedule) the noise level and the map between the network's output and its x0 estimate.
    Everything is computed on first use and on the device: no host sync inside the sampling loop."""

    def __init__(self, x: Tensor, t: Tensor, schedule: CosineSchedule | None = None, prediction: Prediction = "v") -> None:
        self.x, self.t, self.schedule, self.prediction = x, t, schedule, prediction

    def _schedule(self) -> CosineSchedule:
        if self.schedule is None:
            raise ValueError("this guider needs the noise schedule: build the denoiser with guided_denoiser(..., schedule=...)")
        return self.schedule

    @cached_property
    def abar(self) -> Tensor:
        """ᾱ_t [B], float64."""
        return self._schedule().alphas_cumprod[self.t.long()]

    @cached_property
    def noise_level(self) -> Tensor:
        """EDM's σ = σ_t / α_t = sqrt((1 − ᾱ_t) / ᾱ_t) [B], float64: x_t / α_t = x0 + σ ε."""
        return ((1 - self.abar) / self.abar).sqrt()

    @cached_property
    def time(self) -> Tensor:
        """Continuous diffusion time u = (t + 1) / T ∈ (0, 1] [B], float64 (ᾱ_t = ᾱ(u); 1 is pure noise)."""
        return (self.t.double() + 1) / self._schedule().num_timesteps

    def _alpha_sigma(self) -> tuple[Tensor, Tensor]:
        view = (-1,) + (1,) * (self.x.dim() - 1)
        return self.abar.sqrt().view(view).to(self.x.dtype), (1 - self.abar).sqrt().view(view).to(self.x.dtype)

    def x0(self, output: Tensor) -> Tensor:
        """The x0 estimate implied by a network output at this level."""
        return output_to_x0_eps(self.x, output, *self._alpha_sigma(), self.prediction)[0]

    def output(self, x0: Tensor) -> Tensor:
        """The network output that implies the x0 estimate `x0` at this level (inverse of `x0`)."""
        return x0_to_output(self.x, x0, *self._alpha_sigma(), self.prediction)


class Guider(ABC):
    """Base class. Subclasses are dataclasses whose fields are their settings (YAML `init_args`), with
    `name` the short name they are registered under. Override `combine` and/or `condition`."""

    name: ClassVar[str]

    def settings(self) -> dict[str, Any]:
        """The settings as plain data (the constructor's arguments)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}  # type: ignore[arg-type]

    def spec(self) -> dict[str, Any]:
        """`{"class_path": ..., "init_args": ...}` with the full class path (what LightningCLI's YAML accepts):
        what checkpoints, `samples.jsonl` and reports hold."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.settings()}

    @property
    def label(self) -> str:
        """A short, file-name-safe label: the name, then each setting that differs from its default."""
        defaults = {f.name: f.default for f in fields(self) if f.init}  # type: ignore[arg-type]
        changed = [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in self.settings().items() if v != defaults[k]]
        return "_".join([self.name, *changed])

    def start(self, generator: torch.Generator | None) -> None:
        """A new sampling run begins: reset per-run state; `generator` seeds the guider's own noise."""

    def acts_at_scale_one(self) -> bool:
        """Whether sampling at γ = 1 depends on this guider. γ = 1 runs the conditional pass alone, so
        `combine` is never called and only a `condition` hook (CADS) changes the samples: a guider without
        one draws at γ = 1 exactly what plain CFG draws (``evaluate`` samples such a run once)."""
        return type(self).condition is not Guider.condition

    def condition(self, states: Tensor, mask: Tensor, segments: tuple[int, ...], level: Level) -> Tensor:  # noqa: ARG002
        """The conditioning states [B, L, D] the network sees at this step (default: unchanged).
        `segments`: the lengths of the parts concatenated along L (Kaleido: c, then z)."""
        return states

    def combine(self, cond: Tensor, uncond: Tensor, scale: float, level: Level) -> Tensor:
        """The guided output from the conditional and unconditional outputs (default: plain CFG)."""
        return cfg(cond, uncond, scale)


def cfg(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Ho & Salimans 2022, Eq. 6 written as u + γ (c − u)."""
    return uncond + scale * (cond - uncond)


def check_scale(scale: float) -> float:
    scale = float(scale)  # decided once here, never by inspecting tensors inside the sampling loop
    if not math.isfinite(scale) or scale < 0:  # a negative scale would push away from the condition: not meant
        raise ValueError(f"cfg_scale must be a finite number >= 0 (0: unconditional, 1: conditional, > 1: guided), got {scale}")
    return scale


def guide(
    model_fn: ModelFn, guider: Guider, scale: float, schedule: CosineSchedule | None = None, prediction: Prediction = "v"
) -> DenoiseFn:
    """Wrap `model_fn` into the sampler's `DenoiseFn`, guided by `guider` at scale γ = `scale`."""
    scale = check_scale(scale)
    if scale == 1.0:

        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return model_fn(x, t, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))

        return conditional

    def guided(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        uncond = torch.arange(2 * b, device=x.device) >= b
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), uncond)
        # Combine in the sampler's dtype: under bf16 autocast, (c - u) · γ would lose the small difference.
        c, u = out[:b].to(x.dtype), out[b:].to(x.dtype)
        return guider.combine(c, u, scale, Level(x, t, schedule, prediction))

    return guided


def conditioned(
    net: Net,
    cond: Tensor,
    cond_mask: Tensor,
    guider: Guider | None = None,
    schedule: CosineSchedule | None = None,
    segments: tuple[int, ...] | None = None,
) -> ModelFn:
    """Bind a conditioning sequence `cond` [B, L, D] / `cond_mask` [B, L] to `net`, passed through the
    guider's `condition` hook at every call. With 2B rows (guidance) they are repeated along the batch,
    so the unconditional half sees the same (masked-out) inputs."""
    segments = segments or (cond.shape[1],)

    def model_fn(x: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        b = cond.shape[0]
        reps = x.shape[0] // b  # shapes are static: a Python int, no host-device sync
        if reps * b != x.shape[0]:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the conditioning batch {b}")
        states = cond if guider is None else guider.condition(cond, cond_mask, segments, Level(x[:b], t[:b], schedule))
        c, m = (states, cond_mask) if reps == 1 else (states.repeat(reps, 1, 1), cond_mask.repeat(reps, 1))
        return net(x, t, c, m, uncond)

    return model_fn


def guided_denoiser(
    net: Net,
    states: Tensor,
    mask: Tensor,
    guider: Guider,
    scale: float,
    schedule: CosineSchedule,
    prediction: Prediction,
    generator: torch.Generator | None = None,
    segments: tuple[int, ...] | None = None,
) -> DenoiseFn:
    """The sampler's `DenoiseFn` for one sampling run: `net` on the conditioning, guided by `guider`."""
    guider.start(generator)
    return guide(conditioned(net, states, mask, guider, schedule, segments), guider, scale, schedule, prediction)
