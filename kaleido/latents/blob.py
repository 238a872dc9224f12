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
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kaleido.latents.base import Extractor
from kaleido.latents.geometry import GroundedLatent, Order, range_problem, to_grid
from kaleido.latents.masks import snap_isotropic
from kaleido.latents.registry import register_latent_type

if TYPE_CHECKING:
    from kaleido.data.shapes import Scene
    from kaleido.data.shapes_parser import ParsedObject

PARAMETERS = ("cx", "cy", "a", "b", "theta")


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

    def build_extractor(self) -> Extractor:
        """The analytic extractor of the embedded ``shapes`` data; for real images construct
        :class:`kaleido.latents.extractors.SamBlobExtractor` with local SAM and detector checkpoints."""
        return ShapesBlobExtractor(self.grid, self.max_objects, self.order)


def scene_blobs(
    scene: Scene, grid: int = 1000, max_objects: int = 8, order: Order = "raster", fourier_frequencies: int = 0
) -> list[GroundedBlob]:
    """The exact blob latent of a ``shapes`` scene (``ShapeObject.ellipse``; all circles): its ground truth.
    Takes every ``BlobLatent`` argument, so ``scene_blobs(scene, **latent.init_args())`` works."""
    latent = BlobLatent(grid, max_objects, order, fourier_frequencies)
    return latent.canonical([latent.from_normalised(f"{o.color} {o.shape}", o.ellipse) for o in scene.objects])


class ShapesBlobExtractor(Extractor):
    """Ellipses of ``shapes`` images from the analytic parser (soft-coverage moments, no model).

    Near-circles (axes within ``isotropy_tolerance``) become circles with ``theta = 0``: rasterised
    squares and circles are isotropic up to pixel noise, and a noisy angle is nothing to learn.
    With more than ``max_objects`` objects the largest are kept.
    """

    def __init__(
        self,
        grid: int = 1000,
        max_objects: int = 8,
        order: Order = "raster",
        min_area: float = 0.005,
        isotropy_tolerance: float = 0.05,
    ) -> None:
        self.latent = BlobLatent(grid, max_objects, order)
        self.grid, self.min_area, self.isotropy_tolerance = grid, min_area, isotropy_tolerance

    def from_parsed(self, parsed: Sequence[ParsedObject]) -> list[GroundedBlob]:
        largest = sorted(parsed, key=lambda o: -o.area)[: self.latent.max_objects]
        return self.latent.canonical([
            self.latent.from_normalised(f"{o.color} {o.shape}", snap_isotropic(o.ellipse, self.isotropy_tolerance))
            for o in largest
        ])

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[GroundedBlob]]:  # noqa: ARG002
        from kaleido.data.shapes_parser import parse_image  # late: keeps `import kaleido.latents` light

        return [self.from_parsed(parse_image(image, min_area=self.min_area)) for image in images]


__all__ = ["BlobLatent", "GroundedBlob", "ShapesBlobExtractor", "scene_blobs"]
