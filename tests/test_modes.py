"""Mode coverage (kaleido.metrics.modes) on constructed scenes whose answer is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaleido.data.shapes import Scene, ShapeObject, render
from kaleido.metrics import (
    ATTRIBUTES,
    attribute_coverage,
    covered_modes,
    mode_coverage,
    shapes_mode_coverage,
    total_variation,
)


def _obj(
    color: str = "red", size: str = "medium", cx: float = 0.5, cy: float = 0.5, shape: str = "circle"
) -> ShapeObject:
    radius = {"small": 0.145, "medium": 0.195, "large": 0.245}[size]
    return ShapeObject(shape, color, size, cx, cy, radius)


def _scene(*objects: ShapeObject, background: str = "white") -> Scene:
    return Scene(tuple(objects), background)


def test_total_variation_closed_forms() -> None:
    assert total_variation({"a": 1.0}, {"a": 1.0}) == 0.0
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert total_variation({"a": 0.25, "b": 0.75}, {"a": 0.75, "c": 0.25}) == pytest.approx(0.75)


def test_covered_modes_threshold_is_inclusive() -> None:
    sample = {"a": 0.9, "b": 0.1, "c": 0.0}
    assert covered_modes(sample, ["a", "b", "c", "d"], min_share=0.1) == ["a", "b"]
    assert covered_modes(sample, ["a", "b"], min_share=0.11) == ["a"]
    with pytest.raises(ValueError, match="min_share"):
        covered_modes(sample, ["a"], min_share=0.0)


def test_attribute_coverage_counts_data_modes_only() -> None:
    # Data: red 50%, blue 48%, green 2% (below min_share 5%: not a mode). Samples: all red, one misread orange.
    data = ["red"] * 25 + ["blue"] * 24 + ["green"]
    samples = ["red"] * 9 + ["orange"]
    cov = attribute_coverage(samples, data, min_share=0.05)
    assert (cov.covered, cov.modes) == (1, 2) and cov.fraction == 0.5
    # TV = ½ (|0.9 − 0.5| + |0 − 0.48| + |0 − 0.02| + |0.1 − 0|) = 0.5
    assert cov.tv == pytest.approx(0.5)
    assert cov.sample == {"red": 0.9, "orange": 0.1}


def test_mode_coverage_per_condition_and_summary() -> None:
    left, right = 1 / 6, 5 / 6  # x of the "left" / "right" grid cells, y centre
    data = [
        _scene(_obj("red", "small", left)),
        _scene(_obj("blue", "large", right)),
        _scene(_obj("red", "small", left), _obj("blue", "large", right, shape="square")),
        _scene(_obj("blue", "large", right), _obj("red", "small", left, shape="square")),
    ]
    data_conditions = ["a circle"] * 4
    # Samples: one red small circle on the left, every time: one colour, size and cell of two; count 1 of 2.
    samples = [_scene(_obj("red", "small", left))] * 4
    result = mode_coverage(samples, ["a circle"] * 4, data, data_conditions, min_share=0.1)
    per = result.conditions["a circle"]
    for attribute in ("color", "size", "position"):
        assert (per[attribute].covered, per[attribute].modes) == (1, 2)
        assert per[attribute].tv == pytest.approx(0.5)  # data 50/50, samples 100/0
    assert per["position"].data == {"left": 0.5, "right": 0.5}
    assert (per["count"].covered, per["count"].modes) == (1, 2) and per["count"].tv == pytest.approx(0.5)
    summary = result.summary()
    assert summary["mode_coverage"] == pytest.approx(0.5) and summary["mode_tv"] == pytest.approx(0.5)
    assert summary["modes_covered"] == 4 and summary["modes_total"] == 8
    assert set(summary) >= {f"{a}_coverage" for a in ATTRIBUTES} | {f"{a}_tv" for a in ATTRIBUTES}

    # Samples that match the data exactly: everything covered, TV 0.
    exact = mode_coverage(data, data_conditions, data, data_conditions, min_share=0.1).summary()
    assert exact["mode_coverage"] == 1.0 and exact["mode_tv"] == 0.0


def test_mode_coverage_averages_conditions_and_reports_unknown_ones() -> None:
    data = [_scene(_obj("red")), _scene(_obj("blue")), _scene(_obj("green", shape="square"))]
    data_conditions = ["a circle", "a circle", "a square"]
    samples = [_scene(_obj("red")), _scene(_obj("red")), _scene(_obj("green", shape="square")), _scene()]
    result = mode_coverage(samples, ["a circle", "a circle", "a square", "a hexagon"], data, data_conditions)
    assert set(result.conditions) == {"a circle", "a square"} and result.unmatched == ["a hexagon"]
    summary = result.summary()
    assert summary["color_coverage"] == pytest.approx((1 / 2 + 1) / 2)  # mean over the two conditions
    assert summary["color_tv"] == pytest.approx((0.5 + 0.0) / 2)
    empty = mode_coverage([_scene()], ["a circle"], data, data_conditions).conditions["a circle"]
    assert empty["count"].sample == {"0": 1.0} and empty["count"].tv == 1.0 and empty["color"].covered == 0


def test_shapes_mode_coverage_reads_rendered_images() -> None:
    scenes = [
        _scene(_obj("red", "large", 0.25, 0.25)),
        _scene(_obj("blue", "small", 0.8, 0.8), _obj("yellow", "medium", 0.3, 0.5, shape="square"), background="gray"),
    ]
    images = torch.from_numpy(np.stack([render(s, 32) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    conditions = ["a circle", "a circle"]
    parsed = shapes_mode_coverage(images, conditions, scenes, conditions, min_share=0.1).summary()
    assert parsed["mode_tv"] == pytest.approx(0.0) and parsed["mode_coverage"] == 1.0
    with pytest.raises(ValueError, match="2 images but 1 conditions"):
        shapes_mode_coverage(images, conditions[:1], scenes, conditions)
