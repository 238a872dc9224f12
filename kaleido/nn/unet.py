"""Pixel-space conditional U-Net (ADM layout, Matryoshka-Diffusion style sequence conditioning).

The conditioning path is :class:`kaleido.nn.conditioning.ConditionedDenoiser`'s (null token, masked
transformer layers over ``[enc(c); h(z)]``, pooled into the timestep embedding); the sequence is the
key/value input of cross-attention at ``attention_levels`` and in the middle block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kaleido.nn.blocks import (
    AttentionBlock,
    CondSequential,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_init,
)
from kaleido.nn.conditioning import ConditionedDenoiser


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
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        if any(not 0 <= lvl < len(channel_mult) for lvl in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must index channel_mult {channel_mult}")
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by {self.downsample_factor}, the UNet's downsampling "
                f"(2 ** (len(channel_mult) - 1) with channel_mult {tuple(channel_mult)}); use a multiple of {self.downsample_factor}"
            )
        self.in_channels, self.base_channels, self.channel_mult = in_channels, base_channels, tuple(channel_mult)
        self.num_res_blocks, self.attention_levels, self.num_heads = num_res_blocks, tuple(attention_levels), num_heads
        self.cond_layers, self.dropout, self.qk_norm = cond_layers, dropout, qk_norm
        emb_dim = 4 * base_channels
        self.emb_dim = emb_dim

        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.add_condition_path(cond_dim, emb_dim, num_heads, cond_layers, dropout, qk_norm)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, context_dim=emb_dim, qk_norm=qk_norm)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch = base_channels
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks: list[nn.Module] = [res(ch, mult * base_channels)]
                ch = mult * base_channels
                if level in attention_levels:
                    blocks.append(attn(ch))
                self.down.append(CondSequential(blocks))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(CondSequential([Downsample(ch)]))
                skip_channels.append(ch)

        self.middle = CondSequential([res(ch, ch), attn(ch), res(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [res(ch + skip_channels.pop(), mult * base_channels)]
                ch = mult * base_channels
                if level in attention_levels:
                    blocks.append(attn(ch))
                if level > 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(CondSequential(blocks))

        # Zero-init output: the untrained model predicts 0 (= the mean target for v / eps).
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, in_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> Tensor:
        """x [B, C, H, W]; t [B] timestep values (long or float); cond [B, L, cond_dim]; cond_mask [B, L]
        bool (True = real token); uncond [B] bool, True = drop the condition for that row."""
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {f}")
        context, mask, pooled = self.encode_condition(cond, cond_mask, uncond)
        emb = self.time_embed(timestep_embedding(t, self.base_channels)) + pooled

        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb, context, mask)
            skips.append(h)
        h = self.middle(h, emb, context, mask)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
        return self.out(h)
