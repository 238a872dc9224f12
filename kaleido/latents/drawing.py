"""Outlines of latent objects over PIL images, for the types' ``draw`` hooks (grids, TensorBoard,
notebooks). Geometry is normalised (``x`` right, ``y`` down, angles in degrees from +x towards +y,
clockwise on screen), as in ``docs/latents.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

Color = tuple[int, int, int]
# Outline colours: saturated hues none of the shapes colours or backgrounds use, one per object.
PALETTE: tuple[Color, ...] = ((255, 0, 255), (0, 255, 255), (120, 255, 0), (255, 150, 200))


def object_color(index: int) -> Color:
    """The outline colour of a latent's ``index``-th object."""
    return PALETTE[index % len(PALETTE)]


def draw_box(image: Image.Image, box: Sequence[float], color: Color = PALETTE[0], width: int = 1) -> None:
    """Outline a normalised box ``(x1, y1, x2, y2)`` (edges) in place, on the border pixels of the pixels it
    covers. Edges are rounded to the nearest pixel edge: grid rounding puts them a hair off."""
    x1, y1, x2, y2 = box
    width_px, height_px = image.size
    left, top = min(_edge(x1, width_px), width_px - 1), min(_edge(y1, height_px), height_px - 1)
    right, bottom = max(_edge(x2, width_px) - 1, left), max(_edge(y2, height_px) - 1, top)
    ImageDraw.Draw(image).rectangle((left, top, right, bottom), outline=color, width=width)


def _edge(value: float, size: int) -> int:
    """A normalised coordinate → the nearest pixel edge, ``0..size``."""
    return min(max(round(value * size), 0), size)


def draw_ellipse(
    image: Image.Image, ellipse: Sequence[float], color: Color = PALETTE[0], width: int = 1, fill: Color | None = None
) -> None:
    """Draw a normalised ellipse ``(cx, cy, a, b, theta)`` in place: semi-axis ``a`` along ``theta`` degrees
    (clockwise on screen), ``b`` across it. A polygon, since PIL's own ellipses cannot rotate."""
    cx, cy, a, b, theta = (float(v) for v in ellipse)
    cos_t, sin_t = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    n = max(16, math.ceil(2 * math.pi * max(a * image.width, b * image.height)))  # ~one vertex per pixel of perimeter
    points = []
    for k in range(n):
        u, v = a * math.cos(2 * math.pi * k / n), b * math.sin(2 * math.pi * k / n)
        x, y = cx + u * cos_t - v * sin_t, cy + u * sin_t + v * cos_t
        points.append((math.floor(x * image.width), math.floor(y * image.height)))  # the pixel holding the point
    ImageDraw.Draw(image).polygon(points, outline=color, fill=fill, width=width)


__all__ = ["PALETTE", "Color", "draw_box", "draw_ellipse", "object_color"]
