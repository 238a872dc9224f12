"""Analytic box and blob extractors for images of objects on a plain background (emoji, digits, icons,
product shots): the foreground is every pixel that differs from the background colour, each
connected part of it (or the whole foreground) becomes one object, named by its colour.

No model, no download: the geometry is exact for the pixels given, so these also serve as the
readers that measure a trained model's adherence on such data.
"""

from __future__ import annotations

import colorsys
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor

from kaleido.latents.base import Extractor
from kaleido.latents.blob import BlobLatent
from kaleido.latents.box import BoxLatent
from kaleido.latents.geometry import GroundedLatent, Order, clean_phrase
from kaleido.latents.masks import ellipse_from_mask, to_uint8_images

Colour = tuple[int, int, int]


def parse_colour(colour: str | Sequence[int]) -> Colour:
    """``"#rrggbb"``, ``"white"`` / ``"black"`` or ``(r, g, b)`` in ``0..255`` → an RGB triple."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    if isinstance(colour, str):
        if colour in named:
            return named[colour]
        text = colour.removeprefix("#")
        if len(text) == 6:
            try:
                return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
            except ValueError:
                pass
        raise ValueError(f"a colour is '#rrggbb', 'white', 'black' or [r, g, b], got {colour!r}")
    values = tuple(colour)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise ValueError(f"a colour is [r, g, b] with integers in 0..255, got {colour!r}")
    return values  # type: ignore[return-value]


def colour_name(rgb: Sequence[float]) -> str:
    """A basic colour word for an RGB colour in ``0..255``: black, gray, white, or a hue name
    (red, orange, yellow, green, cyan, blue, purple, pink; dark orange reads as brown)."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*(float(c) / 255.0 for c in rgb))
    if saturation < 0.2 or lightness < 0.1 or lightness > 0.92:  # too grey, dark or light to have a hue
        return "black" if lightness < 0.2 else "white" if lightness > 0.8 else "gray"
    degrees = hue * 360.0
    for upper, name in ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"), (290, "purple"), (340, "pink")):
        if degrees < upper:
            return "brown" if name == "orange" and lightness < 0.35 else name
    return "red"


def foreground_mask(image: np.ndarray, background: Colour, threshold: int) -> np.ndarray:
    """The pixels of a uint8 ``[H, W, 3]`` image farther than ``threshold`` (max over channels) from ``background``."""
    distance = np.abs(image.astype(np.int16) - np.asarray(background, dtype=np.int16)).max(axis=-1)
    return distance > threshold


class ForegroundExtractor(Extractor):
    """Objects on a plain background, for a box or blob latent (subclasses pick which).

    Args:
        background: the background colour (``"#rrggbb"``, ``"white"``, ``"black"`` or ``[r, g, b]``).
        threshold: a pixel belongs to the foreground when a channel differs from the background by
            more than this (``0..255``); anti-aliased edges below it count as background.
        components: one object per connected part of the foreground (8-connectivity), largest first,
            up to ``max_objects``; ``False``: the whole foreground is one object.
        min_area: parts smaller than this share of the image are ignored (noise, stray pixels).
        phrase: every object's phrase; ``None`` names each object by its median colour (``colour_name``).
        isotropy_tolerance: blobs only: axes closer than this share become a circle with ``theta = 0``.
        grid / max_objects / order / fourier_frequencies: those of the latent type produced.

    An image with no foreground gets the empty latent (no objects).
    """

    latent_class: type[GroundedLatent]

    def __init__(
        self,
        background: str | Sequence[int] = "white",
        threshold: int = 24,
        components: bool = False,
        min_area: float = 0.002,
        phrase: str | None = None,
        isotropy_tolerance: float = 0.05,
        grid: int = 100,
        max_objects: int = 8,
        order: Order = "raster",
        fourier_frequencies: int = 0,
    ) -> None:
        if not 0 <= threshold < 255:
            raise ValueError(f"threshold must be in 0..254, got {threshold}")
        if not 0.0 <= min_area < 1.0:
            raise ValueError(f"min_area is a share of the image in [0, 1), got {min_area}")
        if phrase is not None and clean_phrase(phrase) != phrase:
            raise ValueError(f"phrase {phrase!r} is not a valid phrase (printable, no '(', ')' or ';', no outer spaces)")
        self.background, self.threshold = parse_colour(background), threshold
        self.components, self.min_area, self.phrase = components, min_area, phrase
        self.isotropy_tolerance = isotropy_tolerance
        self.latent = self.latent_class(grid, max_objects, order, fourier_frequencies)

    def regions(self, image: np.ndarray) -> list[np.ndarray]:
        """The object masks of one uint8 image, largest first (parts under ``min_area`` left out)."""
        mask = foreground_mask(image, self.background, self.threshold)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        least = max(1, int(self.min_area * mask.size))
        kept = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= least]  # stray specks go either way
        if not self.components:
            return [np.isin(labels, kept)] if kept else []
        return [labels == label for label in kept[: self.latent.max_objects]]

    def name(self, image: np.ndarray, region: np.ndarray) -> str:
        return self.phrase if self.phrase is not None else colour_name(np.median(image[region], axis=0))

    @abstractmethod
    def shape(self, region: np.ndarray) -> tuple[float, ...]:
        """One region's normalised geometry, in the latent type's values."""

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[Any]]:  # noqa: ARG002
        return [
            self.latent.canonical([self.latent.from_normalised(self.name(image, r), self.shape(r)) for r in self.regions(image)])
            for image in to_uint8_images(images)
        ]


class ForegroundBoxExtractor(ForegroundExtractor):
    """Each foreground object's bounding box (pixel edges), as a :class:`~kaleido.latents.BoxLatent`."""

    latent_class = BoxLatent

    def shape(self, region: np.ndarray) -> tuple[float, ...]:
        rows, cols = np.nonzero(region)
        height, width = region.shape
        return cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height


class ForegroundBlobExtractor(ForegroundExtractor):
    """Each foreground object's second-moment ellipse, as a :class:`~kaleido.latents.BlobLatent`: for a
    handwritten digit, its position, size, slant (the angle) and width (the minor axis)."""

    latent_class = BlobLatent

    def shape(self, region: np.ndarray) -> tuple[float, ...]:
        return ellipse_from_mask(region, self.isotropy_tolerance)


__all__ = ["ForegroundBlobExtractor", "ForegroundBoxExtractor", "ForegroundExtractor", "colour_name", "foreground_mask", "parse_colour"]
