"""U-Net building blocks: timestep embedding, adaptive-GroupNorm ResBlock, self+cross attention, resampling.

Every block that needs conditioning takes `(h, emb, context, context_mask)` so the U-Net can call all
of them the same way (see `CondSequential`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.nn.attention import MultiHeadAttention
from kaleido.nn.norms import LayerNorm, group_norm


def zero_init(module: nn.Module) -> nn.Module:
    """Zero all parameters, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of (possibly non-integer) timestep values t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))  # odd dim: one zero column


class ResBlock(nn.Module):
    """GN → SiLU → conv → adaptive GN (scale/shift from emb) → SiLU → dropout → zero-init conv, plus skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift  # (1 + scale): identity modulation at init
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over pixels, then cross-attention from pixels to the conditioning sequence.

    Each is a pre-norm residual branch with a zero-initialised output projection.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.norm_self = group_norm(channels)
        self.self_attn = MultiHeadAttention(channels, num_heads, qk_norm=qk_norm)
        self.norm_cross = LayerNorm(channels)
        self.cross_attn = MultiHeadAttention(channels, num_heads, context_dim=context_dim, qk_norm=qk_norm)
        zero_init(self.self_attn.proj)
        zero_init(self.cross_attn.proj)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm_self(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        h = x.flatten(2).transpose(1, 2) + self.self_attn(tokens)
        h = h + self.cross_attn(self.norm_cross(h), context=context, mask=context_mask)
        return h.transpose(1, 2).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then 3×3 conv (no checkerboard artefacts of transposed conv)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CondSequential(nn.ModuleList):
    """Apply blocks in order, passing the shared (emb, context, context_mask) to each."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, emb, context, context_mask)
        return x
