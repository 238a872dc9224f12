"""Mode coverage on ``shapes`` (:mod:`kaleido.metrics.modes`): which attribute values appear in samples, against the data.

For every condition (e.g. "a circle") and every attribute, the samples and the training data each
give a histogram over the attribute's values:

* ``color``, ``size``, ``position`` (the 3 × 3 grid cell of the centre): one vote per object;
* ``count``: one vote per image, the number of objects (``"0"`` when the parser finds none).

Sample scenes come from the analytic parser (:func:`kaleido.shapes.reader.scene_from_image`),
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

from collections.abc import Sequence

from torch import Tensor

from kaleido.metrics.modes import DEFAULT_MIN_SHARE, ModeCoverage, Votes, votes_coverage
from kaleido.shapes.reader import scene_from_image
from kaleido.shapes.scenes import Scene

ATTRIBUTES: tuple[str, ...] = ("color", "size", "position", "count")


def scene_votes(scene: Scene) -> Votes:
    """The votes one scene casts per attribute (see the module docstring)."""
    return {
        "color": [o.color for o in scene.objects],
        "size": [o.size for o in scene.objects],
        "position": [o.position for o in scene.objects],
        "count": [str(len(scene.objects))],
    }


def _votes_by_condition(scenes: Sequence[Scene], conditions: Sequence[str]) -> dict[str, Votes]:
    if len(scenes) != len(conditions):
        raise ValueError(f"{len(scenes)} scenes but {len(conditions)} conditions")
    grouped: dict[str, Votes] = {}
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
    return votes_coverage(samples, data, ATTRIBUTES, min_share)


def shapes_mode_coverage(
    images: Tensor,
    conditions: Sequence[str],
    data_scenes: Sequence[Scene],
    data_conditions: Sequence[str],
    min_share: float = DEFAULT_MIN_SHARE,
) -> ModeCoverage:
    """:func:`mode_coverage` of generated ``images`` [N, 3, H, W] in [-1, 1], read by the parser."""
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions")
    scenes = [scene_from_image(image, condition) for image, condition in zip(images, conditions)]
    return mode_coverage(scenes, conditions, data_scenes, data_conditions, min_share)


__all__ = ["ATTRIBUTES", "DEFAULT_MIN_SHARE", "mode_coverage", "scene_votes", "shapes_mode_coverage"]
