"""Mode coverage of categorical attributes: which values appear in samples, against the data.

For every condition and attribute, the samples and the data each give a histogram over the attribute's
values (votes). Per (condition, attribute):

* a **mode** is a value that holds at least ``min_share`` of the *data* histogram;
* it is **covered** when it also holds at least ``min_share`` of the *sample* histogram;
* **TV** is the total-variation distance ½ Σ_v |p_samples(v) − p_data(v)| over all values
  (values only the samples show count against it too).

Summaries average over conditions, then over attributes. A data set that can read attributes off its
images uses this in its ``sample_metrics`` (``kaleido/shapes/modes.py`` does); the 2-D toy of the
paper's Fig. 3 uses :func:`covered_modes`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Votes = dict[str, list[str]]  # attribute → values, one per vote
DEFAULT_MIN_SHARE = 0.05


def shares(votes: Iterable[Hashable]) -> dict[Hashable, float]:
    """Normalised histogram of ``votes`` (empty for no votes)."""
    counts = Counter(votes)
    total = sum(counts.values())
    return {value: n / total for value, n in counts.items()} if total else {}


def total_variation(p: Mapping[Hashable, float], q: Mapping[Hashable, float]) -> float:
    """½ Σ |p(v) − q(v)| over the union of values: 0 for equal histograms, 1 for disjoint ones."""
    return 0.5 * sum(abs(p.get(v, 0.0) - q.get(v, 0.0)) for v in set(p) | set(q))


def covered_modes(sample: Mapping[Hashable, float], modes: Iterable[Hashable], min_share: float) -> list[Hashable]:
    """The ``modes`` that hold at least ``min_share`` of the ``sample`` histogram."""
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    return [m for m in modes if sample.get(m, 0.0) >= min_share]


@dataclass
class AttributeCoverage:
    """One attribute of one condition: ``covered`` of the data's ``modes``, and the TV distance."""

    covered: int
    modes: int
    tv: float
    sample: dict[str, float]  # value → share among the samples' votes
    data: dict[str, float]  # value → share among the data's votes

    @property
    def fraction(self) -> float:
        return self.covered / self.modes if self.modes else 1.0


def attribute_coverage(
    sample_votes: Iterable[str], data_votes: Iterable[str], min_share: float = DEFAULT_MIN_SHARE
) -> AttributeCoverage:
    """Coverage and TV of one attribute's sample votes against its data votes."""
    sample, data = shares(sample_votes), shares(data_votes)
    modes = [v for v, share in data.items() if share >= min_share]
    covered = covered_modes(sample, modes, min_share)
    return AttributeCoverage(len(covered), len(modes), total_variation(sample, data), sample, data)  # type: ignore[arg-type]


@dataclass
class ModeCoverage:
    """Per condition, per attribute coverage; ``unmatched``: sample conditions absent from the data."""

    conditions: dict[str, dict[str, AttributeCoverage]]
    min_share: float
    unmatched: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """``<attribute>_coverage`` (mean covered fraction), ``<attribute>_tv`` (mean TV), both averaged
        over conditions; ``mode_coverage`` / ``mode_tv`` averaged over attributes too;
        ``modes_covered`` / ``modes_total`` summed over everything."""
        out: dict[str, float] = {}
        if not self.conditions:
            return out
        attributes = list(next(iter(self.conditions.values())))
        for attribute in attributes:
            rows = [per[attribute] for per in self.conditions.values()]
            out[f"{attribute}_coverage"] = sum(r.fraction for r in rows) / len(rows)
            out[f"{attribute}_tv"] = sum(r.tv for r in rows) / len(rows)
        out["mode_coverage"] = sum(out[f"{a}_coverage"] for a in attributes) / len(attributes)
        out["mode_tv"] = sum(out[f"{a}_tv"] for a in attributes) / len(attributes)
        rows = [r for per in self.conditions.values() for r in per.values()]
        out["modes_covered"] = float(sum(r.covered for r in rows))
        out["modes_total"] = float(sum(r.modes for r in rows))
        return out


def votes_coverage(
    sample_votes: Mapping[str, Votes], data_votes: Mapping[str, Votes], attributes: Sequence[str], min_share: float
) -> ModeCoverage:
    """Coverage of the samples' votes against the data's, condition by condition (votes keyed by condition)."""
    per_condition = {
        condition: {a: attribute_coverage(votes[a], data_votes[condition][a], min_share) for a in attributes}
        for condition, votes in sample_votes.items()
        if condition in data_votes
    }
    return ModeCoverage(per_condition, min_share, unmatched=sorted(set(sample_votes) - set(data_votes)))


__all__ = [
    "DEFAULT_MIN_SHARE",
    "AttributeCoverage",
    "ModeCoverage",
    "Votes",
    "attribute_coverage",
    "covered_modes",
    "shares",
    "total_variation",
    "votes_coverage",
]
