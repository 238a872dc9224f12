"""Condition-annealed sampling, CADS (Sadat et al., ICLR 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kaleido.diffusion.guiders.base import Guider, Level


@dataclass
class CADS(Guider):
    """Sadat et al. 2024 (arXiv:2310.17347), Sec. 3.1, Eqs. 1–4: anneal Gaussian noise into the
    conditioning states y at every step, guided by plain CFG afterwards:

        ŷ     = sqrt(γ(u)) y + s sqrt(1 − γ(u)) n,      n ~ N(0, I), fresh at every step        (Eq. 1)
        γ(u)  = 1 for u ≤ τ1,  (τ2 − u) / (τ2 − τ1) for τ1 < u < τ2,  0 for u ≥ τ2             (Eq. 2)
        ŷ_res = (ŷ − mean(ŷ)) / std(ŷ) · std(y) + mean(y)                                        (Eq. 3)
        ŷ     ← ψ ŷ_res + (1 − ψ) ŷ                                                               (Eq. 4)

    u = (t + 1) / T is the diffusion time (1: pure noise), so sampling starts on noisy conditioning and
    ends on the clean one. mean and std are taken per sample and per segment over its real (unmasked)
    tokens and every channel (population std): for Kaleido the encoder states of c and the states of z
    each keep their own statistics, and both are noised (the public implementations take one mean and
    std over the whole tensor). The unconditional branch masks every token, so the noise does not
    reach it. Defaults: the paper's Stable Diffusion (text-to-image) setting, τ1 0.6, τ2 0.9, s 0.25, ψ 1
    (its appendix's table of settings). The noise has its own generator (seeded per batch): the image noise
    is unchanged."""

    name = "cads"
    tau1: float = 0.6
    tau2: float = 0.9
    noise_scale: float = 0.25
    psi: float = 1.0
    _generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau1 < self.tau2 <= 1.0:
            raise ValueError(f"CADS needs 0 <= tau1 < tau2 <= 1 (diffusion time, 1 = pure noise), got tau1={self.tau1}, tau2={self.tau2}")
        if self.noise_scale < 0 or not 0.0 <= self.psi <= 1.0:
            raise ValueError(f"CADS needs noise_scale >= 0 and psi in [0, 1], got noise_scale={self.noise_scale}, psi={self.psi}")

    def start(self, generator: torch.Generator | None) -> None:
        self._generator = generator

    def gamma(self, time: Tensor) -> Tensor:
        """γ(u): 1 (clean) up to τ1, falling linearly to 0 (all noise) at τ2."""
        return ((self.tau2 - time) / (self.tau2 - self.tau1)).clamp(0.0, 1.0)

    def condition(self, states: Tensor, mask: Tensor, segments: tuple[int, ...], level: Level) -> Tensor:
        gamma = self.gamma(level.time).to(states.dtype).view(-1, 1, 1)
        noise = torch.randn(states.shape, generator=self._generator, device=states.device, dtype=states.dtype)
        noisy = gamma.sqrt() * states + self.noise_scale * (1 - gamma).sqrt() * noise
        if self.psi == 0.0:
            return noisy
        parts = zip(states.split(segments, dim=1), noisy.split(segments, dim=1), mask.split(segments, dim=1))
        rescaled = torch.cat([match_moments(n, s, m) for s, n, m in parts], dim=1)
        return self.psi * rescaled + (1 - self.psi) * noisy


def match_moments(x: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """`x` [B, L, D] shifted and scaled so that, over each row's real tokens (`mask` [B, L]), its mean and
    (population) std are those of `reference`."""

    def moments(values: Tensor) -> tuple[Tensor, Tensor]:
        weight = mask[..., None].to(values.dtype)
        count = (weight.sum(dim=(1, 2), keepdim=True) * values.shape[-1]).clamp_min(1)
        mean = (values * weight).sum(dim=(1, 2), keepdim=True) / count
        var = ((values - mean).square() * weight).sum(dim=(1, 2), keepdim=True) / count
        return mean, var.sqrt()

    (mean_x, std_x), (mean_ref, std_ref) = moments(x), moments(reference)
    return (x - mean_x) / std_x.clamp_min(1e-12) * std_ref + mean_ref
