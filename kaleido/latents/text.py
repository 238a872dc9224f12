"""The ``text`` latent type: a detailed description of the image, written and read as plain text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from kaleido.latents.base import Extractor, LatentParseError, LatentType
from kaleido.latents.registry import register_latent_type

RESERVED = ("<z:", "<pad>", "</s>", "<unk>")


@register_latent_type
class TextLatent(LatentType):
    """A description of the image (the paper's "text" latent).

    Args:
        grammar: ``"free"`` accepts any non-empty text; ``"shapes"`` also checks it against the
            grammar of the embedded ``shapes`` data set's descriptions, so an edit such as an unknown
            colour fails with the position and the accepted words instead of producing an unseen prompt.
        max_chars: longest accepted description.
    """

    name = "text"

    def __init__(self, grammar: Literal["free", "shapes"] = "free", max_chars: int = 2000) -> None:
        if grammar not in ("free", "shapes"):
            raise ValueError(f"TextLatent grammar must be 'free' or 'shapes', got {grammar!r}")
        self.grammar = grammar
        self.max_chars = max_chars

    def format(self, latent: str) -> str:
        return self.parse(latent)

    def parse(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"a text latent is a str, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise LatentParseError(self.name, text, 0, "a non-empty description")
        if len(stripped) > self.max_chars:
            raise LatentParseError(self.name, text, self.max_chars, f"at most {self.max_chars} characters")
        for token in RESERVED:
            if (at := stripped.find(token)) >= 0:
                raise LatentParseError(self.name, stripped, at, "plain text (special tokens are reserved)", repr(token))
        if self.grammar == "shapes":
            from kaleido.data.shapes_text import ShapesTextError, parse_description

            try:
                parse_description(stripped)
            except ShapesTextError as error:
                raise LatentParseError(self.name, stripped, error.position, error.expected, error.found) from error
        return stripped

    def build_extractor(self) -> Extractor:
        """The analytic extractor of the embedded ``shapes`` data. Free text has no built-in one: as box
        and blob do for real images, construct the model-backed
        :class:`kaleido.latents.extractors.CaptionerTextExtractor` with a local captioner checkpoint
        (``kaleido extract --extractor``), so no machine-local path becomes part of the latent type."""
        if self.grammar == "shapes":
            return ShapesTextExtractor()
        raise NotImplementedError(
            "the free-text latent has no built-in extractor: caption the images with a local model, "
            "kaleido.latents.extractors.CaptionerTextExtractor (model_path=DIR; see docs/latents.md)"
        )


class ShapesTextExtractor(Extractor):
    """Describes ``shapes`` images with the analytic parser (no model needed)."""

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[str]:
        from kaleido.data.shapes_scene import scene_from_image
        from kaleido.data.shapes_text import describe

        return [describe(scene_from_image(image, condition)) for image, condition in zip(images, conditions)]
