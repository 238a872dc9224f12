"""What the ``box`` and ``blob`` latent types share.

Both write a *grounded caption*: objects ``phrase (n1, n2, ...)`` joined by ``"; "``, each number a
non-negative integer written as plain digits. This module holds

* the grammar of that text (:func:`scan_grounded` / :func:`format_grounded`), with errors that name the
  character position;
* phrase rules (:func:`phrase_problem`, :func:`clean_phrase`) and quantisation to the integer grid;
* :class:`GroundedLatent`, the shared latent-type base, with the optional GLIGEN-style geometry
  features of its encoder (``fourier_frequencies``), and its adherence (objects paired by largest
  total overlap, :mod:`kaleido.latents.pairing`) and drawing hooks;

Masks, their ellipses and image helpers for extractors are in :mod:`kaleido.latents.masks`.

Geometry is in normalised image coordinates (``x`` right, ``y`` *down*, both in ``[0, 1]``; pixel
``(row, col)`` of an ``H x W`` image covers ``[col/W, (col+1)/W) x [row/H, (row+1)/H)``), the
convention of :mod:`kaleido.shapes.scenes`; a latent type multiplies by its ``grid`` and rounds.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from torch import nn

from kaleido.latents.base import (
    FourierGeometryEncoder,
    GeometrySpan,
    LatentParseError,
    LatentType,
    check_fourier_frequencies,
)
from kaleido.latents.drawing import object_color
from kaleido.latents.pairing import Shape, pair_objects
from kaleido.latents.text import RESERVED

SEPARATOR = "; "
STRUCTURAL = "();"  # characters that delimit objects, so they cannot appear in a phrase
MAX_DIGITS = 12


# -- phrases ------------------------------------------------------------------------------------
def phrase_problem(phrase: str) -> tuple[int, str, str] | None:
    """Why ``phrase`` is not a valid (canonical) phrase: ``(offset, expected, found)``, else ``None``.

    A phrase is non-empty, has no leading or trailing space, holds only printable characters (so
    the only whitespace is ``' '``: the joined editable text is line-based), none of ``( ) ;`` and
    no reserved special-token text (the shared tokenizer would read it as a special token).
    """
    if not isinstance(phrase, str):
        return 0, "a phrase (str)", type(phrase).__name__
    if not phrase.strip():
        return 0, "a non-empty phrase (e.g. 'red circle')", repr(phrase)
    if phrase != phrase.strip():
        at = 0 if phrase[0].isspace() else len(phrase.rstrip())
        return at, "a phrase without leading or trailing spaces", repr(phrase)
    for offset, char in enumerate(phrase):
        if char in STRUCTURAL:
            return offset, "a phrase without '(', ')' or ';'", repr(char)
        if not char.isprintable():
            return offset, "printable characters in the phrase (no tabs or line breaks)", repr(char)
    for token in RESERVED:
        if (at := phrase.find(token)) >= 0:
            return at, "plain text (special tokens are reserved)", repr(token)
    return None


def clean_phrase(label: str) -> str | None:
    """A valid phrase made from a model's class label (structural and control characters become
    spaces, runs of spaces collapse); ``None`` when nothing valid is left."""
    text = "".join(" " if (c in STRUCTURAL or not c.isprintable()) else c for c in str(label))
    phrase = " ".join(text.split())
    return phrase if phrase and phrase_problem(phrase) is None else None


# -- numbers ------------------------------------------------------------------------------------
def grid_int(value: object, what: str) -> int:
    """A number in grid units → int, rounding half up (``format`` accepts reals, ``parse`` gives ints)."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return int(value) if isinstance(value, (int, np.integer)) else math.floor(number + 0.5)


def to_grid(value: float, grid: int) -> int:
    """A normalised coordinate or length in ``[0, 1]`` → the nearest grid integer, clamped to ``0..grid``."""
    return min(max(math.floor(float(value) * grid + 0.5), 0), grid)


# -- the grounded-caption grammar ---------------------------------------------------------------
@dataclass(frozen=True)
class ScannedObject:
    """One object as read from the text, with where its parts start (for error messages) and where
    it ends (just after its ``)``)."""

    phrase: str
    values: tuple[int, ...]
    start: int
    value_starts: tuple[int, ...]
    end: int


# A check of one object's numbers: ``None`` if fine, else (index of the bad number, what was expected).
ValueCheck = Callable[[tuple[int, ...]], "tuple[int, str] | None"]


class _Scanner:
    """A cursor over the text that raises :class:`LatentParseError` at its position."""

    def __init__(self, latent_type: str, text: str) -> None:
        self.latent_type, self.text, self.pos = latent_type, text, 0

    def fail(self, expected: str, position: int | None = None, found: str | None = None) -> LatentParseError:
        return LatentParseError(self.latent_type, self.text, self.pos if position is None else position, expected, found)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, expected: str) -> None:
        if self.peek() != char:
            raise self.fail(expected)
        self.pos += 1

    def integer(self, name: str) -> tuple[int, int]:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self.pos += 1
        if self.pos == start:
            raise self.fail(f"an integer {name} (digits 0-9)")
        if self.pos - start > MAX_DIGITS:  # no grid is that fine; also keeps int() away from huge strings
            raise self.fail(f"an integer {name} of at most {MAX_DIGITS} digits", start, repr(self.text[start : self.pos]))
        if self.peek() == ".":
            raise self.fail(f"a whole number for {name} (coordinates are integer grid units)", start, repr(self.text[start : self.pos + 4]))
        return int(self.text[start : self.pos]), start

    def phrase(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in STRUCTURAL:
            self.pos += 1
        raw = self.text[start : self.pos]
        phrase = raw.strip()
        if not phrase:
            raise self.fail("a phrase (e.g. 'red circle')", start)
        if self.peek() != "(":
            raise self.fail("'(' after the phrase")
        lead = start + len(raw) - len(raw.lstrip())
        if (problem := phrase_problem(phrase)) is not None:
            offset, expected, found = problem
            raise self.fail(expected, lead + offset, found)
        return phrase


def scan_grounded(
    text: str, latent_type: str, names: Sequence[str], max_objects: int, check: ValueCheck
) -> list[ScannedObject]:
    """Read ``phrase (n1, ..., nk); ...`` with ``k = len(names)``; whitespace around tokens is free.

    Empty (or all-space) text is no objects. ``check`` validates each object's numbers (ranges,
    order); the first problem in reading order raises, at the position of the offending number.
    """
    if not isinstance(text, str):
        raise TypeError(f"a {latent_type} latent text is a str, got {type(text).__name__}")
    scan = _Scanner(latent_type, text)
    objects: list[ScannedObject] = []
    scan.skip_space()
    if scan.at_end():
        return objects
    while True:
        if len(objects) == max_objects:
            raise scan.fail(f"the end of the text (at most {max_objects} objects)")
        start = scan.pos
        phrase = scan.phrase()
        scan.pos += 1  # the '('
        values: list[int] = []
        starts: list[int] = []
        for index, name in enumerate(names):
            scan.skip_space()
            if index:
                scan.expect(",", f"',' before {name} ({len(names)} numbers: {', '.join(names)})")
                scan.skip_space()
            value, at = scan.integer(name)
            values.append(value)
            starts.append(at)
        scan.skip_space()
        scan.expect(")", f"')' after the {len(names)} numbers {', '.join(names)}")
        if (problem := check(tuple(values))) is not None:
            index, expected = problem
            digits = re.match(r"[0-9]*", text[starts[index] :]).group()
            raise scan.fail(expected, starts[index], repr(digits))
        objects.append(ScannedObject(phrase, tuple(values), start, tuple(starts), scan.pos))
        scan.skip_space()
        if scan.at_end():
            return objects
        scan.expect(";", "';' between objects, or the end of the text")
        scan.skip_space()


def format_grounded(objects: Sequence[tuple[str, Sequence[int]]]) -> str:
    """The canonical text: ``phrase (n1, n2, ...)`` joined by ``"; "``; no objects is ``""``."""
    return SEPARATOR.join(f"{phrase} ({', '.join(str(v) for v in values)})" for phrase, values in objects)


def range_problem(values: Sequence[int], names: Sequence[str], upper: Sequence[int]) -> tuple[int, str] | None:
    """The first value outside ``0..upper`` (inclusive), as a :data:`ValueCheck` result."""
    for index, (value, name, top) in enumerate(zip(values, names, upper)):
        if not 0 <= value <= top:
            return index, f"{name} in 0..{top}"
    return None


# -- the shared latent-type base -----------------------------------------------------------------
Order = Literal["given", "raster"]


class GroundedLatent(LatentType):
    """A grounded caption: objects ``phrase (n1, ..., nk)`` with integer geometry on a ``grid``.

    Subclasses name their numbers (``values``) and their geometry vector (``geometry_names``), build
    and read their object class, check one object's numbers, give the raster sort key and the
    normalised geometry vector of an object. Latent objects hold integers; :meth:`format` also accepts
    reals in grid units and rounds them (half up), so ``parse(format(x)) == canonical(x)``.

    Args:
        grid: coordinates are integers in ``0..grid`` (the paper: 1000).
        max_objects: most objects in one latent; longer texts are a parse error.
        order: ``"raster"`` sorts objects by :meth:`sort_key` (reading order); ``"given"`` keeps the
            order they come in (e.g. an extractor's largest-first or score order).
        fourier_frequencies: ``K > 0`` adds GLIGEN-style Fourier features (``K`` octaves) of each
            object's normalised geometry to the hidden states of the object's tokens
            (:class:`~kaleido.latents.base.FourierGeometryEncoder`); 0 (default, the paper): the
            hidden states alone.
    """

    values: ClassVar[tuple[str, ...]]
    geometry_names: ClassVar[tuple[str, ...]]  # the entries of :meth:`geometry`, for the encoder

    def __init__(self, grid: int = 1000, max_objects: int = 8, order: Order = "raster", fourier_frequencies: int = 0) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"{type(self).__name__} grid must be an int >= 1, got {grid!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"{type(self).__name__} max_objects must be an int >= 1, got {max_objects!r}")
        if order not in ("given", "raster"):
            raise ValueError(f"{type(self).__name__} order must be 'given' or 'raster', got {order!r}")
        self.grid, self.max_objects, self.order = grid, max_objects, order
        self.fourier_frequencies = check_fourier_frequencies(type(self).__name__, fourier_frequencies)

    # -- what a subclass declares -----------------------------------------------------------------
    @abstractmethod
    def make(self, phrase: str, values: tuple[int, ...]) -> Any:
        """The latent object of one phrase and its (valid) numbers."""

    @abstractmethod
    def unpack(self, obj: Any) -> tuple[str, Sequence[object]]:
        """``(phrase, numbers)`` of one latent object (or of a plain ``(phrase, numbers)`` pair)."""

    @abstractmethod
    def check(self, values: tuple[int, ...]) -> tuple[int, str] | None:
        """``None`` if the numbers are valid, else (index of the first bad one, what was expected)."""

    @abstractmethod
    def sort_key(self, obj: Any) -> tuple:
        """Key of the raster order."""

    @abstractmethod
    def geometry(self, obj: Any) -> tuple[float, ...]:
        """The encoder's normalised geometry vector of one object (``geometry_names``, each about in ``[0, 1]``)."""

    @abstractmethod
    def to_normalised(self, obj: Any) -> Shape:
        """One object's shape in normalised image coordinates (what :meth:`overlap` and :meth:`outline` take)."""

    @abstractmethod
    def overlap(self, first: Shape, second: Shape) -> float:
        """The IoU of two normalised shapes."""

    @abstractmethod
    def outline(self, image: Image.Image, shape: Shape, color: tuple[int, int, int]) -> None:
        """Draw one normalised shape over ``image``, in place."""

    # -- tokenizer ---------------------------------------------------------------------------------
    def canonical(self, objects: Sequence[Any]) -> list[Any]:
        """Validated objects with integer numbers, in this type's order. Raises ``ValueError``."""
        if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
            raise TypeError(f"a {self.name} latent is a sequence of objects, got {type(objects).__name__}")
        if len(objects) > self.max_objects:
            raise ValueError(f"a {self.name} latent holds at most {self.max_objects} objects, got {len(objects)}")
        result = []
        for number, obj in enumerate(objects):
            phrase, raw = self.unpack(obj)
            if (problem := phrase_problem(phrase)) is not None:
                raise ValueError(f"{self.name} object {number}: expected {problem[1]}, got {problem[2]}")
            if len(raw) != len(self.values):
                raise ValueError(f"{self.name} object {number}: expected {len(self.values)} numbers {self.values}, got {raw!r}")
            values = tuple(grid_int(v, f"{self.name} object {number} {name}") for v, name in zip(raw, self.values))
            if (bad := self.check(values)) is not None:
                raise ValueError(f"{self.name} object {number} ({phrase!r}): expected {bad[1]}, got {self.values[bad[0]]}={values[bad[0]]}")
            result.append(self.make(phrase, values))
        return sorted(result, key=self.sort_key) if self.order == "raster" else result

    def format(self, latent: Sequence[Any]) -> str:
        return format_grounded([self.unpack(obj) for obj in self.canonical(latent)])

    def parse(self, text: str) -> list[Any]:
        """Objects in the order written (``format`` re-orders them if ``order="raster"``)."""
        return [self.make(obj.phrase, obj.values) for obj in self.scan(text)]

    def scan(self, text: str) -> list[ScannedObject]:
        """The objects of ``text`` with their positions; raises :class:`LatentParseError` on bad text."""
        return scan_grounded(text, self.name, self.values, self.max_objects, self.check)

    # -- adherence and drawing -------------------------------------------------------------------
    def adherence(self, latent: Sequence[Any], found: Sequence[Any]) -> dict[str, float]:
        """``iou``: the mean over the latent's objects of the IoU with the found object each is paired
        with (unpaired: 0; extra found objects are ignored); ``iou_exact``: the same sum over
        ``max(latent, found)`` objects, so extra objects count as 0 too; ``phrases``: the share of the
        latent's objects paired (IoU > 0) with a found object of the same phrase; ``empty``: 1 for a
        latent without objects (which scores 1 in the others only if nothing is found either)."""
        def shapes(objects: Sequence[Any]) -> list[tuple[str, Shape]]:
            return [(obj.phrase, self.to_normalised(obj)) for obj in objects]

        pairing = pair_objects(shapes(latent), shapes(found), self.overlap)
        empty = float(not latent)
        return {"iou": pairing.iou(), "iou_exact": pairing.iou_exact(), "phrases": pairing.phrases(), "empty": empty}

    def draw(self, image: Image.Image, latent: Sequence[Any]) -> None:
        """Each object's outline, one palette colour per object in the latent's order (objects, or
        ``(phrase, numbers)`` pairs)."""
        for index, obj in enumerate(latent):
            phrase, values = self.unpack(obj)
            self.outline(image, self.to_normalised(self.make(phrase, tuple(values))), object_color(index))

    # -- encoder -----------------------------------------------------------------------------------
    def geometry_width(self) -> int:
        return len(self.geometry_names) if self.fourier_frequencies else 0

    def geometry_spans(self, text: str) -> list[GeometrySpan]:
        """Each object's span, from its phrase to its ``)``, and :meth:`geometry` (also when the
        features are off: the spans do not depend on the encoder)."""
        return [(obj.start, obj.end, self.geometry(self.make(obj.phrase, obj.values))) for obj in self.scan(text)]

    def build_encoder(self, hidden_size: int) -> nn.Module:
        if not self.fourier_frequencies:
            return super().build_encoder(hidden_size)
        return FourierGeometryEncoder(hidden_size, len(self.geometry_names), self.fourier_frequencies)


__all__ = [
    "GroundedLatent",
    "Order",
    "ScannedObject",
    "clean_phrase",
    "format_grounded",
    "grid_int",
    "phrase_problem",
    "range_problem",
    "scan_grounded",
    "to_grid",
]
