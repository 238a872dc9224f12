"""Turns the prior's decoder hidden states over ``z`` into conditioning, one encoder per latent type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kaleido.latents import LatentType


class LatentConditioner(nn.Module):
    """Routes each position of ``z`` to its latent type's encoder.

    A position belongs to the segment opened by the last tag token (``<z:name>``) at or before it,
    so combined latents (text | box | visual tokens) each get their own encoder.
    """

    def __init__(self, latent_types: Sequence[LatentType], tag_ids: Mapping[str, int], hidden_size: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({t.name: t.build_encoder(hidden_size) for t in latent_types})
        self.register_buffer("tags", torch.tensor([tag_ids[t.name] for t in latent_types]), persistent=False)

    def segments(self, token_ids: Tensor) -> Tensor:
        """[B, L] index of the latent type each position belongs to."""
        is_tag = token_ids.unsqueeze(-1) == self.tags  # [B, L, K]
        number = (is_tag.long() * torch.arange(1, len(self.tags) + 1, device=token_ids.device)).sum(-1)
        return (number.cummax(dim=1).values - 1).clamp(min=0)

    def forward(self, hidden: Tensor, token_ids: Tensor, mask: Tensor) -> Tensor:
        if len(self.encoders) == 1:
            return next(iter(self.encoders.values()))(hidden, token_ids, mask)
        segment = self.segments(token_ids)
        out = torch.zeros_like(hidden)
        for index, encoder in enumerate(self.encoders.values()):
            inside = segment == index
            out = torch.where(inside.unsqueeze(-1), encoder(hidden, token_ids, mask & inside), out)
        return out
