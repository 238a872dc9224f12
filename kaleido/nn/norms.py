"""LayerNorm and GroupNorm that hand the next layer bf16 under bf16 autocast instead of float32; RMSNorm
that keeps its fused kernel on bf16 input.

Autocast runs ``layer_norm`` and ``group_norm`` in float32 and returns float32, so under bf16 autocast
every norm turns what follows it (adaLN's modulation, SiLU, the residual add) into float32 element-wise
work and adds a cast before the next matmul or convolution. On an H200 that element-wise and copy work was
61–76% of the GPU's busy time in the eager UNet and DiT steps (docs/performance.md, 2026-12-03).

Here only the output is rounded to bf16, as a matmul's output is: a float32 input (the DiT's residual
stream) is normalised in float32 and the result cast; a bf16 input (a convolution's output) goes to the
bf16 kernel, which accumulates mean and variance in float32. Under fp16 autocast (or none) these are
``nn.LayerNorm`` / ``nn.GroupNorm`` exactly: fp16's range is what autocast's float32 norm protects. Same
parameters and state-dict keys, so checkpoints load unchanged (docs/choices.md).
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


class _Bf16Output(nn.Module):
    """Under bf16 autocast, ``normalise`` runs with autocast off in the input's dtype (float32 or bf16,
    the parameters cast to it) and the result is cast to bf16; otherwise the parent class's ``forward``."""

    def normalise(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if autocast_dtype(x) != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.normalise(x).to(torch.bfloat16)


class LayerNorm(_Bf16Output, nn.LayerNorm):
    """``nn.LayerNorm`` whose output under bf16 autocast is bf16 (module docstring)."""

    def normalise(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)


class GroupNorm(_Bf16Output, nn.GroupNorm):
    """``nn.GroupNorm`` whose output under bf16 autocast is bf16 (module docstring)."""

    def normalise(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)


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
