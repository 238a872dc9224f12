"""Image → ``Scene``: the analytic extractor of the ``shapes`` data set.

Reads the objects with :func:`kaleido.shapes.parser.parse_image` and recovers what the parser
does not measure directly: the size word (from the area, which fixes the circumradius of a known
shape) and the background name. Every latent type's shapes extractor starts from this scene.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kaleido.shapes.parser import ParsedObject, estimate_background, parse_image, to_rgb
from kaleido.shapes.scenes import BACKGROUNDS, SIZES, Scene, ShapeObject

# Area of a shape with circumradius r, in units of r² (circle π, square 2, equilateral triangle 3√3/4).
_AREA_PER_R2 = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4}


def _size_word(radius: float) -> str:
    """The SIZES entry whose range is nearest to ``radius``."""
    return min(SIZES, key=lambda name: abs(radius - sum(SIZES[name]) / 2))


def _background_levels(rgb: np.ndarray) -> np.ndarray:
    return estimate_background(rgb) * 255.0  # to_rgb gives [0, 1]; BACKGROUNDS are 0..255


def _background_name(rgb: np.ndarray) -> str:
    background = _background_levels(rgb)
    return min(BACKGROUNDS, key=lambda name: float(np.sum((np.asarray(BACKGROUNDS[name]) - background) ** 2)))


def background_offset(image: np.ndarray | torch.Tensor) -> float:
    """How far an image's background (its border ring's median colour) lies from the nearest of the data's
    flat backgrounds: the largest channel difference, in 0–255 levels. A render is within rounding of 0; a
    model's low-frequency colour errors (a tinted background) show here first."""
    background = _background_levels(to_rgb(image))
    return min(float(np.abs(np.asarray(colour, dtype=np.float64) - background).max()) for colour in BACKGROUNDS.values())


def object_from_parsed(parsed: ParsedObject) -> ShapeObject:
    radius = math.sqrt(parsed.area / _AREA_PER_R2[parsed.shape])
    cx, cy = parsed.ellipse[0], parsed.ellipse[1]
    return ShapeObject(parsed.shape, parsed.color, _size_word(radius), cx, cy, radius)


def scene_from_image(image: np.ndarray | torch.Tensor, condition: str | None = None) -> Scene:
    """The scene an image shows. With a condition such as "a circle", an object of that shape comes
    first (the data set's convention: the condition names the first object); otherwise the largest."""
    parsed = parse_image(image)
    objects = [object_from_parsed(p) for p in parsed]  # largest first
    if condition:
        named = [o for o in objects if o.shape in condition.split()]
        objects = named[:1] + [o for o in objects if o is not (named[0] if named else None)]
    return Scene(tuple(objects), _background_name(to_rgb(image)))
