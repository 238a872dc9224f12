"""Latent adherence on ``shapes``: does a sample show what the latent that produced it says?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from kaleido.data.shapes_parser import objects_match, parse_image
from kaleido.data.shapes_text import ShapesTextError, parse_description


@dataclass
class Adherence:
    """Shares over ``count`` samples. ``objects``: every object of the latent text is found in the
    image with its shape and colour (the issue's definition; extra objects allowed). ``exact``: the
    same, and no extra objects. ``unparsed``: latent texts that are not valid descriptions (counted as
    misses in both)."""

    objects: float
    exact: float
    unparsed: float
    count: int


def text_adherence(images: Tensor, latent_texts: Sequence[str]) -> Adherence:
    """``images`` [N, 3, H, W] in [-1, 1] against the text latents that produced them."""
    if len(images) != len(latent_texts):
        raise ValueError(f"{len(images)} images but {len(latent_texts)} latent texts")
    hits = exact = unparsed = 0
    for image, text in zip(images, latent_texts):
        try:
            description = parse_description(text)
        except ShapesTextError:
            unparsed += 1
            continue
        parsed = parse_image(image)
        hits += objects_match(description, parsed)
        exact += objects_match(description, parsed, allow_extra=False)
    n = max(1, len(latent_texts))
    return Adherence(objects=hits / n, exact=exact / n, unparsed=unparsed / n, count=len(latent_texts))
