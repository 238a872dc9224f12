"""The ``colour`` latent type: the image's palette, its k-means colour clusters named and with their shares.

Editable text (the camera-ready paper's colour-cluster latent, which needs no model)::

    white 60%, red 25%, blue 15%

Each entry is a colour word of :func:`kaleido.latents.foreground.colour_name` (black, blue, brown, cyan,
gray, green, orange, pink, purple, red, white, yellow) and its share of the image's pixels in whole
percent, a multiple of ``step``; the shares add up to 100. The background is part of the palette.

* **Extractor** (:class:`ColourExtractor`): batched k-means in CIELAB (D65) per image on the images'
  device: k-means++ seeding whose random numbers are fixed by ``seed`` (so an image's palette does not
  depend on its batch), ``iterations`` Lloyd steps, each centre named by ``colour_name``; clusters of one
  name merge, shares are rounded to ``step`` by largest remainder and colours rounded to 0 drop out.
* **Adherence**: ``palette``, 1 − the earth mover's distance (CIE76 ΔE between the names' representative
  colours, weighted by shares) over the largest ΔE between two names; ``colours``, the share mass on the
  same names; ``exact``.
* **Drawing**: a palette strip over the bottom eighth of the image.

See ``docs/latents.md`` ("colour") and ``docs/choices.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from kaleido.latents.base import Extractor, LatentParseError, LatentType
from kaleido.latents.drawing import PALETTE
from kaleido.latents.foreground import colour_name
from kaleido.latents.registry import register_latent_type

SEPARATOR = ", "
STEPS = (1, 2, 4, 5, 10, 20, 25, 50, 100)  # the steps that tile 100%: shares on them add up exactly
MAX_CLUSTERS = 16
STRIP = 1 / 8  # the palette strip's share of the image height
CUBE_LEVELS = 32  # the RGB grid whose points, named by colour_name, give each name its representative

# sRGB primaries and D65 white (IEC 61966-2-1); the white point is the matrix's row sums, so that RGB
# white maps to exactly L = 100, a = b = 0.
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(dim=1)
_DELTA = 6 / 29  # CIELAB's knee between the cube root and its linear toe


# -- CIELAB -----------------------------------------------------------------------------------------
def _full_precision(tensor: Tensor) -> torch.autocast:
    """Autocast off on the tensor's device: adherence may run inside a bf16 autocast region (sampling,
    a Lightning hook), where the matmuls below would return bfloat16 and move colours by ΔE ~1."""
    return torch.autocast(tensor.device.type, enabled=False)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in ``[0, 1]`` (``[..., 3]``) → CIELAB (D65): L in ``[0, 100]``, a and b about ``±100``."""
    with _full_precision(rgb):
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        xyz = linear @ _RGB_TO_XYZ.to(rgb).T / _WHITE.to(rgb)
        f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
        return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIELAB (D65) ``[..., 3]`` → sRGB in ``[0, 1]``, colours outside the sRGB gamut clipped."""
    with _full_precision(lab):
        fy = (lab[..., 0] + 16) / 116
        f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
        xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE.to(lab)
        linear = (xyz @ _XYZ_TO_RGB.to(lab).T).clamp(0, 1)
        return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=1e-12) ** (1 / 2.4) - 0.055).clamp(0, 1)


# -- the named colours --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def named_colours() -> dict[str, tuple[float, float, float]]:
    """Each word :func:`colour_name` gives → its representative, in CIELAB: the mean of the points of a
    ``CUBE_LEVELS``-level RGB grid that bear that name. Derived from ``colour_name``, so the words and
    their regions live in one place. Sorted by name."""
    levels = np.linspace(0.0, 255.0, CUBE_LEVELS)
    points = np.array(list(itertools.product(levels, levels, levels)))
    names = np.array([colour_name(p) for p in points])
    lab = rgb_to_lab(torch.from_numpy(points / 255.0)).numpy()
    return {str(n): tuple(float(v) for v in lab[names == n].mean(axis=0)) for n in sorted(set(names))}  # type: ignore[misc]


def colour_rgb(name: str) -> tuple[int, int, int]:
    """The representative of a colour word as an RGB triple in ``0..255`` (what the strip is painted with)."""
    rgb = lab_to_rgb(torch.tensor(named_colours()[name], dtype=torch.float64)) * 255
    return tuple(int(v) for v in rgb.round().tolist())  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _distances() -> tuple[tuple[str, ...], np.ndarray]:
    """The names and the CIE76 ΔE (Euclidean CIELAB distance) between their representatives."""
    table = named_colours()
    lab = np.array(list(table.values()))
    return tuple(table), np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=-1)


def max_distance() -> float:
    """The largest ΔE between two named colours: the earth mover's distance of the most different palettes."""
    return float(_distances()[1].max())


def palette_distance(first: Mapping[str, int], second: Mapping[str, int]) -> float:
    """Earth mover's distance, in ΔE, between two palettes (name → whole percent, each adding up to 100):
    the least mean ΔE over the pixels' share when one palette's mass is moved onto the other's.

    Exact: with integer supplies the transport problem has an integral optimum, so pairing 1% units
    one to one (Hungarian) solves it."""
    names, table = _distances()
    index = {n: i for i, n in enumerate(names)}
    units = [[index[n] for n, p in palette.items() for _ in range(p)] for palette in (first, second)]
    if len(units[0]) != 100 or len(units[1]) != 100:
        raise ValueError(f"palettes must add up to 100%, got {len(units[0])}% and {len(units[1])}%")
    cost = table[np.ix_(units[0], units[1])]
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum() / 100)


# -- k-means ------------------------------------------------------------------------------------------
def _distances_to(pixels: Tensor, centres: Tensor) -> Tensor:
    """ΔE from each pixel to each centre: ``[B, M, 3]``, ``[B, K, 3]`` → ``[B, M, K]``. From the differences,
    not ‖p‖² − 2p·c + ‖c‖², which cancels to ~1e-3 in float32 at L ~ 100; fused, ~5× the broadcast's speed."""
    return torch.cdist(pixels, centres, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest(pixels: Tensor, centres: Tensor) -> Tensor:
    """The index of each pixel's nearest centre: ``[B, M, 3]``, ``[B, K, 3]`` → ``[B, M]``."""
    return _distances_to(pixels, centres).argmin(-1)


def _counts(nearest: Tensor, clusters: int) -> Tensor:
    """How many pixels each centre holds: ``[B, M]`` indices → ``[B, K]`` (float)."""
    offsets = torch.arange(nearest.shape[0], device=nearest.device)[:, None] * clusters  # one bin range per image
    return torch.bincount((nearest + offsets).flatten(), minlength=nearest.shape[0] * clusters).view(-1, clusters).float()


def kmeans_palettes(images: Tensor, clusters: int, iterations: int, seed: int, max_pixels: int) -> tuple[Tensor, Tensor]:
    """K-means colour clusters of every image, batched on the images' device.

    Args:
        images: ``[B, 3, H, W]`` in ``[-1, 1]``.
        clusters: K.
        iterations: Lloyd steps after the seeding (a fixed number: no host sync to test convergence).
        seed: fixes k-means++'s K uniform numbers, shared by every image: the first centre is the pixel at
            that quantile of the raster order, each next one the pixel at its quantile of the cumulative
            squared distance to the centres so far (D² sampling), so an image's clusters never depend
            on the other images of its batch.
        max_pixels: images with more pixels are read on a regular grid of every s-th row and column.

    Returns:
        The centres ``[B, K, 3]`` in CIELAB and each cluster's share of the pixels read ``[B, K]`` (a
        centre that duplicates another, in an image of fewer than K colours, gets share 0).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    with _full_precision(images):  # under bf16 autocast the matmuls would move centres and shares
        stride = max(1, math.ceil(math.sqrt(images.shape[2] * images.shape[3] / max_pixels)))
        rgb = ((images[:, :, ::stride, ::stride].float() + 1) / 2).clamp(0, 1)
        pixels = rgb_to_lab(rgb.flatten(2).transpose(1, 2))  # [B, M, 3]
        batch, count = pixels.shape[:2]
        quantiles = torch.rand(clusters, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        first = torch.full((batch, 1), min(int(quantiles[0] * count), count - 1), device=pixels.device)
        centres = pixels.gather(1, first[..., None].expand(-1, -1, 3))
        for quantile in quantiles[1:]:
            cumulative = (_distances_to(pixels, centres).amin(-1) ** 2).cumsum(1)  # [B, M]: D² sampling
            chosen = torch.searchsorted(cumulative, quantile * cumulative[:, -1:], right=True).clamp(max=count - 1)
            centres = torch.cat([centres, pixels.gather(1, chosen[..., None].expand(-1, -1, 3))], dim=1)
        for _ in range(iterations):
            nearest = _nearest(pixels, centres)
            sums = pixels.new_zeros(batch, clusters, 3).scatter_add_(1, nearest[..., None].expand(-1, -1, 3), pixels)
            sizes = _counts(nearest, clusters)[..., None]
            centres = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)  # an empty cluster keeps its centre
        return centres, _counts(_nearest(pixels, centres), clusters) / count


def round_shares(shares: Mapping[str, float], step: int) -> dict[str, int]:
    """Shares (any non-negative weights) → whole percents on ``step`` adding up to 100, by largest
    remainder (ties: the larger share, then the name); colours rounded to 0 are left out."""
    if any(not share >= 0 for share in shares.values()):  # `not >=` also catches NaN
        raise ValueError(f"palette shares are non-negative numbers, got {dict(shares)}")
    total = sum(shares.values())
    if not total > 0:
        raise ValueError(f"a palette needs a positive share, got {dict(shares)}")
    units = 100 // step
    # Snapped to 1e-9 units: float noise (20 · 0.12 = 2.4000000000000004) must not decide a tie or a floor.
    exact = {name: round(units * share / total, 9) for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    remainders = {name: round(exact[name] - counts[name], 9) for name in exact}
    order = sorted(exact, key=lambda n: (-remainders[n], -exact[n], n))
    for name in order[: units - sum(counts.values())]:
        counts[name] += 1
    return {name: count * step for name, count in counts.items() if count}


# -- the latent type ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColourShare:
    """One entry of a colour latent: a colour word and its share of the image in whole percent."""

    name: str
    percent: int


@register_latent_type
class ColourLatent(LatentType):
    """The palette of an image, ``name percent%`` entries joined by ``", "``, largest share first.

    Args:
        clusters: K of the k-means, also the most entries a latent holds (1..16).
        step: shares are multiples of this many percent (a divisor of 100): 5 writes 20 levels, and a
            colour of a few percent (under 2.5% as a rule) rounds to 0 and drops out.
        iterations: Lloyd steps of the extractor's k-means.
        seed: fixes the extractor's k-means++ seeding.
        max_pixels: the extractor reads at most about this many pixels an image (a regular grid beyond).

    The extractor's settings belong to the type so that adherence reads samples exactly as the training
    latents were read.
    """

    name = "colour"

    def __init__(self, clusters: int = 4, step: int = 5, iterations: int = 10, seed: int = 0, max_pixels: int = 4096) -> None:
        for what, value, low, high in (("clusters", clusters, 1, MAX_CLUSTERS), ("iterations", iterations, 0, 1000),
                                       ("seed", seed, 0, 2**63 - 1), ("max_pixels", max_pixels, 1, 2**40)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"ColourLatent {what} must be an int in {low}..{high}, got {value!r}")
        if isinstance(step, bool) or step not in STEPS:
            raise ValueError(f"ColourLatent step must divide 100, one of {', '.join(map(str, STEPS))}; got {step!r}")
        self.clusters, self.step, self.iterations, self.seed, self.max_pixels = clusters, step, iterations, seed, max_pixels

    # -- tokenizer -------------------------------------------------------------------------------
    def canonical(self, latent: Sequence[Any] | Mapping[str, int]) -> list[ColourShare]:
        """Validated entries, largest share first (ties: by name). Takes :class:`ColourShare` objects,
        ``(name, percent)`` pairs or a ``{name: percent}`` mapping; raises ``ValueError`` naming the entry."""
        entries = list(latent.items()) if isinstance(latent, Mapping) else latent
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
            raise TypeError(f"a colour latent is a sequence of (name, percent) entries, got {type(latent).__name__}")
        if not 1 <= len(entries) <= self.clusters:
            raise ValueError(f"a colour latent holds 1..{self.clusters} colours, got {len(entries)}")
        seen: dict[str, int] = {}
        for number, entry in enumerate(entries):
            try:
                name, percent = (entry.name, entry.percent) if isinstance(entry, ColourShare) else entry
            except (TypeError, ValueError):
                raise TypeError(f"colour entry {number}: expected a ColourShare or a (name, percent) pair, got {entry!r}") from None
            if name not in named_colours():
                raise ValueError(f"colour entry {number}: expected a colour name ({', '.join(named_colours())}), got {name!r}")
            if name in seen:
                raise ValueError(f"colour entry {number}: {name!r} is named twice (each colour once)")
            if isinstance(percent, bool) or not isinstance(percent, (int, np.integer)) or not self._valid(int(percent)):
                raise ValueError(f"colour entry {number} ({name}): expected {self._share_words()}, got {percent!r}")
            seen[name] = int(percent)
        if sum(seen.values()) != 100:
            raise ValueError(f"the shares of a colour latent add up to 100%, got {sum(seen.values())}% ({seen})")
        return [ColourShare(n, p) for n, p in sorted(seen.items(), key=lambda item: (-item[1], item[0]))]

    def format(self, latent: Sequence[Any] | Mapping[str, int]) -> str:
        return SEPARATOR.join(f"{entry.name} {entry.percent}%" for entry in self.canonical(latent))

    def parse(self, text: str) -> list[ColourShare]:
        """``name percent%, ...`` → entries in the order written (``format`` puts the largest first).
        Whitespace around words, numbers, ``%`` and ``,`` is free; errors name the position."""
        if not isinstance(text, str):
            raise TypeError(f"a colour latent text is a str, got {type(text).__name__}")
        names = named_colours()
        accepted = f"a colour name ({', '.join(names)})"
        entries: dict[str, int] = {}
        where: dict[str, int] = {}
        pos = _skip_spaces(text, 0)
        while True:
            if len(entries) == self.clusters:
                raise self._error(text, pos, f"the end of the text (at most {self.clusters} colours)")
            start = pos
            while pos < len(text) and text[pos].isalpha():
                pos += 1
            word = text[start:pos]
            if word not in names:
                raise self._error(text, start, accepted, repr(word) if word else None)
            if word in entries:
                raise self._error(text, start, f"each colour once ({word} is already at position {where[word]})", repr(word))
            pos = _skip_spaces(text, pos)
            digits_at = pos
            pos = _skip_digits(text, pos)
            digits = text[digits_at:pos]
            if not digits:
                raise self._error(text, digits_at, f"the share of {word} in whole percent, e.g. '{word} {self.step * max(1, 50 // self.step)}%'")
            if pos < len(text) and text[pos] == "." and pos + 1 < len(text) and text[pos + 1].isdigit():
                decimals = _skip_digits(text, pos + 1)
                raise self._error(text, digits_at, f"a whole number of percent ({self._share_words()})", repr(text[digits_at:decimals]))
            if len(digits) > 3 or not self._valid(int(digits)):
                raise self._error(text, digits_at, self._share_words(), repr(digits))
            pos = _skip_spaces(text, pos)
            if pos >= len(text) or text[pos] != "%":
                raise self._error(text, pos, f"'%' after the share {digits}")
            entries[word], where[word] = int(digits), start
            end = pos + 1
            pos = _skip_spaces(text, end)
            if pos == len(text):
                break
            if text[pos] != ",":
                raise self._error(text, pos, "', ' between colours, or the end of the text")
            pos = _skip_spaces(text, pos + 1)
        if (total := sum(entries.values())) != 100:
            raise self._error(text, end, "shares that add up to 100%", f"{total}% in all")
        return [ColourShare(n, p) for n, p in entries.items()]

    def _valid(self, percent: int) -> bool:
        return self.step <= percent <= 100 and percent % self.step == 0

    def _share_words(self) -> str:
        return f"a share in {self.step}..100 percent, a multiple of {self.step}"

    def _error(self, text: str, position: int, expected: str, found: str | None = None) -> LatentParseError:
        return LatentParseError(self.name, text, position, expected, found)

    # -- extractor -------------------------------------------------------------------------------
    def build_extractor(self) -> ColourExtractor:
        return ColourExtractor(self.clusters, self.step, self.iterations, self.seed, self.max_pixels)

    # -- optional hooks ----------------------------------------------------------------------------
    def adherence(self, latent: Sequence[Any], found: Sequence[Any]) -> dict[str, float]:
        """``palette``: 1 − the earth mover's distance between the two palettes (ΔE between the names'
        representatives, weighted by share) over :func:`max_distance`, so 1 is the same palette and 0
        all of it moved across the widest gap of the table (green to purple); ``colours``: the share of the palette in
        the same colour words (1 − total variation: a near colour gets no credit); ``exact``: 1 when the
        palette read back is the latent's to the percent."""
        want = {e.name: e.percent for e in self.canonical(latent)}
        got = {e.name: e.percent for e in self.canonical(found)}
        distance = palette_distance(want, got)
        colours = sum(min(p, got.get(n, 0)) for n, p in want.items()) / 100
        return {"palette": max(0.0, 1.0 - distance / max_distance()), "colours": colours, "exact": float(want == got)}

    def draw(self, image: Image.Image, latent: Sequence[Any]) -> None:
        """A palette strip over the bottom eighth of the image (at least 2 pixels), one segment per colour
        as wide as its share, painted with the name's representative, under a line of the outline colour."""
        width, height = image.size
        top = height - max(2, round(height * STRIP))
        canvas = ImageDraw.Draw(image)
        left, percent = 0, 0
        for entry in self.canonical(latent):
            percent += entry.percent
            right = round(percent * width / 100)  # cumulative: the segments tile the width exactly
            if right > left:
                canvas.rectangle((left, max(top, 0), right - 1, height - 1), fill=colour_rgb(entry.name))
            left = right
        if top >= 1:
            canvas.line((0, top - 1, width - 1, top - 1), fill=PALETTE[0])


class ColourExtractor(Extractor):
    """Images → colour latents: k-means in CIELAB (:func:`kmeans_palettes`), each centre named by
    :func:`colour_name`, clusters of one name merged, shares rounded to ``step`` (:func:`round_shares`).

    Args:
        clusters / step / iterations / seed / max_pixels: those of :class:`ColourLatent`.
        device: where the k-means runs; ``None``: the images' own device (the GPU when they are there).
    """

    def __init__(
        self, clusters: int = 4, step: int = 5, iterations: int = 10, seed: int = 0, max_pixels: int = 4096, device: str | None = None
    ) -> None:
        self.latent = ColourLatent(clusters, step, iterations, seed, max_pixels)
        self.device = device

    def to(self, device: str) -> ColourExtractor:
        self.device = device
        return self

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[list[ColourShare]]:  # noqa: ARG002
        latent = self.latent
        images = images if self.device is None else images.to(self.device)
        centres, shares = kmeans_palettes(images, latent.clusters, latent.iterations, latent.seed, latent.max_pixels)
        rgb = (lab_to_rgb(centres) * 255).cpu().numpy()  # one transfer a batch; naming is per centre, on the host
        result = []
        for image_rgb, image_shares in zip(rgb, shares.cpu().numpy()):
            named: dict[str, float] = {}
            for colour, share in zip(image_rgb, image_shares):
                if share > 0:
                    name = colour_name(colour)
                    named[name] = named.get(name, 0.0) + float(share)
            result.append(latent.canonical(round_shares(named, latent.step)))
        return result


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _skip_digits(text: str, position: int) -> int:
    while position < len(text) and text[position] in "0123456789":  # ASCII only: int() of other digits would pass
        position += 1
    return position


__all__ = [
    "ColourExtractor",
    "ColourLatent",
    "ColourShare",
    "colour_rgb",
    "kmeans_palettes",
    "lab_to_rgb",
    "max_distance",
    "named_colours",
    "palette_distance",
    "rgb_to_lab",
    "round_shares",
]
