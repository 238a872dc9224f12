"""Mode coverage on constructed scenes whose answer is known exactly: the generic part
(kaleido.metrics.modes) and the shapes part (kaleido.shapes.modes, ShapesDataModule.sample_metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kaleido.metrics
from kaleido.metrics.modes import (
    DEFAULT_MIN_SHARE,
    attribute_coverage,
    covered_modes,
    shares,
    total_variation,
    votes_coverage,
)
from kaleido.shapes import ShapesConfig, ShapesDataModule
from kaleido.shapes.modes import ATTRIBUTES, mode_coverage, scene_votes, shapes_mode_coverage
from kaleido.shapes.scenes import Scene, ShapeObject, render


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


def test_shares_normalise_votes() -> None:
    assert shares(["a", "b", "a", "a"]) == {"a": 0.75, "b": 0.25}
    assert shares([]) == {}


def test_the_generic_part_knows_no_data_set() -> None:
    # kaleido.metrics exports the generic helpers; the shapes attributes live with the data set.
    assert kaleido.metrics.votes_coverage is votes_coverage and kaleido.metrics.total_variation is total_variation
    for name in ("mode_coverage", "shapes_mode_coverage", "ATTRIBUTES"):
        assert not hasattr(kaleido.metrics, name), name


def test_votes_coverage_on_plain_votes() -> None:
    # Any data set's votes: per condition, per attribute; conditions only the samples have are unmatched.
    data = {"x": {"hue": ["warm"] * 6 + ["cold"] * 4}, "y": {"hue": ["cold"]}}
    samples = {"x": {"hue": ["warm"] * 5}, "z": {"hue": ["warm"]}}
    result = votes_coverage(samples, data, ["hue"], min_share=0.2)
    assert set(result.conditions) == {"x"} and result.unmatched == ["z"] and result.min_share == 0.2
    hue = result.conditions["x"]["hue"]
    assert (hue.covered, hue.modes) == (1, 2) and hue.tv == pytest.approx(0.4)
    summary = result.summary()
    assert summary["hue_coverage"] == summary["mode_coverage"] == 0.5
    assert (summary["modes_covered"], summary["modes_total"]) == (1.0, 2.0)
    assert votes_coverage({}, data, ["hue"], 0.2).summary() == {}


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


def test_scene_votes() -> None:
    scene = _scene(_obj("red", "small", 1 / 6), _obj("blue", "large", 5 / 6, shape="square"))
    assert ATTRIBUTES == ("color", "size", "position", "count")
    assert scene_votes(scene) == {
        "color": ["red", "blue"], "size": ["small", "large"], "position": ["left", "right"], "count": ["2"]
    }
    assert scene_votes(_scene())["count"] == ["0"]


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


def test_the_data_module_measures_mode_coverage_with_its_min_share() -> None:
    data = ShapesDataModule(shapes=ShapesConfig(resolution=32), num_train=60, num_val=4, num_test=4)
    assert data.mode_min_share == DEFAULT_MIN_SHARE == 0.05
    train = data.shapes_split("train")
    items = [train[i] for i in range(len(train))]
    images, conditions = torch.stack([i["image"] for i in items]), [i["condition"] for i in items]
    summary, details = data.sample_metrics(images, conditions)
    # The training images themselves: (nearly) every mode covered, the histograms (nearly) equal.
    assert summary["mode_coverage"] >= 0.95 and summary["mode_tv"] <= 0.05, summary
    assert set(details) == set(conditions) and set(details["a circle"]) == set(ATTRIBUTES)
    assert set(details["a circle"]["color"]) == {"covered", "modes", "tv", "sample", "data"}
    assert summary["background_offset_median"] < 0.01 and summary["background_offset_p90"] < 0.01  # renders: exact backgrounds
    tinted = images.clone()
    tinted[:, 2] += 20 / 127.5  # every background 20 levels too blue
    assert data.sample_metrics(tinted, conditions)[0]["background_offset_median"] == pytest.approx(20, abs=0.6)
    # One sample, a red circle: a stricter min_share counts fewer modes (a colour holds about 1/6 of the votes).
    one = torch.from_numpy(render(_scene(_obj("red")), 32)).permute(2, 0, 1)[None].float() / 127.5 - 1
    loose = ShapesDataModule(shapes=ShapesConfig(resolution=32), num_train=60, mode_min_share=0.01)
    strict = ShapesDataModule(shapes=ShapesConfig(resolution=32), num_train=60, mode_min_share=0.5)
    assert loose.mode_min_share == 0.01
    loose_summary, strict_summary = loose.sample_metrics(one, ["a circle"])[0], strict.sample_metrics(one, ["a circle"])[0]
    assert loose_summary["modes_total"] > strict_summary["modes_total"]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="mode_min_share"):
            ShapesDataModule(mode_min_share=bad)


def test_the_training_scenes_are_drawn_once_per_data_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluate sweep measures mode coverage once per run: the 50,000 training scenes (~10 s) are drawn once."""
    from kaleido.shapes import ShapesDataset

    data = ShapesDataModule(shapes=ShapesConfig(resolution=32), num_train=40, num_val=4, num_test=4)
    drawn: list[int] = []
    scene = ShapesDataset.scene
    monkeypatch.setattr(ShapesDataset, "scene", lambda self, i: drawn.append(i) or scene(self, i))
    train = data.shapes_split("train")
    images = torch.stack([train[i]["image"] for i in range(4)])
    first = data.sample_metrics(images, ["a circle"] * 4)[0]
    count = len(drawn)
    assert data.sample_metrics(images, ["a circle"] * 4)[0] == first and len(drawn) == count
