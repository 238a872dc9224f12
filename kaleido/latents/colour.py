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

The colour-space maths (CIELAB, the named colours, ΔE, k-means) is :mod:`kaleido.latents.colour_space`.
See ``docs/latents.md`` ("colour") and ``docs/choices.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from kaleido.latents.base import Extractor, LatentParseError, LatentType
from kaleido.latents.colour_space import CUBE_LEVELS as CUBE_LEVELS
from kaleido.latents.colour_space import (
    colour_rgb,
    kmeans_palettes,
    lab_to_rgb,
    max_distance,
    named_colours,
    palette_distance,
    rgb_to_lab,
)
from kaleido.latents.drawing import PALETTE
from kaleido.latents.foreground import colour_name
from kaleido.latents.registry import register_latent_type

SEPARATOR = ", "
STEPS = (1, 2, 4, 5, 10, 20, 25, 50, 100)  # the steps that tile 100%: shares on them add up exactly
MAX_CLUSTERS = 16
STRIP = 1 / 8  # the palette strip's share of the image height


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
