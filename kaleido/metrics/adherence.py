"""Latent adherence on ``shapes``: does a sample show what the latent that produced it says?

One measure per latent type (``docs/latents.md``, "Adherence"), all on the analytic parser's reading
of the sample (:func:`kaleido.data.shapes_parser.parse_image`) except the visual tokens:

* ``text``: the share of samples showing every described object with its shape and colour;
* ``box`` / ``blob``: the mean IoU of the latent's boxes / ellipses with those parsed from the sample,
  objects paired by the assignment of largest total IoU (Hungarian), an unpaired object scoring 0;
* ``visual_token``: the share of code positions where the VQ tokenizer, re-encoding the sample,
  gives back the code that produced it.

:func:`latent_adherence` picks the measure of each type of a (possibly combined) latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from kaleido.data.shapes_parser import ParsedObject, box_iou, objects_match, parse_image
from kaleido.data.shapes_text import parse_description
from kaleido.latents.base import LatentType
from kaleido.latents.blob import BlobLatent
from kaleido.latents.box import BoxLatent
from kaleido.latents.visual_token import VisualTokenExtractor

Parsed = Sequence[Sequence[ParsedObject]]  # the parser's objects of each sample
ELLIPSE_GRID = 128  # samples per side of the window two ellipses are rasterised on: IoU to ~1%


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


@dataclass
class GeometryAdherence:
    """Box or blob adherence, means over ``count`` samples (a latent that does not parse scores 0).

    ``iou``: per sample, the mean over the latent's objects of the IoU with the parsed object each is
    paired with (unpaired: 0); extra parsed objects are ignored, as in text adherence. ``iou_exact``:
    the same sum of IoUs over ``max(latent, parsed)`` objects, so extra objects in the image count as
    0 too. ``phrases``: the share of the latent's objects paired (IoU > 0) with a parsed object of the
    same ``"<colour> <shape>"``. A latent without objects scores 1 in each only if the image shows no
    object either, else 0. ``empty``: the share of such latents (shapes scenes always have an object).
    ``unparsed``: latent texts that do not parse, or a combined latent without this type's line."""

    iou: float
    iou_exact: float
    phrases: float
    empty: float
    unparsed: float
    count: int


@dataclass
class TokenAgreement:
    """Visual-token adherence over ``count`` samples (a latent that does not parse scores 0).
    ``agreement``: the mean share of positions where the codes re-extracted from the sample equal the
    latent's; ``exact``: the share of samples with every code equal; ``unparsed``: latent texts that
    do not parse. Two reference points, over the latents that parse: ``chance``, the agreement of each
    sample with the next sample's latent (an unrelated one); ``ceiling``, the agreement the VQ itself
    reaches when it re-encodes its own decoding of each latent (what a perfect sample would score)."""

    agreement: float
    exact: float
    unparsed: float
    chance: float
    ceiling: float
    count: int


def _check_lengths(images: Tensor, latent_texts: Sequence[Any]) -> None:
    if len(images) != len(latent_texts):
        raise ValueError(f"{len(images)} images but {len(latent_texts)} latent texts")


def _read(latent_texts: Sequence[str | None], parse: Callable[[str], Any]) -> list[Any]:
    """Each text's latent object, ``None`` where it does not parse (or is missing: ``None``)."""
    objects = []
    for text in latent_texts:
        try:
            objects.append(None if text is None else parse(text))
        except ValueError:  # LatentParseError, ShapesTextError
            objects.append(None)
    return objects


# -- text ---------------------------------------------------------------------------------------------
def text_adherence(images: Tensor, latent_texts: Sequence[str | None], parsed: Parsed | None = None) -> Adherence:
    """``images`` [N, 3, H, W] in [-1, 1] against the text latents that produced them."""
    _check_lengths(images, latent_texts)
    hits = exact = 0
    descriptions = _read(latent_texts, parse_description)
    for index, (image, description) in enumerate(zip(images, descriptions)):
        if description is None:
            continue
        found = parsed[index] if parsed is not None else parse_image(image)
        hits += objects_match(description, found)
        exact += objects_match(description, found, allow_extra=False)
    n = max(1, len(latent_texts))
    unparsed = sum(d is None for d in descriptions)
    return Adherence(objects=hits / n, exact=exact / n, unparsed=unparsed / n, count=len(latent_texts))


# -- boxes and blobs ----------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Pairing:
    """One sample's pairing: the IoU of each latent object with its partner (0: none), how many of the
    paired objects have the parsed object's phrase, and how many objects were parsed. A latent without
    objects scores 1 only when the image shows none either (an empty latent must not score by default)."""

    ious: list[float]
    phrase_hits: int
    parsed: int

    def _empty(self) -> float:
        return 1.0 if self.parsed == 0 else 0.0

    def iou(self) -> float:
        return sum(self.ious) / len(self.ious) if self.ious else self._empty()

    def iou_exact(self) -> float:
        return sum(self.ious) / max(len(self.ious), self.parsed) if self.ious else self._empty()

    def phrases(self) -> float:
        return self.phrase_hits / len(self.ious) if self.ious else self._empty()


def pair_objects(
    latent: Sequence[tuple[str, Sequence[float]]],
    parsed: Sequence[tuple[str, Sequence[float]]],
    iou: Callable[[Sequence[float], Sequence[float]], float],
) -> Pairing:
    """Pair ``(phrase, geometry)`` objects of a latent with parsed ones so that the total IoU is
    largest (Hungarian; phrases play no part, so geometry and labels are measured apart)."""
    ious = [0.0] * len(latent)
    hits = 0
    if latent and parsed:
        table = np.array([[iou(g, h) for _, h in parsed] for _, g in latent])
        for i, j in zip(*linear_sum_assignment(table, maximize=True)):
            ious[i] = float(table[i, j])
            hits += bool(table[i, j] > 0 and latent[i][0] == parsed[j][0])
    return Pairing(ious, hits, len(parsed))


def _geometry_adherence(
    images: Tensor,
    latent_texts: Sequence[str | None],
    latent_type: BoxLatent | BlobLatent,
    parsed: Parsed | None,
    geometry: Callable[[ParsedObject], Sequence[float]],
    iou: Callable[[Sequence[float], Sequence[float]], float],
) -> GeometryAdherence:
    _check_lengths(images, latent_texts)
    latents = _read(latent_texts, latent_type.parse)
    pairings: list[Pairing] = []
    for index, (image, latent) in enumerate(zip(images, latents)):
        if latent is None:
            continue
        found = parsed[index] if parsed is not None else parse_image(image)
        mine = [(obj.phrase, latent_type.to_normalised(obj)) for obj in latent]
        pairings.append(pair_objects(mine, [(f"{p.color} {p.shape}", geometry(p)) for p in found], iou))
    n = max(1, len(latents))
    return GeometryAdherence(
        iou=sum(p.iou() for p in pairings) / n,
        iou_exact=sum(p.iou_exact() for p in pairings) / n,
        phrases=sum(p.phrases() for p in pairings) / n,
        empty=sum(not p.ious for p in pairings) / n,
        unparsed=(len(latents) - len(pairings)) / n,
        count=len(latents),
    )


def box_adherence(
    images: Tensor,
    latent_texts: Sequence[str | None],
    latent_type: BoxLatent | None = None,
    parsed: Parsed | None = None,
) -> GeometryAdherence:
    """Mean IoU of the boxes of each latent text with the boxes parsed from its image."""
    return _geometry_adherence(images, latent_texts, latent_type or BoxLatent(), parsed, lambda p: p.box, box_iou)


def blob_adherence(
    images: Tensor,
    latent_texts: Sequence[str | None],
    latent_type: BlobLatent | None = None,
    parsed: Parsed | None = None,
) -> GeometryAdherence:
    """Mean IoU of the ellipses of each latent text with the (second-moment) ellipses parsed from its image."""
    return _geometry_adherence(
        images, latent_texts, latent_type or BlobLatent(), parsed, lambda p: p.ellipse, ellipse_iou
    )


# -- visual tokens ------------------------------------------------------------------------------------
def _agreement(mine: Sequence[int] | None, found: Sequence[int]) -> float:
    return float(np.mean(np.equal(mine, found))) if mine is not None and len(mine) == len(found) else 0.0


def token_agreement(
    images: Tensor,
    latent_texts: Sequence[str | None],
    latent_type: LatentType,
    vq: VisualTokenExtractor,
    batch_size: int = 256,
) -> TokenAgreement:
    """Re-extract the codes of each image with ``vq`` (a visual-token extractor) and compare them,
    position by position, with the codes of its latent text (``latent_type.parse``); also the chance
    and ceiling references of :class:`TokenAgreement`."""
    _check_lengths(images, latent_texts)
    codes = _read(latent_texts, latent_type.parse)

    def encode(pictures: Tensor) -> list[Sequence[int]]:
        found: list[Sequence[int]] = []
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start : start + batch_size]
            found += vq(chunk, [""] * len(chunk))  # the condition plays no part in re-encoding
        return found

    again = encode(images)
    shares = [_agreement(mine, found) for mine, found in zip(codes, again)]
    n = max(1, len(shares))
    pairs = [(c, found) for c, found in zip(codes, again) if c is not None and len(c) == len(found)]
    valid = [c for c, _ in pairs]
    # Chance: each sample against the next sample's latent (needs two); ceiling: the VQ's own round trip.
    neighbours = zip(valid[1:] + valid[:1], (found for _, found in pairs))
    chance = [_agreement(other, found) for other, found in neighbours] if len(valid) > 1 else []
    ceiling: list[float] = []
    for start in range(0, len(valid), batch_size):
        part = valid[start : start + batch_size]
        ceiling += [_agreement(c, found) for c, found in zip(part, encode(vq.decode(part)))]
    return TokenAgreement(
        agreement=sum(shares) / n,
        exact=sum(share == 1.0 for share in shares) / n,
        unparsed=sum(c is None for c in codes) / n,
        chance=float(np.mean(chance)) if chance else math.nan,
        ceiling=float(np.mean(ceiling)) if ceiling else math.nan,
        count=len(shares),
    )


# -- any latent, combined or not ----------------------------------------------------------------------
MEASURED = ("text", "box", "blob", "visual_token")
Score = Adherence | GeometryAdherence | TokenAgreement


def latent_parts(text: str, names: Sequence[str]) -> dict[str, str | None]:
    """The parts of a sampled latent text by type name, leniently (each part is checked by its own
    measure): one type's text is the whole text; several are lines ``name: text``
    (``KaleidoTokenizer.join_latent_texts``). A missing part is ``None``, which scores as unparsed."""
    if len(names) == 1:
        return {names[0]: text}
    parts: dict[str, str | None] = dict.fromkeys(names)
    for line in text.splitlines():
        name, sep, body = line.partition(":")
        if sep and name.strip() in parts and parts[name.strip()] is None:
            parts[name.strip()] = body.strip()
    return parts


def latent_adherence(
    images: Tensor,
    latent_texts: Sequence[str],
    latent_types: Sequence[LatentType],
    vq: VisualTokenExtractor | None = None,
) -> dict[str, Score]:
    """Each latent type's measure, by type name, for samples drawn from (possibly combined) latents.

    ``vq``: the visual-token extractor that re-encodes the samples; default: the type's own
    (``VisualTokenLatent(checkpoint=...).build_extractor()``, on the CPU).
    """
    names = [t.name for t in latent_types]
    unknown = [n for n in names if n not in MEASURED]
    if unknown:
        raise ValueError(f"no adherence measure for latent types {unknown}; measured are {list(MEASURED)}")
    _check_lengths(images, latent_texts)
    parts = [latent_parts(text, names) for text in latent_texts]
    parsed = [parse_image(image) for image in images] if {"text", "box", "blob"} & set(names) else None  # once for all
    scores: dict[str, Score] = {}
    for latent_type in latent_types:
        texts = [p[latent_type.name] for p in parts]
        if latent_type.name == "text":
            scores["text"] = text_adherence(images, texts, parsed)
        elif latent_type.name == "box":
            scores["box"] = box_adherence(images, texts, latent_type, parsed)  # type: ignore[arg-type]
        elif latent_type.name == "blob":
            scores["blob"] = blob_adherence(images, texts, latent_type, parsed)  # type: ignore[arg-type]
        else:
            extractor = vq if vq is not None else latent_type.build_extractor()
            scores["visual_token"] = token_agreement(images, texts, latent_type, extractor)
    return scores


__all__ = [
    "MEASURED",
    "Adherence",
    "GeometryAdherence",
    "Pairing",
    "Score",
    "TokenAgreement",
    "blob_adherence",
    "box_adherence",
    "ellipse_iou",
    "latent_adherence",
    "pair_objects",
    "latent_parts",
    "text_adherence",
    "token_agreement",
]
