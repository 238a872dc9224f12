"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that turns a conditional network into a DenoiseFn.

The network decides what "unconditional" means through a per-row boolean mask (`uncond[B]`, True =
condition dropped); for `UNet` this masks every real conditioning token so only its learned null token
remains, i.e. exactly the p_uncond dropout seen in training.

Guidance scale γ:  out = u + γ (c − u)
    γ = 1  plain conditional model (the unconditional branch is never computed),
    γ = 0  plain unconditional model,
    γ > 1  extrapolates away from the unconditional prediction (stronger adherence, less diversity).
    γ < 0 (away from the condition) and NaN are refused.
The combination is applied to the raw network output; for v / eps / x0 parameterisations it is the
same affine combination of the implied x0 and ε, because all three are linear in the output.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from kaleido.diffusion.samplers import DenoiseFn

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(x [N, C, H, W], t [N], uncond [N] bool) -> output [N, C, H, W]; N is B or 2B (see `conditioned`)."""


def classifier_free_guidance(model_fn: ModelFn, scale: float) -> DenoiseFn:
    """Wrap `model_fn` into a guided `DenoiseFn` with guidance scale γ = `scale`.

    γ == 1 runs one forward pass of batch B with no unconditional rows. Otherwise one forward pass of
    batch 2B is run: rows [0, B) conditional, rows [B, 2B) unconditional, so both branches share a
    single (compile-friendly) call instead of two.
    """
    scale = float(scale)  # decided once here, never by inspecting tensors inside the sampling loop
    if not math.isfinite(scale) or scale < 0:  # a negative scale would push away from the condition: not meant
        raise ValueError(f"cfg_scale must be a finite number >= 0 (0: unconditional, 1: conditional, > 1: guided), got {scale}")

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
        return u + scale * (c - u)

    return guided


guided = classifier_free_guidance
"""Short alias."""


def conditioned(net: Callable[..., Tensor], cond: Tensor, cond_mask: Tensor) -> ModelFn:
    """Bind a conditioning sequence to a network `net(x, t, cond, cond_mask, uncond)` (e.g. `UNet`).

    The returned ModelFn repeats `cond`/`cond_mask` [B, ...] along the batch when called with 2B rows
    by `classifier_free_guidance`, so the unconditional half sees the same (masked-out) inputs.
    """

    def model_fn(x: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        reps = x.shape[0] // cond.shape[0]  # shapes are static: a Python int, no host-device sync
        if reps * cond.shape[0] != x.shape[0]:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the conditioning batch {cond.shape[0]}")
        c, m = (cond, cond_mask) if reps == 1 else (cond.repeat(reps, 1, 1), cond_mask.repeat(reps, 1))
        return net(x, t, c, m, uncond)

    return model_fn
