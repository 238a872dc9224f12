"""The ``box`` latent type: a grounded caption, each phrase followed by its box on an integer grid.

Editable text (the paper's form)::

    red circle (120, 400, 300, 580); blue square (610, 90, 880, 360)

``(x1, y1, x2, y2)`` are the left, top, right and bottom edges of the box in normalised image
coordinates times ``grid`` (y down; ``(0, 0, grid, grid)`` is the whole image), written as plain digits
that the shared byte-level BPE vocabulary tokenises like any other text. See ``docs/latents.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from kaleido.latents.base import Extractor
from kaleido.latents.drawing import draw_box
from kaleido.latents.geometry import GroundedLatent, range_problem, to_grid
from kaleido.latents.registry import register_latent_type

COORDINATES = ("x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class GroundedBox:
    """One object of a box latent: a phrase and its box ``(x1, y1, x2, y2)`` in grid units."""

    phrase: str
    box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", tuple(self.box))  # a list would break equality with parsed objects


@register_latent_type
class BoxLatent(GroundedLatent):
    """Objects as ``phrase (x1, y1, x2, y2)``; ``x1 <= x2`` and ``y1 <= y2``, all in ``0..grid``.

    Args:
        grid: coordinates are integers in ``0..grid`` (the paper: 0-1000).
        max_objects: most boxes in one latent.
        order: ``"raster"`` sorts boxes by their top edge, then left edge (then bottom, right,
            phrase, so the text of a set of boxes is unique); ``"given"`` keeps the extractor's order.
        fourier_frequencies: ``K > 0`` adds Fourier features of each box ``(x1, y1, x2, y2) / grid``
            to the hidden states of its tokens (GLIGEN-style); 0 (default, the paper): hidden states only.
    """

    name = "box"
    values = COORDINATES
    geometry_names = COORDINATES

    def make(self, phrase: str, values: tuple[int, ...]) -> GroundedBox:
        return GroundedBox(phrase, values)  # type: ignore[arg-type]

    def unpack(self, obj: Any) -> tuple[str, Sequence[object]]:
        if isinstance(obj, GroundedBox):
            return obj.phrase, obj.box
        phrase, box = obj
        return phrase, tuple(box)

    def check(self, values: tuple[int, ...]) -> tuple[int, str] | None:
        if (problem := range_problem(values, COORDINATES, (self.grid,) * 4)) is not None:
            return problem
        x1, y1, x2, y2 = values
        if x2 < x1:
            return 2, f"x2 >= x1 = {x1} (the right edge is not left of the left edge)"
        if y2 < y1:
            return 3, f"y2 >= y1 = {y1} (the bottom edge is not above the top edge)"
        return None

    def sort_key(self, obj: GroundedBox) -> tuple:
        x1, y1, x2, y2 = obj.box
        return (y1, x1, y2, x2, obj.phrase)

    # -- geometry ----------------------------------------------------------------------------------
    def from_normalised(self, phrase: str, box: Sequence[float]) -> GroundedBox:
        """A box in normalised coordinates (``[0, 1]``, clamped) → grid integers."""
        x1, y1, x2, y2 = (to_grid(v, self.grid) for v in box)
        return GroundedBox(phrase, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))

    def to_normalised(self, obj: GroundedBox) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = obj.box
        return (x1 / self.grid, y1 / self.grid, x2 / self.grid, y2 / self.grid)

    def geometry(self, obj: GroundedBox) -> tuple[float, ...]:
        return self.to_normalised(obj)

    def overlap(self, first: Sequence[float], second: Sequence[float]) -> float:
        return box_iou(first, second)

    def outline(self, image: Image.Image, shape: Sequence[float], color: tuple[int, int, int]) -> None:
        draw_box(image, shape, color)

    def build_extractor(self) -> Extractor:
        """Boxes of real images come from a detector: construct
        :class:`kaleido.latents.extractors.DetectorBoxExtractor` with a local checkpoint (``kaleido
        extract --extractor``), so no machine-local path becomes part of the latent type. A data set
        with its own reading of boxes offers it instead (``latent_extractor``, docs/data.md)."""
        raise NotImplementedError(
            "the box latent has no built-in extractor: detect boxes with a local model, "
            "kaleido.latents.extractors.DetectorBoxExtractor (model_path=DIR; see docs/latents.md)"
        )


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x1, y1, x2, y2)``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


__all__ = ["BoxLatent", "GroundedBox", "box_iou"]
