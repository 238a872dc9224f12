"""The paper's conditioning path (MDM's), shared by the built-in denoiser backbones.

  1. project cond [B, L, cond_dim] to the backbone's width E;
  2. prepend a learned null token that is never masked; rows with ``uncond=True`` mask out every real
     token, so dropping the condition (CFG training / sampling) is a pure mask operation and the
     unconditional model sees a learned null conditioning;
  3. ``cond_layers`` pre-norm transformer layers over the (masked) sequence;
  4. a masked mean over the sequence (``pooled``), which the backbone adds to its timestep embedding
     (global conditioning); the sequence itself is the key/value input of its cross-attention.
Padded tokens never reach a real token, the pool or a cross-attention output, so outputs do not depend
on padding length or content.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kaleido.nn.attention import TransformerBlock
from kaleido.nn.denoiser import Denoiser
from kaleido.nn.norms import LayerNorm


class ConditionedDenoiser(Denoiser):
    """A denoiser with the paper's conditioning path: ``add_condition_path`` in ``__init__``, then
    ``encode_condition`` in ``forward``.

    The path's layers are attributes of the backbone itself, not a submodule: the UNet kept them there
    before backbones were pluggable, so its checkpoints (and a resumed optimiser's parameter order)
    stay as they were."""

    def add_condition_path(
        self, cond_dim: int, width: int, num_heads: int, cond_layers: int, dropout: float = 0.0, qk_norm: bool = False
    ) -> None:
        self.cond_proj = nn.Linear(cond_dim, width)
        self.null_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.cond_blocks = nn.ModuleList(
            TransformerBlock(width, num_heads, dropout=dropout, qk_norm=qk_norm) for _ in range(cond_layers)
        )
        self.cond_norm = LayerNorm(width)
        self.pool_proj = nn.Linear(width, width)

    def encode_condition(
        self, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return (context [B, 1+L, E], context_mask [B, 1+L] bool, pooled [B, E]); position 0 is the null token."""
        keep = cond_mask.bool()
        if uncond is not None:
            keep = keep & ~uncond.bool()[:, None]
        # Zero dropped tokens before they touch any weight: masked garbage (even NaN/inf) cannot leak.
        cond = cond.masked_fill(~keep[..., None], 0.0)
        tokens = self.cond_proj(cond)
        b = tokens.shape[0]
        null = self.null_token.to(tokens.dtype).expand(b, -1, -1)
        context = torch.cat([null, tokens], dim=1)
        mask = torch.cat([keep.new_ones(b, 1), keep], dim=1)
        for block in self.cond_blocks:
            context = block(context, mask)
        context = self.cond_norm(context)
        w = mask[..., None].to(context.dtype)
        pooled = (context * w).sum(dim=1) / w.sum(dim=1)  # >= 1 kept token (the null), never 0/0
        return context, mask, self.pool_proj(pooled)


__all__ = ["ConditionedDenoiser"]
