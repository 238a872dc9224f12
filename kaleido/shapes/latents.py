"""The latent types on ``shapes``: its description grammar as a text latent, the exact latents of a scene
(ground truth), and the analytic extractors that read text, boxes and blobs off an image (no model).

The generic ``box`` and ``blob`` types know nothing of this data set; it knows them: :func:`ground_truth`
and :func:`shapes_extractor` are how :class:`kaleido.shapes.ShapesDataModule` offers its own reading of
each type it can read (the data contract, ``docs/data.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from kaleido.latents import BlobLatent, BoxLatent, Extractor, LatentParseError, LatentType, TextLatent
from kaleido.latents.blob import GroundedBlob
from kaleido.latents.box import GroundedBox
from kaleido.latents.geometry import Order
from kaleido.latents.masks import snap_isotropic
from kaleido.shapes.parser import ParsedObject, match_objects, parse_image
from kaleido.shapes.reader import scene_from_image
from kaleido.shapes.scenes import Scene
from kaleido.shapes.text import ShapesTextError, describe, parse_description


class ShapesTextLatent(TextLatent):
    """The ``text`` latent in the grammar of the shapes descriptions ("a large red circle at the top
    left, on a white background"): an edit such as an unknown colour fails with its position and the
    accepted words instead of producing an unseen prompt. Its extractor is the analytic parser.

    Adherence: ``objects``, the sample shows every described object with its shape and colour (extra
    objects allowed); ``exact``, the same and no extra objects; ``colours``, the sample shows every
    described object's colour, shape aside (each on its own parsed object, extra objects allowed).
    """

    def parse(self, text: str) -> str:
        stripped = super().parse(text)
        try:
            parse_description(stripped)
        except ShapesTextError as error:
            raise LatentParseError(self.name, stripped, error.position, error.expected, error.found) from error
        return stripped

    def build_extractor(self) -> Extractor:
        return ShapesTextExtractor()

    def adherence(self, latent: str, found: str) -> dict[str, float]:
        expected = parse_description(latent, allow_empty=True).objects  # z parses (it was read by parse)
        seen = parse_description(found, allow_empty=True).objects  # a sample may show nothing at all
        matches = match_objects(expected, seen)
        every = all(j is not None for j in matches)
        # every described colour on an object of its own: the multiset of colours is covered
        coloured = not Counter(o.color for o in expected) - Counter(o.color for o in seen)
        return {"objects": float(every), "exact": float(every and len(seen) == len(matches)), "colours": float(coloured)}


class ShapesTextExtractor(Extractor):
    """Describes ``shapes`` images with the analytic parser (no model needed)."""

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[str]:
        return [describe(scene_from_image(image, condition)) for image, condition in zip(images, conditions)]


class ParsedObjectsExtractor(Extractor):
    """Objects of a grounded type (box, blob) read off ``shapes`` images by the analytic parser, phrase
    ``"<colour> <shape>"``, in the latent type's grid and order; with more than ``max_objects`` objects
    the largest are kept."""

    def __init__(self, latent_type: BoxLatent | BlobLatent, shape: Callable[[ParsedObject], Sequence[float]], min_area: float = 0.005) -> None:
        self.latent_type, self.shape, self.min_area = latent_type, shape, min_area

    @property
    def grid(self) -> int:
        """The grid of the objects it returns (what SamBlobExtractor needs of a box source)."""
        return self.latent_type.grid

    def from_parsed(self, parsed: Sequence[ParsedObject]) -> list[Any]:
        largest = sorted(parsed, key=lambda o: -o.area)[: self.latent_type.max_objects]
        return self.latent_type.canonical([self.latent_type.from_normalised(f"{o.color} {o.shape}", self.shape(o)) for o in largest])

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[Any]]:  # noqa: ARG002
        return [self.from_parsed(parse_image(image, min_area=self.min_area)) for image in images]


class ShapesBoxExtractor(ParsedObjectsExtractor):
    """The parser's boxes, for ``BoxLatent(grid, max_objects, order)`` (``kaleido extract --extractor``)."""

    def __init__(self, grid: int = 1000, max_objects: int = 8, order: Order = "raster", min_area: float = 0.005) -> None:
        super().__init__(BoxLatent(grid, max_objects, order), lambda o: o.box, min_area)


class ShapesBlobExtractor(ParsedObjectsExtractor):
    """The parser's second-moment ellipses, for ``BlobLatent(grid, max_objects, order)``. Near-circles (axes
    within ``isotropy_tolerance``) become circles with ``theta = 0``: rasterised squares and circles are
    isotropic up to pixel noise, and a noisy angle is nothing to learn."""

    def __init__(
        self, grid: int = 1000, max_objects: int = 8, order: Order = "raster", min_area: float = 0.005, isotropy_tolerance: float = 0.05
    ) -> None:
        super().__init__(BlobLatent(grid, max_objects, order), lambda o: snap_isotropic(o.ellipse, isotropy_tolerance), min_area)


def box_extractor(latent_type: BoxLatent, min_area: float = 0.005) -> ShapesBoxExtractor:
    """The parser's boxes in ``latent_type``'s grid and order."""
    return ShapesBoxExtractor(latent_type.grid, latent_type.max_objects, latent_type.order, min_area)


def blob_extractor(latent_type: BlobLatent, min_area: float = 0.005, isotropy_tolerance: float = 0.05) -> ShapesBlobExtractor:
    """The parser's ellipses in ``latent_type``'s grid and order."""
    return ShapesBlobExtractor(latent_type.grid, latent_type.max_objects, latent_type.order, min_area, isotropy_tolerance)


def scene_boxes(scene: Scene, latent_type: BoxLatent) -> list[GroundedBox]:
    """The exact box latent of a scene (phrase ``"<colour> <shape>"``)."""
    return latent_type.canonical([latent_type.from_normalised(f"{o.color} {o.shape}", o.box) for o in scene.objects])


def scene_blobs(scene: Scene, latent_type: BlobLatent) -> list[GroundedBlob]:
    """The exact blob latent of a scene (``ShapeObject.ellipse``; all circles)."""
    return latent_type.canonical([latent_type.from_normalised(f"{o.color} {o.shape}", o.ellipse) for o in scene.objects])


# What the data set knows of each type it can read: (type, exact latent of a scene, its extractor).
# A type's subclasses match too (ShapesTextLatent is a TextLatent); other types, e.g. visual tokens or a
# plugin, have no ground truth here and are read by their own extractors.
KNOWN: tuple[tuple[type[LatentType], Callable[[Scene, Any], Any], Callable[[Any], Extractor]], ...] = (
    (TextLatent, lambda scene, _: describe(scene), lambda _: ShapesTextExtractor()),
    (BoxLatent, scene_boxes, box_extractor),
    (BlobLatent, scene_blobs, blob_extractor),
)


def _known(latent_type: LatentType) -> tuple[Callable[[Scene, Any], Any], Callable[[Any], Extractor]] | None:
    return next(((truth, reader) for cls, truth, reader in KNOWN if isinstance(latent_type, cls)), None)


def has_ground_truth(latent_type: LatentType) -> bool:
    return _known(latent_type) is not None


def ground_truth(scene: Scene, latent_type: LatentType) -> Any:
    """The exact latent of ``scene`` for ``latent_type``; ``KeyError`` for a type this data set cannot read."""
    known = _known(latent_type)
    if known is None:
        raise KeyError(f"shapes has no ground truth for the {latent_type.name!r} latent ({type(latent_type).__name__})")
    return known[0](scene, latent_type)


def shapes_extractor(latent_type: LatentType) -> Extractor | None:
    """The analytic extractor of ``latent_type`` on shapes images; ``None`` for a type it cannot read."""
    known = _known(latent_type)
    return None if known is None else known[1](latent_type)


__all__ = [
    "KNOWN",
    "ParsedObjectsExtractor",
    "ShapesBlobExtractor",
    "ShapesBoxExtractor",
    "ShapesTextExtractor",
    "ShapesTextLatent",
    "blob_extractor",
    "box_extractor",
    "ground_truth",
    "has_ground_truth",
    "scene_blobs",
    "scene_boxes",
    "shapes_extractor",
]
