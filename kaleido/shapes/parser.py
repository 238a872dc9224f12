"""Analytic parser of ``shapes`` images: pixels -> coloured objects.

The parser needs no training, so it can grade samples of a diffusion model: does the
image hold the objects (shape and colour) that its latent text asked for?

How it reads an image:

1. the background is the median colour of the one-pixel border ring (objects keep
   clear of the border);
2. every pixel is written as ``background + alpha * (colour - background)`` for each
   palette colour; a pixel takes the colour whose line passes closest to it, and is
   kept if that distance is ``<= tolerance`` and ``alpha >= 0.5`` -- the same 50%
   coverage rule as :func:`kaleido.shapes.scenes.render_masks`, and robust to
   antialiased edges;
3. connected components per colour (``scipy.ndimage.label``), small ones dropped;
4. each component is weighted by its soft coverage ``alpha`` (edge pixels included),
   which gives precise moments even at 32 x 32.  The shape comes from rotation-
   invariant angular harmonics of the coverage around the centroid: a triangle has
   3-fold symmetry (a strong 3rd harmonic), a square 4-fold (a strong 4th), a
   circle neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from kaleido.latents.box import box_iou
from kaleido.shapes.scenes import COLORS, ShapeObject

# Harmonic strengths |M_k| / M_0 (weights: coverage * radius^2) of the ideal shapes, the
# medians over clean renders (64 x 64; at 32 x 32 they are 2-8% lower).  A circle scores
# <= 0.03 on both; a component is called by the harmonic that is strongest relative to
# its ideal value.
_TRIANGLE_H3 = 0.54
_SQUARE_H4 = 0.285
# Below this fraction of the ideal strength the symmetry is not there: a circle.  Low,
# because blur (model samples) rounds corners and weakens the harmonics.
_HARMONIC_FLOOR = 0.3


@dataclass(frozen=True)
class ParsedObject:
    """An object read from an image.

    ``box`` is ``(x1, y1, x2, y2)`` and ``ellipse`` ``(cx, cy, a, b, theta)`` in the
    conventions of :class:`kaleido.shapes.scenes.ShapeObject` (normalised, y down, theta
    in degrees in ``[0, 180)``); ``area`` is the soft coverage as a fraction of the
    image; ``mask`` the component's pixels (coverage >= 50%).
    """

    shape: str
    color: str
    box: tuple[float, float, float, float]
    ellipse: tuple[float, float, float, float, float]
    area: float
    mask: np.ndarray = field(compare=False, repr=False)


def to_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``float32 [H, W, 3]`` in ``[0, 1]`` from uint8 HWC, or float CHW/HWC in ``[-1, 1]``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected one image [H, W, 3] or [3, H, W], got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip((image.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def estimate_background(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the border ring (robust to an object that grazes the edge)."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return np.median(ring, axis=0)


def _color_lines(rgb: np.ndarray, background: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per colour ``k``: coverage ``alpha[k]`` along the line background -> colour, and the distance to it."""
    offset = rgb - background  # [H, W, 3]
    direction = palette - background  # [K, 3]
    length2 = np.maximum((direction**2).sum(1), 1e-6)[:, None, None]
    alpha = np.einsum("hwc,kc->khw", offset, direction) / length2
    # Pythagoras: squared distance to the line = |offset|^2 - (projection length)^2.
    residual2 = (offset**2).sum(-1)[None] - alpha**2 * length2
    return alpha, np.sqrt(np.maximum(residual2, 0.0))


def _harmonics(weights: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[float, float]:
    """Strength of the 3rd and 4th angular harmonics of the coverage around its centroid."""
    rho2 = dx * dx + dy * dy
    phase = np.arctan2(dy, dx)
    w = weights * rho2  # the rim, where the shapes differ, counts most
    total = max(float(w.sum()), 1e-9)
    h3 = abs(complex((w * np.cos(3 * phase)).sum(), (w * np.sin(3 * phase)).sum())) / total
    h4 = abs(complex((w * np.cos(4 * phase)).sum(), (w * np.sin(4 * phase)).sum())) / total
    return h3, h4


def classify_shape(h3: float, h4: float) -> str:
    """Shape from harmonic strengths (see :func:`_harmonics`)."""
    s3, s4 = h3 / _TRIANGLE_H3, h4 / _SQUARE_H4
    if max(s3, s4) < _HARMONIC_FLOOR:
        return "circle"
    return "triangle" if s3 >= s4 else "square"


def _moments_ellipse(
    weights: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]
) -> tuple[tuple[float, float, float, float, float], np.ndarray, np.ndarray]:
    """The second-moment ellipse (normalised) of a coverage window whose top-left pixel is
    ``origin`` (row, col) in an image of ``shape``; and pixel offsets from the centroid."""
    height, width = shape
    ys, xs = np.mgrid[0:weights.shape[0], 0:weights.shape[1]] + 0.5  # pixel centres
    ys, xs = ys + origin[0], xs + origin[1]
    total = weights.sum()
    cx, cy = (weights * xs).sum() / total, (weights * ys).sum() / total
    dx, dy = xs - cx, ys - cy
    # + 1/12 px^2: the spread of coverage inside each pixel, lost by sampling pixel centres.
    cov = np.array([[(weights * dx * dx).sum(), (weights * dx * dy).sum()],
                    [(weights * dx * dy).sum(), (weights * dy * dy).sum()]]) / total + np.eye(2) / 12.0
    scale = np.array([1.0 / width, 1.0 / height])
    eigval, eigvec = np.linalg.eigh(cov * np.outer(scale, scale))  # ascending
    a, b = (2.0 * math.sqrt(max(v, 0.0)) for v in eigval[::-1])
    theta = math.degrees(math.atan2(eigvec[1, 1], eigvec[0, 1])) % 180.0
    return (float(cx / width), float(cy / height), a, b, theta), dx, dy


def _components(assigned: np.ndarray, best: np.ndarray, count: int, min_pixels: float, opening: bool) -> list[tuple[int, np.ndarray]]:
    """Connected components ``(colour index, mask)`` of each colour's pixels, small ones dropped."""
    components = []
    for k in range(count):
        mask = assigned & (best == k)
        if opening:
            mask = ndimage.binary_opening(mask)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        for label in range(1, n + 1):
            component = labels == label
            if component.sum() >= min_pixels:
                components.append((k, component))
    return components


def parse_image(
    image: np.ndarray | torch.Tensor,
    *,
    min_area: float = 0.005,
    tolerance: float = 0.2,
    background: Sequence[float] | None = None,
    opening: bool = False,
    colors: Sequence[str] | None = None,
) -> list[ParsedObject]:
    """Read the objects of one image, largest first.

    Args:
        image: uint8 ``[H, W, 3]``, or float (tensor or array) ``[3, H, W]``/``[H, W, 3]``
            in ``[-1, 1]``, e.g. a model sample.
        min_area: components smaller than this fraction of the image are noise.
        tolerance: largest distance (RGB in ``[0, 1]``) of a pixel from its colour line.
        background: RGB in ``[0, 1]``; estimated from the border when ``None``.
        opening: remove one-pixel speckle and bridges (morphological opening) first.
        colors: palette names to look for (default: all of ``COLORS``).
    """
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    bg = estimate_background(rgb) if background is None else np.asarray(background, dtype=np.float32)
    names = list(colors) if colors is not None else list(COLORS)
    unknown = [n for n in names if n not in COLORS]
    if unknown:
        raise ValueError(f"unknown colors {unknown}; accepted names are: {', '.join(COLORS)}")
    palette = np.array([COLORS[n] for n in names], dtype=np.float32) / 255.0
    alpha, residual = _color_lines(rgb, bg, palette)

    # Each pixel goes to the nearest colour line (pointing away from the background), and
    # is kept if at least half covered.  Choosing the line before thresholding alpha
    # matters: a yellow edge pixel lies at alpha ~0.4 on the yellow line but ~0.5 on
    # the orange one.
    distinct = ((palette - bg) ** 2).sum(1) > 0.01  # a colour too close to the background is unreadable
    candidate = (alpha > 0.0) & distinct[:, None, None]
    score = np.where(candidate, residual, np.inf)
    best = score.argmin(axis=0)
    best_alpha = np.take_along_axis(alpha, best[None], axis=0)[0]
    assigned = (score.min(axis=0) <= tolerance) & (best_alpha >= 0.5)

    components = _components(assigned, best, len(names), min_area * height * width, opening)
    taken = np.zeros((height, width), dtype=bool)
    for _, component in components:
        taken |= component
    objects = [_read_component(names[k], component, alpha[k], residual[k] <= tolerance, taken) for k, component in components]
    return sorted(objects, key=lambda o: -o.area)


def _read_component(color: str, component: np.ndarray, alpha: np.ndarray, on_line: np.ndarray, taken: np.ndarray) -> ParsedObject:
    """Shape, box, ellipse and area of one component, from its soft coverage."""
    height, width = component.shape
    # The soft edge: neighbours not claimed by another object, weighted by their coverage.
    rim = ndimage.binary_dilation(component, structure=np.ones((3, 3))) & ~(taken & ~component)
    weights = np.where(rim & on_line, np.clip(alpha, 0.0, 1.0), 0.0)
    weights[component] = np.clip(alpha[component], 0.0, 1.0)
    window = ndimage.find_objects(rim.astype(np.int8))[0]  # moments only where the object is: fast
    ellipse, dx, dy = _moments_ellipse(weights[window], (window[0].start, window[1].start), (height, width))
    rows, cols = np.nonzero(component)
    box = (cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height)
    return ParsedObject(
        shape=classify_shape(*_harmonics(weights[window], dx, dy)),
        color=color,
        box=tuple(float(v) for v in box),
        ellipse=ellipse,
        area=float(weights.sum()) / (height * width),
        mask=component,
    )


def _objects_of(expected: object) -> Sequence:
    """Objects of a ``Description``/``Scene``, or the sequence itself."""
    return getattr(expected, "objects", expected)


def match_objects(expected: object, parsed: Sequence[ParsedObject]) -> list[int | None]:
    """For each expected object, the index of a distinct parsed object of the same shape and colour.

    ``expected`` is a ``Description``, a ``Scene`` or a sequence of objects with
    ``shape`` and ``color`` (``DescribedObject``, ``ShapeObject``).  Matching on equal
    labels only, so a greedy assignment (largest parsed object first) is a maximum
    matching.  ``None`` where no parsed object is left.
    """
    free = list(range(len(parsed)))
    result: list[int | None] = []
    for obj in _objects_of(expected):
        j = next((j for j in free if parsed[j].shape == obj.shape and parsed[j].color == obj.color), None)
        if j is not None:
            free.remove(j)
        result.append(j)
    return result


def objects_match(expected: object, parsed: Sequence[ParsedObject], *, allow_extra: bool = True) -> bool:
    """True iff every expected object has its own parsed object of the same shape and colour.

    With ``allow_extra=False`` the image may hold no further objects.  This is the
    "latent adherence" test: does a sample show what its latent text describes?
    """
    matches = match_objects(expected, parsed)
    if any(j is None for j in matches):
        return False
    return allow_extra or len(parsed) == len(matches)


def match_ground_truth(
    objects: Sequence[ShapeObject], parsed: Sequence[ParsedObject], *, iou_threshold: float = 0.5
) -> list[int | None]:
    """For each ground-truth object, a distinct parsed object of the same shape and colour whose
    box overlaps its box by ``IoU >= iou_threshold`` (pairs taken by decreasing IoU); else ``None``."""
    pairs = sorted(
        ((box_iou(o.box, p.box), i, j) for i, o in enumerate(objects) for j, p in enumerate(parsed)
         if o.shape == p.shape and o.color == p.color),
        reverse=True,
    )
    result: list[int | None] = [None] * len(objects)
    used: set[int] = set()
    for iou, i, j in pairs:
        if iou >= iou_threshold and result[i] is None and j not in used:
            result[i] = j
            used.add(j)
    return result
