"""Detailed, human-readable descriptions of ``shapes`` scenes, and their parser.

Grammar (case and spacing are free; ``[...]`` is optional, ``|`` an alternative)::

    description := object (("," ["and"] | "and") object)* [[","] "on" ("a"|"an") BACKGROUND "background"] ["."]
    object      := ("a"|"an") [SIZE] COLOR SHAPE [("at"|"on"|"in") ["the"] POSITION]

``describe`` always writes the full form, objects in the scene's order, e.g.::

    a large red circle at the top left, a small blue triangle in the center, on a black background

It uses the preposition that reads best ("at the top", "on the left", "in the center")
but the parser accepts any of at/on/in.  Hand-edited text may leave out an object's
size or position, or the background; the parsed field is then ``None``.  ``grey`` and
``centre`` are accepted for ``gray`` and ``center``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kaleido.shapes.scenes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene

_PREPOSITIONS = ("at", "on", "in")
_ALIASES = {"grey": "gray", "centre": "center"}
_TOKEN = re.compile(r"[a-z]+|\S")


class ShapesTextError(ValueError):
    """A description that does not follow the grammar; the message names the position."""

    def __init__(self, position: int, expected: str, found: str) -> None:
        self.position, self.expected, self.found = position, expected, found
        super().__init__(f"expected {expected} at position {position}, found {found}")


@dataclass(frozen=True)
class DescribedObject:
    """One object of a description; ``size``/``position`` are ``None`` where the text left them out."""

    size: str | None
    color: str
    shape: str
    position: str | None


@dataclass(frozen=True)
class Description:
    """The parsed description: objects in text order, and the background (``None`` if not named)."""

    objects: tuple[DescribedObject, ...]
    background: str | None


def _preposition(position: str) -> str:
    if position == "center":
        return "in"
    if position in ("left", "right"):
        return "on"
    return "at"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def scene_description(scene: Scene) -> Description:
    """The :class:`Description` that ``describe(scene)`` spells out."""
    objects = tuple(DescribedObject(o.size, o.color, o.shape, o.position) for o in scene.objects)
    return Description(objects=objects, background=scene.background)


def format_description(description: Description) -> str:
    """Spell out a :class:`Description` (omitted fields stay omitted)."""
    parts = []
    for obj in description.objects:
        words = [w for w in (obj.size, obj.color, obj.shape) if w is not None]
        phrase = f"{_article(words[0])} {' '.join(words)}"
        if obj.position is not None:
            phrase += f" {_preposition(obj.position)} the {obj.position}"
        parts.append(phrase)
    if description.background is not None:
        parts.append(f"on {_article(description.background)} {description.background} background")
    return ", ".join(parts)


def describe(scene: Scene) -> str:
    """Detailed description of every object (size, colour, shape, cell) and the background."""
    return format_description(scene_description(scene))


class _Tokens:
    """Lower-cased words and punctuation, each with its character offset in the original text."""

    def __init__(self, text: str) -> None:
        self.items = [(m.group(), m.start()) for m in _TOKEN.finditer(text.lower())]
        self.end = len(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.items[j][0] if j < len(self.items) else None

    def offset(self) -> int:
        return self.items[self.i][1] if self.i < len(self.items) else self.end

    def fail(self, expected: str) -> ShapesTextError:
        found = f"'{self.peek()}'" if self.peek() is not None else "the end of the text"
        return ShapesTextError(self.offset(), expected, found)

    def take(self, *accepted: str, expected: str | None = None) -> str:
        token = self.peek()
        if token not in accepted:
            raise self.fail(expected or " or ".join(repr(a) for a in accepted))
        self.i += 1
        return token

    def take_name(self, names: tuple[str, ...], what: str, listed: tuple[str, ...] | None = None) -> str:
        """The longest of ``names`` (each one or more words) that starts here."""
        for name in sorted(names, key=lambda n: -len(n.split())):
            words = name.split()
            got = [_ALIASES.get(self.peek(k) or "", self.peek(k)) for k in range(len(words))]
            if got == words:
                self.i += len(words)
                return name
        raise self.fail(f"{what} (one of {', '.join(listed or names)})")


def _at_background(tokens: _Tokens) -> bool:
    """``on a ...``/``on an ...`` starts the background; ``on the ...`` is a position."""
    return tokens.peek() == "on" and tokens.peek(1) in ("a", "an")


def _parse_object(tokens: _Tokens) -> DescribedObject:
    tokens.take("a", "an", expected="'a' or 'an'")
    size = tokens.take_name(tuple(SIZES), "a size") if tokens.peek() in SIZES else None
    if size is None:
        color = tokens.take_name(tuple(COLORS), "a size or colour", listed=(*SIZES, *COLORS))
    else:
        color = tokens.take_name(tuple(COLORS), "a colour")
    shape = tokens.take_name(SHAPES, "a shape")
    position = None
    if tokens.peek() in _PREPOSITIONS and not _at_background(tokens):
        tokens.i += 1
        if tokens.peek() == "the":  # tolerated when left out ("at top left")
            tokens.i += 1
        position = tokens.take_name(POSITIONS, "a position")
    return DescribedObject(size, color, shape, position)


def parse_description(text: str, allow_empty: bool = False) -> Description:
    """Parse a description written by :func:`describe` (or hand-edited); its exact inverse.

    Raises :class:`ShapesTextError` naming the character position, what was expected
    there and what was found. ``allow_empty`` also reads a description of no object (only
    the background), what :func:`describe` writes for an image in which the parser finds
    nothing; the latent's grammar never accepts one.
    """
    tokens = _Tokens(text)
    objects = [] if allow_empty and _at_background(tokens) else [_parse_object(tokens)]
    background = None
    while tokens.peek() is not None and tokens.peek() != ".":
        if not _at_background(tokens):  # the comma before the background may be left out
            if tokens.peek() != "and":
                tokens.take(",", expected="',' or the end of the text")
            if tokens.peek() == "and":
                tokens.i += 1
        if _at_background(tokens):
            tokens.i += 2
            background = tokens.take_name(tuple(BACKGROUNDS), "a background")
            tokens.take("background")
            break
        objects.append(_parse_object(tokens))
    if tokens.peek() == ".":
        tokens.i += 1
    if tokens.peek() is not None:
        raise tokens.fail("the end of the text (the background comes last)" if background else "the end of the text")
    return Description(objects=tuple(objects), background=background)
