"""The ``blob`` latent type: a grounded caption, each phrase followed by an ellipse on an integer grid.

Editable text::

    red circle (210, 490, 90, 90, 0); blue bar (745, 225, 180, 40, 135)

``(cx, cy, a, b, theta)``: the centre and the semi-axes ``a >= b`` in normalised image coordinates
times ``grid``; ``theta`` the direction of the major axis ``a`` in integer degrees in ``[0, 180)``,
measured from the +x axis (right) towards the +y axis (*down*): clockwise on screen. ``135`` above is a
bar running from bottom-left to top-right. See ``docs/latents.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kaleido.latents.base import Extractor
from kaleido.latents.drawing import draw_ellipse
from kaleido.latents.geometry import GroundedLatent, range_problem, to_grid
from kaleido.latents.registry import register_latent_type

PARAMETERS = ("cx", "cy", "a", "b", "theta")
ELLIPSE_GRID = 128  # samples per side of the window two ellipses are rasterised on: IoU to ~1%


@dataclass(frozen=True)
class GroundedBlob:
    """One object of a blob latent: a phrase and its ellipse ``(cx, cy, a, b, theta)`` (grid units, degrees)."""

    phrase: str
    ellipse: tuple[int, int, int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ellipse", tuple(self.ellipse))


@register_latent_type
class BlobLatent(GroundedLatent):
    """Objects as ``phrase (cx, cy, a, b, theta)``: ``cx, cy, a, b`` in ``0..grid`` with ``b <= a``,
    ``theta`` in ``0..179`` (degrees from +x towards +y, y down).

    Args:
        grid: centre and semi-axes are integers in ``0..grid``.
        max_objects: most blobs in one latent.
        order: ``"raster"`` sorts blobs by centre row, then column (then the other numbers and the
            phrase, so the text of a set of blobs is unique); ``"given"`` keeps the extractor's order.
        fourier_frequencies: ``K > 0`` adds Fourier features of each blob's
            ``(cx, cy, a, b) / grid, cos 2θ, sin 2θ`` to the hidden states of its tokens (GLIGEN-style);
            0 (default, the paper): hidden states only.
    """

    name = "blob"
    values = PARAMETERS
    # θ has period 180°: (cos 2θ, sin 2θ) is continuous across 179 → 0, where θ itself jumps.
    geometry_names = ("cx", "cy", "a", "b", "cos2theta", "sin2theta")

    def make(self, phrase: str, values: tuple[int, ...]) -> GroundedBlob:
        return GroundedBlob(phrase, values)  # type: ignore[arg-type]

    def unpack(self, obj: Any) -> tuple[str, Sequence[object]]:
        if isinstance(obj, GroundedBlob):
            return obj.phrase, obj.ellipse
        phrase, ellipse = obj
        return phrase, tuple(ellipse)

    def check(self, values: tuple[int, ...]) -> tuple[int, str] | None:
        grid = self.grid
        if (problem := range_problem(values, PARAMETERS, (grid, grid, grid, grid, 179))) is not None:
            index, expected = problem
            return index, expected + (" degrees, [0, 180)" if index == 4 else "")
        if values[3] > values[2]:
            return 3, f"b <= a = {values[2]} (a is the major semi-axis)"
        return None

    def sort_key(self, obj: GroundedBlob) -> tuple:
        cx, cy, a, b, theta = obj.ellipse
        return (cy, cx, a, b, theta, obj.phrase)

    # -- geometry ----------------------------------------------------------------------------------
    def from_normalised(self, phrase: str, ellipse: Sequence[float]) -> GroundedBlob:
        """A normalised ellipse (any ``theta`` in degrees, ``a`` and ``b`` in any order) → grid integers.

        If the axes round to the same integer the orientation carries no information and is set to 0,
        so equal shapes always read the same.
        """
        cx, cy, a, b, theta = (float(v) for v in ellipse)
        if b > a:
            a, b, theta = b, a, theta + 90.0
        qa, qb = to_grid(a, self.grid), to_grid(b, self.grid)
        degrees = 0 if qa == qb else math.floor(theta + 0.5) % 180
        return GroundedBlob(phrase, (to_grid(cx, self.grid), to_grid(cy, self.grid), qa, qb, degrees))

    def to_normalised(self, obj: GroundedBlob) -> tuple[float, float, float, float, float]:
        cx, cy, a, b, theta = obj.ellipse
        return (cx / self.grid, cy / self.grid, a / self.grid, b / self.grid, float(theta))

    def geometry(self, obj: GroundedBlob) -> tuple[float, ...]:
        *ellipse, theta = self.to_normalised(obj)
        return (*ellipse, math.cos(math.radians(2 * theta)), math.sin(math.radians(2 * theta)))

    def overlap(self, first: Sequence[float], second: Sequence[float]) -> float:
        return ellipse_iou(first, second)

    def outline(self, image: Image.Image, shape: Sequence[float], color: tuple[int, int, int]) -> None:
        draw_ellipse(image, shape, color)

    def build_extractor(self) -> Extractor:
        """Blobs of real images come from a segmenter: construct
        :class:`kaleido.latents.extractors.SamBlobExtractor` with local SAM and detector checkpoints.
        A data set with its own reading of blobs offers it instead (``latent_extractor``, docs/data.md)."""
        raise NotImplementedError(
            "the blob latent has no built-in extractor: segment the images with local models, "
            "kaleido.latents.extractors.SamBlobExtractor (see docs/latents.md)"
        )


def ellipse_iou(first: Sequence[float], second: Sequence[float], grid: int = ELLIPSE_GRID) -> float:
    """IoU of two ellipses ``(cx, cy, a, b, theta)`` (normalised, theta in degrees from +x towards +y),
    by rasterising both on a ``grid x grid`` window over the union of their bounding boxes."""
    bounds = np.array([_ellipse_bounds(e) for e in (first, second)])
    x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
    x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
    if x1 <= x0 or y1 <= y0:
        return 0.0
    xs = x0 + (np.arange(grid) + 0.5) * (x1 - x0) / grid
    ys = y0 + (np.arange(grid) + 0.5) * (y1 - y0) / grid
    x, y = np.meshgrid(xs, ys)
    inside = [_inside_ellipse(e, x, y) for e in (first, second)]
    union = np.count_nonzero(inside[0] | inside[1])
    return np.count_nonzero(inside[0] & inside[1]) / union if union else 0.0


def _ellipse_bounds(ellipse: Sequence[float]) -> tuple[float, float, float, float]:
    cx, cy, a, b, theta = (float(v) for v in ellipse)
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    half_x, half_y = math.hypot(a * c, b * s), math.hypot(a * s, b * c)
    return cx - half_x, cy - half_y, cx + half_x, cy + half_y


def _inside_ellipse(ellipse: Sequence[float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy, a, b, theta = (float(v) for v in ellipse)
    if a <= 0 or b <= 0:  # a degenerate ellipse covers nothing
        return np.zeros(x.shape, dtype=bool)
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


__all__ = ["BlobLatent", "GroundedBlob", "ellipse_iou"]
