"""The ``text`` latent type: a detailed description of the image, written and read as plain text."""

from __future__ import annotations

from kaleido.latents.base import Extractor, LatentParseError, LatentType
from kaleido.latents.registry import register_latent_type

RESERVED = ("<z:", "<pad>", "</s>", "<unk>")


@register_latent_type
class TextLatent(LatentType):
    """A description of the image (the paper's "text" latent): any non-empty text without special tokens.

    A data set with a grammar of its own subclasses it and checks the grammar in :meth:`parse`, so an
    edit such as an unknown colour fails with the position and the accepted words (the embedded
    ``shapes`` data's :class:`kaleido.shapes.ShapesTextLatent` does).

    Args:
        max_chars: longest accepted description.
    """

    name = "text"

    def __init__(self, max_chars: int = 2000) -> None:
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
        return stripped

    def build_extractor(self) -> Extractor:
        """Free text has no built-in extractor: construct the model-backed
        :class:`kaleido.latents.extractors.CaptionerTextExtractor` with a local captioner checkpoint
        (``kaleido extract --extractor``), so no machine-local path becomes part of the latent type."""
        raise NotImplementedError(
            "the free-text latent has no built-in extractor: caption the images with a local model, "
            "kaleido.latents.extractors.CaptionerTextExtractor (model_path=DIR; see docs/latents.md)"
        )
