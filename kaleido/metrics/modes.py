"""Mode coverage on ``shapes``: which attribute values appear in samples, against the data.

For every condition (e.g. "a circle") and every attribute, the samples and the training data each
give a histogram over the attribute's values:

* ``color``, ``size``, ``position`` (the 3 × 3 grid cell of the centre): one vote per object;
* ``count``: one vote per image, the number of objects (``"0"`` when the parser finds none).

Sample scenes come from the analytic parser (:func:`kaleido.data.shapes_scene.scene_from_image`),
data scenes from the data set's ground truth. Per (condition, attribute):

* a **mode** is a value that holds at least ``min_share`` of the *data* histogram;
* it is **covered** when it also holds at least ``min_share`` of the *sample* histogram;
* **TV** is the total-variation distance ½ Σ_v |p_samples(v) − p_data(v)| over all values
  (values only the samples show, e.g. misread colours, count against it too).

``min_share`` defaults to 5%: far below every mode's data share on the default data (colours 1/6,
sizes 1/3, cells about 1/9, counts 1/3), so a mode is only missed when the model nearly drops it.
Summaries average over conditions, then over attributes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from kaleido.data.shapes import Scene

ATTRIBUTES: tuple[str, ...] = ("color", "size", "position", "count")
DEFAULT_MIN_SHARE = 0.05


def scene_votes(scene: Scene) -> dict[str, list[str]]:
    """The votes one scene casts per attribute (see the module docstring)."""
    return {
        "color": [o.color for o in scene.objects],
        "size": [o.size for o in scene.objects],
        "position": [o.position for o in scene.objects],
        "count": [str(len(scene.objects))],
    }


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
        for attribute in ATTRIBUTES:
            rows = [per[attribute] for per in self.conditions.values()]
            out[f"{attribute}_coverage"] = sum(r.fraction for r in rows) / len(rows)
            out[f"{attribute}_tv"] = sum(r.tv for r in rows) / len(rows)
        out["mode_coverage"] = sum(out[f"{a}_coverage"] for a in ATTRIBUTES) / len(ATTRIBUTES)
        out["mode_tv"] = sum(out[f"{a}_tv"] for a in ATTRIBUTES) / len(ATTRIBUTES)
        rows = [r for per in self.conditions.values() for r in per.values()]
        out["modes_covered"] = float(sum(r.covered for r in rows))
        out["modes_total"] = float(sum(r.modes for r in rows))
        return out


def _votes_by_condition(scenes: Sequence[Scene], conditions: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    if len(scenes) != len(conditions):
        raise ValueError(f"{len(scenes)} scenes but {len(conditions)} conditions")
    grouped: dict[str, dict[str, list[str]]] = {}
    for scene, condition in zip(scenes, conditions):
        votes = grouped.setdefault(condition, {a: [] for a in ATTRIBUTES})
        for attribute, values in scene_votes(scene).items():
            votes[attribute] += values
    return grouped


def mode_coverage(
    sample_scenes: Sequence[Scene],
    sample_conditions: Sequence[str],
    data_scenes: Sequence[Scene],
    data_conditions: Sequence[str],
    min_share: float = DEFAULT_MIN_SHARE,
) -> ModeCoverage:
    """Mode coverage of sample scenes against data scenes, condition by condition."""
    samples = _votes_by_condition(sample_scenes, sample_conditions)
    data = _votes_by_condition(data_scenes, data_conditions)
    per_condition = {
        condition: {a: attribute_coverage(votes[a], data[condition][a], min_share) for a in ATTRIBUTES}
        for condition, votes in samples.items()
        if condition in data
    }
    return ModeCoverage(per_condition, min_share, unmatched=sorted(set(samples) - set(data)))


def shapes_mode_coverage(
    images: Tensor,
    conditions: Sequence[str],
    data_scenes: Sequence[Scene],
    data_conditions: Sequence[str],
    min_share: float = DEFAULT_MIN_SHARE,
) -> ModeCoverage:
    """:func:`mode_coverage` of generated ``images`` [N, 3, H, W] in [-1, 1], read by the parser."""
    from kaleido.data.shapes_scene import scene_from_image

    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    scenes = [scene_from_image(image, condition) for image, condition in zip(images, conditions)]
    return mode_coverage(scenes, conditions, data_scenes, data_conditions, min_share)
