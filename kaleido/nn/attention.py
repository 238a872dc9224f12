"""Multi-head attention on `F.scaled_dot_product_attention`, and a pre-norm transformer block.

Masks are key-padding masks: bool [B, L], True = real token that may be attended to. Every row must
keep at least one key (an all-False row gives NaN); `UNet` guarantees this with an always-kept null token.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.nn.norms import LayerNorm, RMSNorm


class MultiHeadAttention(nn.Module):
    """Self-attention (`context=None`) or cross-attention from `x` [B, N, dim] to `context` [B, L, context_dim].

    ``qk_norm``: RMS-normalise queries and keys per head (learned scale), as in SD3 / ViT-22B; it bounds
    the attention logits, which guards against attention collapsing onto a few keys early in training.
    """

    def __init__(
        self, dim: int, num_heads: int, context_dim: int | None = None, bias: bool = True, qk_norm: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def heads(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, each [B, heads, length, head_dim]."""
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads
        q = self.q_norm(self.to_q(x).view(b, n, h, d // h))
        k, v = self.to_kv(context).view(b, -1, 2, h, d // h).unbind(dim=2)
        return q.transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Attend from x to context (or x); `mask` [B, L] bool, True = keep that key."""
        b, n, d = x.shape
        q, k, v = self.heads(x, context)
        # [B, 1, 1, L] broadcasts over heads and queries; SDPA treats True as "take part in attention".
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def weights(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """The attention probabilities ``forward`` applies, [B, heads, N, L] (for diagnostics)."""
        q, k, _ = self.heads(x, context)
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        return logits.softmax(dim=-1)


class MLP(nn.Module):
    """Two-layer GELU feed-forward."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden_dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: x + SelfAttn(LN(x), mask), then x + MLP(LN(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, qk_norm: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, L, dim]; mask [B, L] bool (True = real token). Padded positions produce unused garbage."""
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))
