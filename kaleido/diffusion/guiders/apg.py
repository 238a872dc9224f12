"""Adaptive projected guidance, APG (Sadat et al., ICLR 2025)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kaleido.diffusion.guiders.base import Guider, Level


@dataclass
class APG(Guider):
    """Sadat et al. 2025 (arXiv:2410.02416), Algorithm 1 (the authors' code in the appendix), on the
    denoised (x0) predictions:

        ΔD    = D(x; c) − D(x; ∅) + β ΔD̄_prev     reverse momentum, β < 0 (ΔD̄ the last step's ΔD after momentum)
        ΔD   ← ΔD · min(1, r / ‖ΔD‖)              norm cap per sample (r = 0: no cap)
        ΔD∥   = (⟨ΔD, D_c⟩ / ‖D_c‖²) D_c,   ΔD⊥ = ΔD − ΔD∥
        D̃     = D(x; c) + (γ − 1) (ΔD⊥ + η ΔD∥)

    γ is the paper's guidance scale w: Algorithm 1 returns `pred_cond + (guidance_scale - 1) * update`,
    and η = 1, r = 0, β = 0 is plain CFG on x0. Defaults η = 0, r = 15, β = −0.5: the paper's
    Stable Diffusion XL row of its hyperparameter table (Table 10); r is in units of the data's norm, so
    it does not carry over between data sizes. The guided x0 goes back to the network's parameterisation
    at the same x_t, so every sampler takes it unchanged. Norms and inner products run over all of a
    sample's elements, in float64."""

    name = "apg"
    eta: float = 0.0
    norm_threshold: float = 15.0
    momentum: float = -0.5
    _average: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta) and math.isfinite(self.momentum) and self.norm_threshold >= 0):
            raise ValueError(
                f"APG needs finite eta and momentum and norm_threshold >= 0 (0: no cap), got eta={self.eta}, "
                f"norm_threshold={self.norm_threshold}, momentum={self.momentum}"
            )

    def start(self, generator: object) -> None:  # noqa: ARG002
        self._average = None

    def combine(self, cond: Tensor, uncond: Tensor, scale: float, level: Level) -> Tensor:
        d_cond = level.x0(cond)
        diff = d_cond - level.x0(uncond)
        if self._average is not None:  # the first step has no history (Python state, not a tensor branch)
            diff = diff + self.momentum * self._average
        self._average = diff
        dims = tuple(range(1, diff.dim()))
        diff64, along = diff.double(), d_cond.double()
        norm = lambda v: torch.linalg.vector_norm(v, dim=dims, keepdim=True)  # noqa: E731 (per sample)
        if self.norm_threshold > 0:
            diff64 = diff64 * (self.norm_threshold / norm(diff64)).clamp(max=1.0)
        unit = along / norm(along).clamp_min(1e-12)
        parallel = (diff64 * unit).sum(dim=dims, keepdim=True) * unit
        update = (diff64 - parallel) + self.eta * parallel
        return level.output(d_cond + (scale - 1) * update.to(d_cond.dtype))
