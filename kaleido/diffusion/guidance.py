"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that turns a conditional network into a DenoiseFn.

The plain-CFG entry point of the guiders in :mod:`kaleido.diffusion.guiders` (where the other guiders,
the contract and `conditioned` live), kept for code that guides a bare `ModelFn` (e.g. the toy).

The network decides what "unconditional" means through a per-row boolean mask (`uncond[B]`, True =
condition dropped); for `UNet` this masks every real conditioning token so only its learned null token
remains, i.e. exactly the p_uncond dropout seen in training.

Guidance scale γ:  out = u + γ (c − u)
    γ = 1  plain conditional model (the unconditional branch is never computed),
    γ = 0  plain unconditional model,
    γ > 1  extrapolates away from the unconditional prediction (stronger adherence, less diversity).
    γ < 0 (away from the condition) and NaN are refused.
"""

from __future__ import annotations

from kaleido.diffusion.guiders.base import ModelFn, conditioned, guide
from kaleido.diffusion.guiders.cfg import CFG
from kaleido.diffusion.samplers import DenoiseFn


def classifier_free_guidance(model_fn: ModelFn, scale: float) -> DenoiseFn:
    """Wrap `model_fn` into a guided `DenoiseFn` with guidance scale γ = `scale` (one pass of B rows
    at γ = 1, else one pass of 2B rows: conditional, then unconditional)."""
    return guide(model_fn, CFG(), scale)


guided = classifier_free_guidance
"""Short alias."""

__all__ = ["ModelFn", "classifier_free_guidance", "conditioned", "guided"]
