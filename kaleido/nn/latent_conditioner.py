"""Turns the prior's decoder hidden states over ``z`` into conditioning, one encoder per latent type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from kaleido.latents import LatentType


class LatentConditioner(nn.Module):
    """Routes each position of ``z`` to its latent type's encoder.

    A position belongs to the segment opened by the last tag token (``<z:name>``) at or before it,
    so combined latents (text | box | visual tokens) each get their own encoder. Encoders of types
    that declare geometry (``geometry_width() > 0``) also get ``geometry=`` their slice of the
    tokenizer's per-token features ``[B, L, G + 1]``: their own ``G_t`` columns and the flag; the
    others keep the plain ``(hidden, token_ids, mask)`` call.
    """

    def __init__(self, latent_types: Sequence[LatentType], tag_ids: Mapping[str, int], hidden_size: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({t.name: t.build_encoder(hidden_size) for t in latent_types})
        self.register_buffer("tags", torch.tensor([tag_ids[t.name] for t in latent_types]), persistent=False)
        self.geometry_widths = {t.name: t.geometry_width() for t in latent_types}
        self.geometry_width = max(self.geometry_widths.values(), default=0)  # G, as the tokenizer's

    def segments(self, token_ids: Tensor) -> Tensor:
        """[B, L] index of the latent type each position belongs to."""
        is_tag = token_ids.unsqueeze(-1) == self.tags  # [B, L, K]
        number = (is_tag.long() * torch.arange(1, len(self.tags) + 1, device=token_ids.device)).sum(-1)
        return (number.cummax(dim=1).values - 1).clamp(min=0)

    def encode(self, name: str, hidden: Tensor, token_ids: Tensor, mask: Tensor, geometry: Tensor | None) -> Tensor:
        """One type's encoder over the whole sequence."""
        encoder, width = self.encoders[name], self.geometry_widths[name]
        if not width:
            return encoder(hidden, token_ids, mask)
        expected = (*token_ids.shape, self.geometry_width + 1)
        if geometry is None or tuple(geometry.shape) != expected:
            got = None if geometry is None else tuple(geometry.shape)
            raise ValueError(
                f"latent type {name!r} uses geometry features: expected latent_geometry of shape {expected} "
                f"(from KaleidoTokenizer.latent_batch / the collate function), got {got}"
            )
        return encoder(hidden, token_ids, mask, geometry=torch.cat([geometry[..., :width], geometry[..., -1:]], dim=-1))

    def forward(self, hidden: Tensor, token_ids: Tensor, mask: Tensor, geometry: Tensor | None = None) -> Tensor:
        if len(self.encoders) == 1:
            return self.encode(next(iter(self.encoders)), hidden, token_ids, mask, geometry)
        segment = self.segments(token_ids)
        out = torch.zeros_like(hidden)
        for index, name in enumerate(self.encoders):
            inside = segment == index
            out = torch.where(inside.unsqueeze(-1), self.encode(name, hidden, token_ids, mask & inside, geometry), out)
        return out
