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
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kaleido.latents.base import Extractor
from kaleido.latents.geometry import GroundedLatent, Order, range_problem, to_grid
from kaleido.latents.registry import register_latent_type

if TYPE_CHECKING:
    from kaleido.data.shapes import Scene
    from kaleido.data.shapes_parser import ParsedObject

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

    def build_extractor(self) -> Extractor:
        """The analytic extractor of the embedded ``shapes`` data; for real images construct
        :class:`kaleido.latents.extractors.DetectorBoxExtractor` with a local detector checkpoint."""
        return ShapesBoxExtractor(self.grid, self.max_objects, self.order)


def scene_boxes(
    scene: Scene, grid: int = 1000, max_objects: int = 8, order: Order = "raster", fourier_frequencies: int = 0
) -> list[GroundedBox]:
    """The exact box latent of a ``shapes`` scene (phrase ``"<colour> <shape>"``): its ground truth.
    Takes every ``BoxLatent`` argument, so ``scene_boxes(scene, **latent.init_args())`` works."""
    latent = BoxLatent(grid, max_objects, order, fourier_frequencies)
    return latent.canonical([latent.from_normalised(f"{o.color} {o.shape}", o.box) for o in scene.objects])


class ShapesBoxExtractor(Extractor):
    """Boxes of ``shapes`` images from the analytic parser (no model): phrase ``"<colour> <shape>"``.

    With more than ``max_objects`` objects the largest are kept.
    """

    def __init__(self, grid: int = 1000, max_objects: int = 8, order: Order = "raster", min_area: float = 0.005) -> None:
        self.latent = BoxLatent(grid, max_objects, order)
        self.grid, self.min_area = grid, min_area

    def from_parsed(self, parsed: Sequence[ParsedObject]) -> list[GroundedBox]:
        largest = sorted(parsed, key=lambda o: -o.area)[: self.latent.max_objects]
        return self.latent.canonical([self.latent.from_normalised(f"{o.color} {o.shape}", o.box) for o in largest])

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[GroundedBox]]:  # noqa: ARG002
        from kaleido.data.shapes_parser import parse_image  # late: keeps `import kaleido.latents` light

        return [self.from_parsed(parse_image(image, min_area=self.min_area)) for image in images]


__all__ = ["BoxLatent", "GroundedBox", "ShapesBoxExtractor", "scene_boxes"]
