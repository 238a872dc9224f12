"""Latent adherence: does a sample show what the latent ``z`` that produced it says?

For each latent type of a (possibly combined) latent, a *reader* -- an extractor -- reads the type's
latent back off every sample, and the type's own ``adherence(latent, found)`` hook scores the pair with
named measures in [0, 1] (``docs/latents.md``, "Adherence"). The reader is the data set's own reading of
the type where it has one (``latent_extractor``, e.g. the ``shapes`` parser), else the type's extractor
(the VQ encoder for visual tokens). A type without the hook, or without a reader, is skipped with one
line saying why.

Per type and measure, the mean over all samples (a ``z`` that does not parse scores 0), and two
reference points:

* ``unparsed``: the share of samples whose ``z`` part does not parse (or is missing);
* ``chance_<measure>``: each sample scored against the next sample's ``z`` (an unrelated one), over
  the samples whose ``z`` parses: what a sample that ignores ``z`` would score (NaN with fewer than two);
* ``ceiling_<measure>``, for types that can render a latent (``decode``): the score of the rendering of
  each ``z`` itself, what a perfect sample would score;
* ``data_<measure>`` (:func:`data_adherence`), where the data set has ground-truth latents: its own
  training images read back against them, what the reader makes of real data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kaleido.data.contract import data_extractor, ground_truth
from kaleido.latents import Extractor, LatentType, implements
from kaleido.tokenizer import read_latent_segments


@dataclass
class TypeAdherence:
    """One latent type's adherence over ``count`` samples (see the module docstring)."""

    scores: dict[str, float]
    unparsed: float
    count: int
    chance: dict[str, float] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)
    data: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """``{measure: mean, "unparsed": share, "chance_<measure>": ..., "ceiling_<measure>": ..., "data_<measure>": ...}``."""
        return {
            **self.scores,
            "unparsed": self.unparsed,
            **{f"{part}_{k}": v for part in ("chance", "ceiling", "data") for k, v in getattr(self, part).items()},
        }


@dataclass
class Readers:
    """The reader of each measurable latent type, by type name, and why each other type is skipped."""

    extractors: dict[str, Extractor]
    skipped: dict[str, str]

    def notes(self) -> list[str]:
        """One line per skipped type."""
        return [f"adherence: skipping the {name!r} latent: {why}" for name, why in self.skipped.items()]


def adherence_readers(latent_types: Iterable[LatentType], data: object | None = None, device: str | None = None) -> Readers:
    """How each latent type's adherence is read: the data set's own extractor for the type, else the
    type's; a type is skipped when it declares no ``adherence`` hook or neither extractor exists."""
    extractors: dict[str, Extractor] = {}
    skipped: dict[str, str] = {}
    for latent_type in latent_types:
        if not implements(latent_type, "adherence"):
            skipped[latent_type.name] = f"{type(latent_type).__name__} declares no adherence hook"
            continue
        reader = data_extractor(data, latent_type)
        if reader is None:
            try:
                reader = latent_type.build_extractor()
            except (NotImplementedError, ValueError) as error:
                skipped[latent_type.name] = f"nothing reads it back off an image ({error})"
                continue
        extractors[latent_type.name] = reader.to(device) if device is not None else reader
    return Readers(extractors, skipped)


def _parse(latent_type: LatentType, text: str | None) -> Any | None:
    try:
        return None if text is None else latent_type.parse(text)
    except ValueError:  # LatentParseError, or a type's own ValueError
        return None


def _read(reader: Extractor, images: Tensor, conditions: Sequence[str], batch_size: int) -> list[Any]:
    found: list[Any] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        latents = reader(chunk, list(conditions[start : start + batch_size]))
        if len(latents) != len(chunk):
            raise ValueError(f"{type(reader).__name__} read {len(latents)} latents off {len(chunk)} images")
        found += latents
    return found


def _measure_names(latent_type: LatentType, found: Sequence[Any]) -> list[str]:
    """The measures' names when no ``z`` parses (each then scores 0): from a latent read off a sample,
    scored against itself, so that every run reports the same columns."""
    for latent in found:
        try:
            return list(latent_type.adherence(latent, latent))
        except (ValueError, TypeError):  # a reading that is no valid latent of the type
            continue
    return []


def _mean(rows: Sequence[Mapping[str, float]], names: Sequence[str], count: int) -> dict[str, float]:
    """The mean of each measure over ``count`` samples; samples without a row score 0."""
    return {name: sum(row[name] for row in rows) / max(1, count) for name in names}


def type_adherence(
    latent_type: LatentType,
    images: Tensor,
    texts: Sequence[str | None],
    reader: Extractor,
    conditions: Sequence[str],
    batch_size: int = 256,
) -> TypeAdherence:
    """One type's adherence of ``images`` [N, 3, H, W] in [-1, 1] to their ``z`` parts ``texts``."""
    if not (len(images) == len(texts) == len(conditions)):
        raise ValueError(f"{len(images)} images, {len(texts)} latent texts and {len(conditions)} conditions")
    latents = [_parse(latent_type, text) for text in texts]
    found = _read(reader, images, conditions, batch_size)
    valid = [i for i, latent in enumerate(latents) if latent is not None]
    rows = [latent_type.adherence(latents[i], found[i]) for i in valid]
    names = list(rows[0]) if rows else _measure_names(latent_type, found)
    result = TypeAdherence(_mean(rows, names, len(texts)), (len(texts) - len(valid)) / max(1, len(texts)), len(texts))
    undefined = dict.fromkeys(names, math.nan)  # a reference that needs samples whose z parses, without them
    result.chance = dict(undefined)
    if len(valid) > 1:  # each sample against the next valid sample's z
        others = valid[1:] + valid[:1]
        result.chance = _mean([latent_type.adherence(latents[j], found[i]) for i, j in zip(valid, others)], names, len(valid))
    if implements(latent_type, "decode"):
        result.ceiling = dict(undefined)
        if valid:
            chosen = [latents[i] for i in valid]
            rendered = _read(reader, latent_type.decode(chosen), [conditions[i] for i in valid], batch_size)
            result.ceiling = _mean([latent_type.adherence(z, seen) for z, seen in zip(chosen, rendered)], names, len(valid))
    return result


def data_adherence(
    latent_type: LatentType, data: object, reader: Extractor, count: int, batch_size: int = 256
) -> dict[str, float]:
    """The type's measures on the data itself: the first ``count`` training images read back by ``reader``
    against their ground-truth latents (the data contract's ``ground_truth``); empty where the data set has
    none for the type. A sample cannot be expected to score above what its reader makes of real data."""
    truths = ground_truth(data, "train", latent_type, count) if count > 0 else None
    if not truths:
        return {}
    dataset = data.images("train")  # type: ignore[attr-defined]
    items = [dataset[i] for i in range(len(truths))]
    images = torch.stack([item["image"] for item in items])
    found = _read(reader, images, [item["condition"] for item in items], batch_size)
    rows = [latent_type.adherence(truth, seen) for truth, seen in zip(truths, found)]
    return _mean(rows, list(rows[0]), len(rows))


def latent_adherence(
    images: Tensor,
    latent_texts: Sequence[str],
    latent_types: Sequence[LatentType],
    readers: Mapping[str, Extractor],
    conditions: Sequence[str],
    batch_size: int = 256,
) -> dict[str, TypeAdherence]:
    """Each measurable type's adherence, by type name, for samples drawn from (possibly combined) latents:
    the types that ``readers`` has a reader for (:func:`adherence_readers`)."""
    if len(images) != len(latent_texts):
        raise ValueError(f"{len(images)} images but {len(latent_texts)} latent texts")
    names = [t.name for t in latent_types]
    parts = [read_latent_segments(text, names) for text in latent_texts]
    return {
        t.name: type_adherence(t, images, [p[t.name] for p in parts], readers[t.name], conditions, batch_size)
        for t in latent_types
        if t.name in readers
    }


__all__ = ["Readers", "TypeAdherence", "adherence_readers", "data_adherence", "latent_adherence", "type_adherence"]
