"""Pixel-space conditional U-Net (ADM layout, Matryoshka-Diffusion style sequence conditioning).

The conditioning path is :class:`kaleido.nn.conditioning.ConditionedDenoiser`'s (null token, masked
transformer layers over ``[enc(c); h(z)]``, pooled into the timestep embedding); the sequence is the
key/value input of cross-attention at ``attention_levels`` and in the middle block.

The levels (input conv, the way down with its skips, the way up, the output head) are built and run by
the functions below, which the nested UNet (``nested_unet.py``) shares: its outer levels are a U-Net
whose middle block is a whole inner UNet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kaleido.nn.blocks import (
    AttentionBlock,
    CondSequential,
    Downsample,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_init,
)
from kaleido.nn.conditioning import ConditionedDenoiser
from kaleido.nn.norms import group_norm


@dataclass
class UNetSettings:
    """The UNet's size (see :class:`UNet`); its conditioning width follows the T5. The ``unet:`` block of a
    model, and the inner model of the nested UNet (``kaleido.nn.nested_unet.NestedUNet``)."""

    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1, 2)
    num_heads: int = 4
    cond_layers: int = 2
    dropout: float = 0.0
    qk_norm: bool = False  # beyond the paper: RMS-normalised queries and keys in every attention layer
    channels_last: bool = False  # the memory layout of the convolutions' tensors (UNet's docstring)


@dataclass
class UNetContext:
    """What every conditioned block of a U-Net takes beside its input: the timestep + pooled conditioning
    embedding [B, E] and the conditioning sequence [B, 1+L, E] with its mask."""

    emb: Tensor
    context: Tensor
    mask: Tensor


@dataclass
class Levels:
    """The resolution levels of a U-Net, built by :func:`build_levels`: input conv, the way down, the way
    up (each up block takes its skip concatenated) and the output head; ``inner_channels`` is the width at
    the lowest level, where the middle block runs."""

    input_conv: nn.Conv2d
    down: nn.ModuleList
    up: nn.ModuleList
    out: nn.Sequential
    inner_channels: int


def build_levels(
    in_channels: int,
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_levels: tuple[int, ...],
    res: Callable[[int, int], nn.Module],
    attn: Callable[[int], nn.Module],
) -> Levels:
    """The ADM layout: ``num_res_blocks`` ResBlocks per level on the way down (attention after each at
    ``attention_levels``), a stride-2 downsample between levels, one more block per level on the way up,
    each fed the matching skip; a zero-initialised output conv, so the untrained network predicts 0 (the
    mean target for v / ε)."""
    input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
    ch = base_channels
    skip_channels = [ch]
    down = nn.ModuleList()
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            blocks: list[nn.Module] = [res(ch, mult * base_channels)]
            ch = mult * base_channels
            if level in attention_levels:
                blocks.append(attn(ch))
            down.append(CondSequential(blocks))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            down.append(CondSequential([Downsample(ch)]))
            skip_channels.append(ch)
    inner_channels = ch

    up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            blocks = [res(ch + skip_channels.pop(), mult * base_channels)]
            ch = mult * base_channels
            if level in attention_levels:
                blocks.append(attn(ch))
            if level > 0 and i == num_res_blocks:
                blocks.append(Upsample(ch))
            up.append(CondSequential(blocks))
    out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, in_channels, 3, padding=1)))
    return Levels(input_conv, down, up, out, inner_channels)


def check_levels(channel_mult: tuple[int, ...], attention_levels: tuple[int, ...]) -> None:
    if not channel_mult:
        raise ValueError("channel_mult must have at least one level")
    if any(not 0 <= lvl < len(channel_mult) for lvl in attention_levels):
        raise ValueError(f"attention_levels {attention_levels} must index channel_mult {channel_mult}")


def run_down(blocks: nn.ModuleList, h: Tensor, c: UNetContext) -> tuple[Tensor, list[Tensor]]:
    """The way down from the input conv's output ``h``: the lowest level's features and every skip."""
    skips = [h]
    for block in blocks:
        h = block(h, c.emb, c.context, c.mask)
        skips.append(h)
    return h, skips


def run_up(blocks: nn.ModuleList, h: Tensor, skips: list[Tensor], c: UNetContext) -> Tensor:
    """The way up from the middle block's output, taking the skips back in reverse order."""
    for block in blocks:
        h = block(torch.cat([h, skips.pop()], dim=1), c.emb, c.context, c.mask)
    return h


def check_divisible(x: Tensor, factor: int) -> None:
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {factor}")


class UNet(ConditionedDenoiser):
    """Conditional U-Net ε/v/x0 predictor: `forward(x, t, cond, cond_mask, uncond) -> [B, C, H, W]`.

    Args:
        in_channels: image channels (output has the same number).
        base_channels: width of the first level; the timestep / conditioning width is 4× this.
        channel_mult: per-level width multipliers; the resolution halves between levels, so H and W
            must be divisible by 2 ** (len(channel_mult) - 1).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_levels: indices into `channel_mult` that get self+cross attention after each ResBlock.
        num_heads: heads of every attention layer.
        cond_dim: feature size of the conditioning sequence (given by the model).
        image_size: image side the model trains at (given by the model), checked against the
            downsampling factor; ``None`` checks each input instead.
        cond_layers: transformer layers applied to the conditioning sequence.
        dropout: dropout inside ResBlocks and the conditioning MLPs.
        qk_norm: RMS-normalise queries and keys in every attention layer (see `MultiHeadAttention`).
        channels_last: keep the weights and activations of the convolutions in NHWC memory layout, the
            layout of cuDNN's bf16 tensor-core kernels: in NCHW, cuDNN transposes every convolution's input
            and output (docs/performance.md). The same weights and checkpoints either way.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (1, 2),
        num_heads: int = 4,
        cond_dim: int = 256,
        cond_layers: int = 2,
        dropout: float = 0.0,
        qk_norm: bool = False,
        channels_last: bool = False,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        check_levels(tuple(channel_mult), tuple(attention_levels))
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by {self.downsample_factor}, the UNet's downsampling "
                f"(2 ** (len(channel_mult) - 1) with channel_mult {tuple(channel_mult)}); use a multiple of {self.downsample_factor}"
            )
        self.in_channels, self.base_channels, self.channel_mult = in_channels, base_channels, tuple(channel_mult)
        self.num_res_blocks, self.attention_levels, self.num_heads = num_res_blocks, tuple(attention_levels), num_heads
        self.cond_layers, self.dropout, self.qk_norm, self.channels_last = cond_layers, dropout, qk_norm, channels_last
        emb_dim = 4 * base_channels
        self.emb_dim = emb_dim

        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.add_condition_path(cond_dim, emb_dim, num_heads, cond_layers, dropout, qk_norm)

        # Registered in this order (input conv, down, middle, up, out): parameter names and order are the
        # checkpoints' and a resumed optimiser's.
        levels = build_levels(in_channels, base_channels, self.channel_mult, num_res_blocks, self.attention_levels, self.res_block, self.attention_block)
        self.input_conv, self.down = levels.input_conv, levels.down
        ch = levels.inner_channels
        self.middle = CondSequential([self.res_block(ch, ch), self.attention_block(ch), self.res_block(ch, ch)])
        self.up, self.out = levels.up, levels.out
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def res_block(self, cin: int, cout: int) -> ResBlock:
        return ResBlock(cin, cout, self.emb_dim, self.dropout)

    def attention_block(self, ch: int) -> AttentionBlock:
        return AttentionBlock(ch, self.num_heads, context_dim=self.emb_dim, qk_norm=self.qk_norm)

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features`' output (the input of the output head)."""
        return self.channel_mult[0] * self.base_channels

    def embed(self, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> UNetContext:
        """The timestep + pooled conditioning embedding and the conditioning sequence (null token first)."""
        return self.embed_time(t, self.encode_condition(cond, cond_mask, uncond))

    def embed_time(self, t: Tensor, encoded: tuple[Tensor, Tensor, Tensor]) -> UNetContext:
        """:meth:`embed` from an ``encode_condition`` result: one encoding serves several timesteps."""
        context, mask, pooled = encoded
        return UNetContext(self.time_embed(timestep_embedding(t, self.base_channels)) + pooled, context, mask)

    def features(self, x: Tensor, c: UNetContext, extra: Tensor | None = None) -> Tensor:
        """The last features before the output head; ``extra`` (the nested UNet's outer features, at the
        input conv's width and resolution) is added to the input conv's output."""
        check_divisible(x, self.downsample_factor)
        h = self.input_conv(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)
        if extra is not None:
            h = h + extra
        h, skips = run_down(self.down, h, c)
        h = self.middle(h, c.emb, c.context, c.mask)
        return run_up(self.up, h, skips, c)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> Tensor:
        """x [B, C, H, W]; t [B] timestep values (long or float); cond [B, L, cond_dim]; cond_mask [B, L]
        bool (True = real token); uncond [B] bool, True = drop the condition for that row."""
        return self.out(self.features(x, self.embed(t, cond, cond_mask, uncond))).contiguous()


__all__ = ["Levels", "UNet", "UNetContext", "UNetSettings", "build_levels", "check_divisible", "check_levels", "run_down", "run_up"]
