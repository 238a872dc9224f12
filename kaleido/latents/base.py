"""The latent-type contract: what a pluggable kind of discrete latent ``z`` declares.

A latent type bundles three parts (DESIGN.md):

* **tokenizer** -- latent object ⇄ editable text (``format`` / ``parse``), plus any special tokens it
  adds to the prior's vocabulary. Text ⇄ token ids is the shared prior tokenizer's job.
* **encoder** -- (the prior's decoder hidden states over ``z``, the token ids) → the conditioning
  sequence the denoiser attends to (``build_encoder``). A type may also declare per-object geometry
  (``geometry_width`` / ``geometry_spans``); its encoder then also receives each token's geometry.
* **extractor** -- images (+ condition) → latent objects, to build training data offline
  (``build_extractor``).

Optional hooks, each declared by overriding it (:func:`implements` tells whether a type did); generic
code calls them and never asks which type it holds, and skips a type without one, saying so:

* ``adherence(latent, found)`` -- named scores in [0, 1] of how closely an image follows the ``z`` it
  was drawn from, judged by the latent an extractor reads back off the image (``evaluate``,
  ``adherence``, ``LogSamples``);
* ``draw(image, latent)`` -- the latent drawn over an image (grids, TensorBoard, notebooks);
* ``decode(latents)`` -- the image each latent stands for, where a type can render one (visual
  tokens): adherence then also reports the ceiling a perfect sample would reach;
* ``geometry_width`` / ``geometry_spans`` -- per-object geometry for the encoder.

Subclasses are small typed classes: their ``__init__`` arguments are what a YAML ``init_args`` sets,
and ``init_args()`` must return them so a checkpoint can rebuild the type.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from PIL import Image

# (start, end) character span of one object in a latent text, and its geometry vector.
GeometrySpan = tuple[int, int, tuple[float, ...]]
MAX_FOURIER_FREQUENCIES = 16  # 2^16·π per unit is far below any grid step, and float32 sin loses precision beyond


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


def check_fourier_frequencies(owner: str, frequencies: object) -> int:
    """``frequencies`` if it is an int in ``0..MAX_FOURIER_FREQUENCIES`` (0: no Fourier features), else a clear error."""
    if isinstance(frequencies, bool) or not isinstance(frequencies, int) or not 0 <= frequencies <= MAX_FOURIER_FREQUENCIES:
        raise ValueError(
            f"{owner} fourier_frequencies must be an int in 0..{MAX_FOURIER_FREQUENCIES} (0 turns the features off), got {frequencies!r}"
        )
    return frequencies


class FourierGeometryEncoder(LatentEncoder):
    """GLIGEN-style: the hidden states plus an MLP of Fourier features of each token's object geometry.

    ``geometry`` is ``[B, L, G + 1]``: the geometry vector of the object whose text holds the token (G
    numbers, normalised to about ``[0, 1]``) and a last 0/1 column, 1 only for tokens of an object. The
    features are ``sin`` and ``cos`` of ``2^k·π·g`` for ``k < frequencies``; the MLP's last layer starts at
    zero, so an untrained encoder is the identity encoder, and tokens outside objects stay unchanged.
    """

    def __init__(self, hidden_size: int, geometry_width: int, frequencies: int) -> None:
        super().__init__()
        if geometry_width < 1 or frequencies < 1:
            raise ValueError(f"{type(self).__name__} needs geometry_width >= 1 and frequencies >= 1, got {geometry_width}, {frequencies}")
        self.geometry_width = geometry_width
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * frequencies * geometry_width, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: Tensor, token_ids: Tensor, mask: Tensor, geometry: Tensor | None = None) -> Tensor:  # noqa: ARG002
        if geometry is None or geometry.shape[-1] != self.geometry_width + 1:
            got = None if geometry is None else tuple(geometry.shape)
            raise ValueError(f"expected per-token geometry [B, L, {self.geometry_width + 1}] (vector and flag), got {got}")
        angles = geometry[..., :-1, None].float() * self.scales  # [B, L, G, K]
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return hidden + self.mlp(features) * geometry[..., -1:]


class Extractor(ABC):
    """Builds latent objects from images (and their conditions), offline, for training data.

    An extractor that reads the images' metadata (an image folder's ``metadata.jsonl`` fields, e.g. a
    file's annotated name) sets ``uses_metadata = True`` and is called with ``metadata=`` as well: one
    dict per image. Samples have no metadata, so such an extractor serves extraction, not adherence.
    """

    uses_metadata: ClassVar[bool] = False

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
        """A module ``(hidden [B,L,D], token_ids [B,L], mask [B,L]) -> [B,L,D]``; when
        :meth:`geometry_width` is ``G > 0`` it is also called with ``geometry=`` ``[B,L,G+1]`` (see
        :class:`FourierGeometryEncoder`)."""
        return LatentEncoder()

    # -- geometry features (optional) ---------------------------------------------------------------
    def geometry_width(self) -> int:
        """How many numbers describe one object's geometry for the encoder; 0 (the default): the
        encoder reads no geometry, and the tokenizer computes none for this type."""
        return 0

    def geometry_spans(self, text: str) -> list[GeometrySpan]:  # noqa: ARG002
        """Each object of ``text``: ``(start, end, vector)``, its character span and its normalised
        geometry (:meth:`geometry_width` numbers). Raises :class:`LatentParseError` on bad text."""
        return []

    # -- extractor -----------------------------------------------------------------------------
    def build_extractor(self) -> Extractor:
        raise NotImplementedError(f"latent type {self.name!r} ships no extractor")

    # -- optional hooks ----------------------------------------------------------------------------
    def adherence(self, latent: Any, found: Any) -> dict[str, float]:
        """How closely an image follows ``latent`` (the z it was drawn from), judged by ``found``, what an
        extractor reads back off the image (normally a latent object of this type): named scores in
        [0, 1], higher is closer, the same names for every sample. Not overridden: no measure."""
        raise NotImplementedError(f"latent type {self.name!r} declares no adherence measure")

    def draw(self, image: Image.Image, latent: Any) -> None:
        """Draw ``latent`` over ``image`` (a PIL RGB image, any size), in place. Not overridden: the
        type has nothing to draw (its text caption says it all)."""
        raise NotImplementedError(f"latent type {self.name!r} declares no drawing")

    def decode(self, latents: Sequence[Any]) -> Tensor:
        """The image each latent stands for, [N, 3, H, W] in [-1, 1], where the type can render one (a
        VQ decoder). Not overridden: it cannot."""
        raise NotImplementedError(f"latent type {self.name!r} cannot render its latents")

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


HOOKS = ("adherence", "draw", "decode")


def implements(latent_type: LatentType, hook: str) -> bool:
    """Whether ``latent_type`` declares the optional ``hook`` (one of :data:`HOOKS`), i.e. overrides it."""
    if hook not in HOOKS:
        raise ValueError(f"{hook!r} is not an optional hook of a latent type; they are {', '.join(HOOKS)}")
    return getattr(type(latent_type), hook) is not getattr(LatentType, hook)


def segment_tag(latent_type: LatentType | str) -> str:
    """The special token that opens a type's segment in the prior's latent sequence."""
    name = latent_type if isinstance(latent_type, str) else latent_type.name
    return f"<z:{name}>"


__all__ = [
    "Extractor",
    "FourierGeometryEncoder",
    "GeometrySpan",
    "HOOKS",
    "LatentEncoder",
    "LatentParseError",
    "LatentType",
    "check_fourier_frequencies",
    "implements",
    "segment_tag",
]
