"""A text latent read from the images' own metadata: the annotation a data set already has (an emoji's
name, a product's title, a species) is a detailed, human-readable latent, with no model in the loop."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from kaleido.latents.base import Extractor


class MetadataTextExtractor(Extractor):
    """Each image's text latent from its metadata record (``metadata.jsonl``), through a template.

    Args:
        template: the text, filled in with the record's fields, e.g. ``"{name}"`` or
            ``"{name}, {subcategory}"``. A record that lacks a field, or a text that comes out empty,
            fails for that image (``extract --on_error skip`` logs and skips it).
    """

    uses_metadata = True

    def __init__(self, template: str = "{name}") -> None:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        if not fields:
            raise ValueError(f"template {template!r} names no metadata field; e.g. '{{name}}'")
        self.template, self.fields = template, fields

    def text(self, record: Mapping[str, Any]) -> str:
        missing = [name for name in self.fields if name not in record]
        if missing:
            raise KeyError(f"the metadata has no field {', '.join(map(repr, missing))} (it has {sorted(record)})")
        text = self.template.format(**record).strip()
        if not text:
            raise ValueError(f"template {self.template!r} gives an empty text for {dict(record)}")
        return text

    def __call__(
        self, images: Tensor, conditions: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> list[str]:
        if metadata is None or len(metadata) != len(images):
            raise ValueError(
                "MetadataTextExtractor reads each image's metadata record; it extracts from an image folder "
                "(metadata.jsonl), not from generated samples"
            )
        return [self.text(record) for record in metadata]


__all__ = ["MetadataTextExtractor"]
