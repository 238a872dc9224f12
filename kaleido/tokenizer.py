"""The prior's tokenizer: condition text and latent objects ⇄ token ids.

One byte-level BPE vocabulary (``tokenizers``) serves the condition encoder and the latent decoder,
as one T5 vocabulary does in the paper. Each latent type opens its segment with a special tag token
(``<z:text>``, ``<z:box>``, ...) so several types chain in one sequence and decode back apart.
Byte-level BPE never maps text to ``<unk>``, so encode → decode is exact. Nothing is truncated:
a sequence longer than the configured maximum is an error.

Latent types that declare geometry (``LatentType.geometry_width() > 0``, e.g. ``BoxLatent(
fourier_frequencies=8)``) also get per-token geometry features (:meth:`KaleidoTokenizer.latent_batch`):
each token carries the geometry vector of the object whose characters it covers, found through the
tokenizer's character offsets, so it stays aligned with the ids whatever the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from kaleido.latents import LatentParseError, LatentType, build_latent_type, segment_tag
from kaleido.latents.base import GeometrySpan

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # T5's ids 0, 1, 2: pad doubles as the decoder start token
LENGTH_MARGIN = 16  # room for hand-edited latents and conditions a little longer than the data's


class SequenceTooLongError(ValueError):
    pass


class KaleidoTokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        latent_types: Sequence[LatentType] = (),
        max_condition_length: int = 64,
        max_latent_length: int = 128,
    ) -> None:
        self.tokenizer = tokenizer
        self.latent_types = list(latent_types)
        names = [t.name for t in self.latent_types]
        if len(set(names)) != len(names):
            raise ValueError(f"each latent type may appear once in a sequence, got {names}")
        self.max_condition_length = max_condition_length
        self.max_latent_length = max_latent_length
        self.pad_id, self.eos_id = self._id(PAD), self._id(EOS)
        self.tag_ids = {t.name: self._id(segment_tag(t)) for t in self.latent_types}

    # -- construction ------------------------------------------------------------------------------
    @staticmethod
    def special_tokens(latent_types: Sequence[LatentType]) -> list[str]:
        tokens = [PAD, EOS, UNK] + [segment_tag(t) for t in latent_types]
        return tokens + [tok for t in latent_types for tok in t.special_tokens()]

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        latent_types: Sequence[LatentType] = (),
        vocab_size: int = 1024,
        max_condition_length: int = 64,
        max_latent_length: int = 128,
    ) -> KaleidoTokenizer:
        """Train a byte-level BPE vocabulary of ``vocab_size`` entries (bytes, merges, ``<pad>``/``</s>``/
        ``<unk>`` and the segment tags) on ``corpus``. The latent types' own tokens (e.g. visual-token
        codes) come on top, so a large codebook never crowds out the text merges."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        specials = cls.special_tokens(latent_types)
        tags = [PAD, EOS, UNK] + [segment_tag(t) for t in latent_types]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=tags,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        tokenizer.add_special_tokens(specials[len(tags) :])
        return cls(tokenizer, latent_types, max_condition_length, max_latent_length)

    @classmethod
    def from_file(
        cls,
        path: str,
        latent_types: Sequence[LatentType] = (),
        max_condition_length: int = 64,
        max_latent_length: int = 128,
    ) -> KaleidoTokenizer:
        """Load a ``tokenizer.json`` (e.g. a pretrained T5's) and add the latent types' special tokens."""
        tokenizer = Tokenizer.from_file(path)
        tokenizer.add_special_tokens(cls.special_tokens(latent_types))
        return cls(tokenizer, latent_types, max_condition_length, max_latent_length)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (str / int / list / dict): safe for ``torch.load(weights_only=True)``."""
        return {
            "tokenizer_json": self.tokenizer.to_str(),
            "latent_types": [t.spec() for t in self.latent_types],
            "max_condition_length": self.max_condition_length,
            "max_latent_length": self.max_latent_length,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> KaleidoTokenizer:
        return cls(
            Tokenizer.from_str(state["tokenizer_json"]),
            [build_latent_type(spec) for spec in state["latent_types"]],
            state["max_condition_length"],
            state["max_latent_length"],
        )

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the vocabulary lacks the special token {token!r}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def latent_names(self) -> list[str]:
        return [t.name for t in self.latent_types]

    # -- conditions --------------------------------------------------------------------------------
    def encode_condition(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"a condition is a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids + [self.eos_id]
        if len(ids) > self.max_condition_length:
            raise SequenceTooLongError(
                f"condition {text[:60]!r} is {len(ids)} tokens long; this model accepts at most "
                f"{self.max_condition_length} (max_condition_length, end-of-sequence token included). "
                "Shorten it, or train with a larger max_condition_length"
            )
        return ids

    def encode_conditions(self, texts: Sequence[str], length: int | None = None) -> tuple[Tensor, Tensor]:
        return self.pad([self.encode_condition(t) for t in texts], length)

    # -- latents ----------------------------------------------------------------------------------
    def format_latents(self, latents: Mapping[str, Any]) -> dict[str, str]:
        """Latent objects by type name → their editable texts, in the configured type order."""
        missing = [n for n in self.latent_names if n not in latents]
        extra = [n for n in latents if n not in self.latent_names]
        if missing or extra:
            raise KeyError(f"latents must have exactly the types {self.latent_names}; missing {missing}, unexpected {extra}")
        return {t.name: t.format(latents[t.name]) for t in self.latent_types}

    def encode_latent_texts(self, texts: Mapping[str, str]) -> list[int]:
        """Editable texts by type name → decoder target ids: ``<z:a> a... <z:b> b... </s>``."""
        return self._encode_latent(texts, geometry=False, sampled=False)[0]

    @property
    def geometry_width(self) -> int:
        """``G``: the widest geometry vector among the latent types; 0 when no type uses geometry."""
        return max((t.geometry_width() for t in self.latent_types), default=0)

    def latent_batch(
        self, texts: Sequence[Mapping[str, str]], length: int | None = None, sampled: Sequence[bool] | None = None
    ) -> dict[str, Tensor]:
        """Editable texts by type name, one mapping per row → ``latent_ids`` and ``latent_mask`` [B, L]
        (padded as :meth:`pad`), plus ``latent_geometry`` [B, L, G + 1] when a type uses geometry.

        ``latent_geometry[b, i]`` is the geometry vector of the object whose text token ``i`` covers
        (zero-padded to ``G``) and a last column 1; tags, separators, ``</s>``, padding and tokens of
        types without geometry are all zeros. A row marked ``sampled`` (drawn by the prior) is never an
        error: a segment that does not parse gets no geometry (flag 0), and the length limit is not
        enforced (the prior's own limit bounded the sample, but its tokens may not be canonical).
        """
        flags = [False] * len(texts) if sampled is None else list(sampled)
        if len(flags) != len(texts):
            raise ValueError(f"got {len(flags)} sampled flags for {len(texts)} rows")
        width = self.geometry_width
        rows = [self._encode_latent(t, geometry=width > 0, sampled=s) for t, s in zip(texts, flags)]
        ids, mask = self.pad([row_ids for row_ids, _ in rows], length)
        batch = {"latent_ids": ids, "latent_mask": mask}
        if width:
            geometry = torch.zeros((*ids.shape, width + 1))
            for row, (_, features) in enumerate(rows):
                geometry[row, : len(features)] = torch.tensor(features)
            batch["latent_geometry"] = geometry
        return batch

    def _encode_latent(
        self, texts: Mapping[str, str], geometry: bool, sampled: bool
    ) -> tuple[list[int], list[list[float]]]:
        """One row's ids and, if ``geometry``, its per-token features (else ``[]``); see :meth:`latent_batch`."""
        none = [0.0] * (self.geometry_width + 1)
        ids: list[int] = []
        features: list[list[float]] = []
        for latent_type in self.latent_types:
            text = texts[latent_type.name]
            encoding = self.tokenizer.encode(text, add_special_tokens=False)
            ids += [self.tag_ids[latent_type.name], *encoding.ids]
            if geometry:
                features += [none, *self._token_geometry(latent_type, text, encoding.offsets, sampled)]
        ids.append(self.eos_id)
        features += [none] if geometry else []
        if len(ids) > self.max_latent_length and not sampled:
            raise SequenceTooLongError(
                f"latent {dict(texts)!r} is {len(ids)} tokens long; this model accepts at most "
                f"{self.max_latent_length} (max_latent_length, tags and end-of-sequence included)"
            )
        return ids, features

    def _token_geometry(
        self, latent_type: LatentType, text: str, offsets: Sequence[tuple[int, int]], sampled: bool
    ) -> list[list[float]]:
        """Per token of ``text``: the vector of the first object whose span its characters overlap and a
        flag 1, else zeros. Offsets are in characters of ``text``, so any vocabulary lines up."""
        width = self.geometry_width
        spans: list[GeometrySpan] = []
        if latent_type.geometry_width():
            try:
                spans = latent_type.geometry_spans(text)
            except LatentParseError:
                if not sampled:
                    raise
                # A sampled z that does not parse: its tokens carry no geometry (the adherence metrics count it).
            if any(len(vector) != latent_type.geometry_width() for _, _, vector in spans):
                raise ValueError(f"{latent_type.name}: geometry_spans must give vectors of geometry_width() = {latent_type.geometry_width()} numbers")
        rows = []
        for start, end in offsets:
            vector = next((v for a, b, v in spans if start < b and a < end), None)
            rows.append([0.0] * (width + 1) if vector is None else [*vector, *[0.0] * (width - len(vector)), 1.0])
        return rows

    def decode_latent_texts(self, ids: Sequence[int]) -> dict[str, str]:
        """Decoder ids (as sampled) → editable text per type. Tolerant: a missing segment decodes to ''."""
        by_tag = {tag_id: name for name, tag_id in self.tag_ids.items()}
        segments: dict[str, list[int]] = {name: [] for name in self.latent_names}
        current: str | None = self.latent_names[0] if self.latent_names else None
        for token_id in ids:
            if token_id in (self.eos_id, self.pad_id):
                break
            if token_id in by_tag:
                current = by_tag[token_id]
            elif current is not None:
                segments[current].append(token_id)
        return {name: self.tokenizer.decode(seg, skip_special_tokens=False).strip() for name, seg in segments.items()}

    # -- the single editable string a person reads and edits ------------------------------------
    def join_latent_texts(self, texts: Mapping[str, str]) -> str:
        if len(self.latent_types) == 1:
            return texts[self.latent_names[0]]
        return "\n".join(f"{name}: {texts[name]}" for name in self.latent_names)

    def split_latent_text(self, text: str) -> dict[str, str]:
        """The inverse of :meth:`join_latent_texts`, validating each part with its type's parser."""
        if len(self.latent_types) == 1:
            parts = {self.latent_names[0]: text.strip()}
        else:
            parts = {}
            for number, line in enumerate(filter(str.strip, text.splitlines()), start=1):
                name, sep, body = line.partition(":")
                if not sep or name.strip() not in self.latent_names:
                    raise ValueError(f"line {number} of the latent text must start with one of {self.latent_names} and ':', got {line!r}")
                parts[name.strip()] = body.strip()  # a type's parse reads its own text, never "name: "'s space
            if list(parts) != self.latent_names:
                raise ValueError(f"the latent text must give the types {self.latent_names} in this order, got {list(parts)}")
        return {t.name: t.format(t.parse(parts[t.name])) for t in self.latent_types}

    # -- batching ----------------------------------------------------------------------------------
    def pad(self, sequences: Sequence[Sequence[int]], length: int | None = None) -> tuple[Tensor, Tensor]:
        """Right-pad to the longest sequence, or to ``length`` (static shapes for a compiled model)."""
        longest = max(len(s) for s in sequences)
        if length is not None and longest > length:
            raise SequenceTooLongError(f"a sequence of {longest} tokens does not fit the padded length {length}")
        length = longest if length is None else length
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.bool)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        return ids, mask

    def __repr__(self) -> str:
        return (
            f"KaleidoTokenizer(vocab_size={self.vocab_size}, latent_types={self.latent_names}, "
            f"max_condition_length={self.max_condition_length}, max_latent_length={self.max_latent_length})"
        )


def read_latent_segments(text: str, names: Sequence[str]) -> dict[str, str | None]:
    """The parts of a joined editable z (:meth:`KaleidoTokenizer.join_latent_texts`) by type name, leniently
    and without parsing them (``split_latent_text`` validates): one type's text is the whole text, several
    are lines ``name: text``; a missing part is ``None``. A sample whose text part is garbled still has its
    boxes drawn and measured."""
    if len(names) == 1:
        return {names[0]: text.strip()}
    parts: dict[str, str | None] = dict.fromkeys(names)
    for line in text.splitlines():
        name, sep, body = line.partition(":")
        if sep and name.strip() in parts and parts[name.strip()] is None:
            parts[name.strip()] = body.strip()
    return parts


def build_tokenizer(
    texts: Sequence[tuple[str, dict[str, str]]],
    latent_types: Sequence[LatentType],
    vocab_size: int,
    tokenizer_path: str | None,
    max_condition_length: int | None,
    max_latent_length: int | None,
) -> KaleidoTokenizer:
    """Train (or load) the tokenizer on (condition, latent texts) pairs and size its limits to the data."""
    corpus = [c for c, _ in texts] + [text for _, z in texts for text in z.values()]
    if tokenizer_path:
        tok = KaleidoTokenizer.from_file(tokenizer_path, latent_types)
    else:
        tok = KaleidoTokenizer.train(corpus, latent_types, vocab_size=vocab_size)
    unlimited = 1 << 30
    probe = KaleidoTokenizer(tok.tokenizer, latent_types, unlimited, unlimited)
    longest_condition = max(len(probe.encode_condition(c)) for c, _ in texts)
    longest_latent = max((len(probe.encode_latent_texts(z)) for _, z in texts), default=0) if latent_types else 0
    tok.max_condition_length = _limit("max_condition_length", max_condition_length, longest_condition)
    tok.max_latent_length = _limit("max_latent_length", max_latent_length, longest_latent)
    return tok


def _limit(name: str, given: int | None, longest: int) -> int:
    if given is None:
        return longest + LENGTH_MARGIN
    if given < longest:
        raise ValueError(f"{name}={given} is shorter than the longest sequence of the training data ({longest} tokens)")
    return given
