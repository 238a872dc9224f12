"""The latent-type contract: what a pluggable kind of discrete latent ``z`` declares.

A latent type bundles three parts (DESIGN.md):

* **tokenizer** -- latent object ⇄ editable text (``format`` / ``parse``), plus any special tokens it
  adds to the prior's vocabulary. Text ⇄ token ids is the shared prior tokenizer's job.
* **encoder** -- (the prior's decoder hidden states over ``z``, the token ids) → the conditioning
  sequence the denoiser attends to (``build_encoder``).
* **extractor** -- images (+ condition) → latent objects, to build training data offline
  (``build_extractor``).

Subclasses are small typed classes: their ``__init__`` arguments are what a YAML ``init_args`` sets,
and ``init_args()`` must return them so a checkpoint can rebuild the type.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn


class LatentParseError(ValueError):
    """Raised when an editable latent text does not parse; names the position and what was expected."""

    def __init__(self, latent_type: str, text: str, position: int, expected: str, found: str | None = None) -> None:
        self.latent_type, self.text, self.position, self.expected = latent_type, text, position, expected
        found = found if found is not None else (repr(text[position : position + 12]) if position < len(text) else "the end")
        pointer = " " * position + "^"
        super().__init__(
            f"{latent_type} latent does not parse: expected {expected} at position {position}, found {found}\n"
            f"  {text}\n  {pointer}"
        )


class LatentEncoder(nn.Module):
    """Maps the prior's decoder hidden states over ``z`` to conditioning vectors for the denoiser.

    The default is the paper's choice: the final hidden states themselves (identity).
    """

    def forward(self, hidden: Tensor, token_ids: Tensor, mask: Tensor) -> Tensor:  # noqa: ARG002
        return hidden


class Extractor(ABC):
    """Builds latent objects from images (and their conditions), offline, for training data."""

    @abstractmethod
    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[Any]:
        """``images`` are [B, 3, H, W] in [-1, 1]; returns one latent object per image."""

    def to(self, device: str) -> Extractor:
        """Run on ``device`` from now on (extractors with a network move it; the default has none)."""
        return self


class LatentType(ABC):
    """A kind of discrete latent ``z``. Register subclasses with ``@register_latent_type``."""

    name: ClassVar[str]

    # -- tokenizer -----------------------------------------------------------------------------
    @abstractmethod
    def format(self, latent: Any) -> str:
        """Latent object → its editable text form (what a person reads and edits)."""

    @abstractmethod
    def parse(self, text: str) -> Any:
        """Editable text → latent object. Raises :class:`LatentParseError` on bad text."""

    def special_tokens(self) -> list[str]:
        """Extra tokens this type adds to the prior's vocabulary (e.g. visual-token codes)."""
        return []

    # -- encoder -------------------------------------------------------------------------------
    def build_encoder(self, hidden_size: int) -> nn.Module:  # noqa: ARG002
        """A module ``(hidden [B,L,D], token_ids [B,L], mask [B,L]) -> [B,L,D]``."""
        return LatentEncoder()

    # -- extractor -----------------------------------------------------------------------------
    def build_extractor(self) -> Extractor:
        raise NotImplementedError(f"latent type {self.name!r} ships no extractor")

    # -- identity ------------------------------------------------------------------------------
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, so a checkpoint can rebuild this type (``cls(**init_args())``)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def spec(self) -> dict[str, Any]:
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.init_args() == self.init_args()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self.init_args().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())
        return f"{type(self).__name__}({args})"


def segment_tag(latent_type: LatentType | str) -> str:
    """The special token that opens a type's segment in the prior's latent sequence."""
    name = latent_type if isinstance(latent_type, str) else latent_type.name
    return f"<z:{name}>"


__all__ = ["Extractor", "LatentEncoder", "LatentParseError", "LatentType", "segment_tag"]
