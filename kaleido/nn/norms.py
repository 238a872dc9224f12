"""LayerNorm and GroupNorm that keep the autocast dtype (bf16) instead of returning float32; RMSNorm that
keeps its fused kernel on bf16 input.

Autocast runs ``layer_norm`` and ``group_norm`` in float32 and returns float32, so under bf16 autocast
every norm turns what follows it (adaLN's modulation, SiLU, the residual add) into float32 element-wise
work and adds a cast before the next matmul or convolution. On an H200 that element-wise and copy work was
65–76% of the GPU's busy time in the eager UNet and DiT steps (docs/performance.md, 2026-12-03).

These layers hand the norm the input in the autocast dtype: the kernels accumulate mean and variance in
float32 all the same (ATen's accumulate type for bf16), and only the normalised output is rounded to
bf16, as a matmul's output is. A residual stream that is float32 stays float32: only the norm's output,
the input of the next layer, is bf16. Outside autocast they are ``nn.LayerNorm`` / ``nn.GroupNorm``
exactly, with the same parameters and state-dict keys, so checkpoints load unchanged (docs/choices.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast lowers to on ``x``'s device, or None outside autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _cast(parameter: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if parameter is None else parameter.to(dtype)


class _AutocastDtype(nn.Module):
    """Under autocast, ``normalise`` runs with autocast off on the input in the autocast dtype; outside it,
    the parent class's ``forward``."""

    def normalise(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        dtype = autocast_dtype(x)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.normalise(x.to(dtype), dtype)


class LayerNorm(_AutocastDtype, nn.LayerNorm):
    """``nn.LayerNorm`` whose output under autocast is the autocast dtype (statistics still in float32)."""

    def normalise(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps)


class GroupNorm(_AutocastDtype, nn.GroupNorm):
    """``nn.GroupNorm`` whose output under autocast is the autocast dtype (statistics still in float32)."""

    def normalise(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` with its weight in the input's dtype: given a bf16 input and a float32 weight,
    ``rms_norm`` leaves its fused kernel for a composite of element-wise ops (the queries' and keys' norm
    of every attention layer, under autocast). The statistics are float32 either way."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, _cast(self.weight, x.dtype), self.eps)


def group_norm(channels: int, max_groups: int = 32) -> GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels` (32 for usual widths)."""
    return GroupNorm(math.gcd(max_groups, channels), channels)


__all__ = ["GroupNorm", "LayerNorm", "RMSNorm", "autocast_dtype", "group_norm"]
