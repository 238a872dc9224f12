"""The analytic parser of ``shapes`` images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaleido.latents.box import box_iou
from kaleido.shapes.parser import (
    ParsedObject,
    match_ground_truth,
    match_objects,
    objects_match,
    parse_image,
)
from kaleido.shapes.scenes import BACKGROUNDS, COLORS, SHAPES, Scene, ShapeObject, ShapesConfig, render, sample_scene
from kaleido.shapes.text import DescribedObject, describe, parse_description

NUM_SCENES = 500


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    config = ShapesConfig()
    return [sample_scene(np.random.default_rng([42, i]), config) for i in range(NUM_SCENES)]


def to_signed(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1], like a model sample."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def accuracy(scenes: list[Scene], resolution: int, noise: float = 0.0) -> float:
    """Share of objects found with the right shape and colour and box IoU >= 0.5."""
    generator = torch.Generator().manual_seed(0)
    found = total = 0
    for scene in scenes:
        image = to_signed(render(scene, resolution))
        if noise:
            image = (image + noise * torch.randn(image.shape, generator=generator)).clamp(-1, 1)
        matches = match_ground_truth(scene.objects, parse_image(image), iou_threshold=0.5)
        found += sum(j is not None for j in matches)
        total += len(matches)
    return found / total


@pytest.mark.parametrize("resolution", [32, 64])
def test_accuracy_on_clean_renders(scenes: list[Scene], resolution: int) -> None:
    score = accuracy(scenes, resolution)
    print(f"\nparser accuracy, clean {resolution}x{resolution}: {score:.2%} of objects in {len(scenes)} scenes")
    assert score >= 0.98


@pytest.mark.parametrize("resolution", [32, 64])
def test_accuracy_with_noise(scenes: list[Scene], resolution: int) -> None:
    count = NUM_SCENES if resolution == 32 else 200
    score = accuracy(scenes[:count], resolution, noise=0.05)
    print(f"\nparser accuracy, noise 0.05 {resolution}x{resolution}: {score:.2%} of objects in {count} scenes")
    assert score >= 0.95


def test_clean_renders_give_no_spurious_objects(scenes: list[Scene]) -> None:
    for scene in scenes[:200]:
        parsed = parse_image(render(scene, 32))
        assert len(parsed) == len(scene.objects)
        assert [p.area for p in parsed] == sorted((p.area for p in parsed), reverse=True)
        assert objects_match(parse_description(describe(scene)), parsed, allow_extra=False)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("angle", [0.0, 10.0, 25.0, 45.0, 60.0, 80.0, 105.0])
def test_small_rotated_shapes_at_32(shape: str, angle: float) -> None:
    obj = ShapeObject(shape, "green", "small", 0.43, 0.57, 0.13, angle if shape != "circle" else 0.0)
    for background in BACKGROUNDS:
        parsed = parse_image(render(Scene((obj,), background), 32))
        assert [(p.shape, p.color) for p in parsed] == [(shape, "green")], background
        assert box_iou(parsed[0].box, obj.box) >= 0.5


def test_ellipse_matches_ground_truth(scenes: list[Scene]) -> None:
    # All shapes are isotropic (a == b); the centre and semi-axis check the moments.
    for resolution, rel in ((32, 0.08), (64, 0.03)):
        for scene in scenes[:150]:
            parsed = parse_image(render(scene, resolution))
            for obj, j in zip(scene.objects, match_ground_truth(scene.objects, parsed)):
                cx, cy, a, b, _ = parsed[j].ellipse
                gx, gy, ga, gb, _ = obj.ellipse
                assert abs(cx - gx) < 0.1 / resolution and abs(cy - gy) < 0.1 / resolution
                assert a == pytest.approx(ga, rel=rel) and b == pytest.approx(gb, rel=rel)
                assert a >= b


def draw_ellipse(cx: float, cy: float, a: float, b: float, theta: float, resolution: int = 64) -> np.ndarray:
    """A filled, antialiased blue ellipse on black (theta from +x towards +y, y down)."""
    n = resolution * 8
    grid = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(grid, grid)
    t = np.deg2rad(theta)
    u = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
    v = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
    coverage = ((u / a) ** 2 + (v / b) ** 2 <= 1).reshape(resolution, 8, resolution, 8).mean(axis=(1, 3))
    bg, color = np.array(BACKGROUNDS["black"], float), np.array(COLORS["blue"], float)
    return np.rint(bg + coverage[..., None] * (color - bg)).astype(np.uint8)


@pytest.mark.parametrize("theta", [0.0, 30.0, 90.0, 135.0, 170.0])
def test_filled_ellipse_is_its_own_ellipse(theta: float) -> None:
    for resolution in (32, 64):
        parsed = parse_image(draw_ellipse(0.45, 0.55, 0.3, 0.12, theta, resolution))
        assert len(parsed) == 1
        cx, cy, a, b, angle = parsed[0].ellipse
        assert (cx, cy) == pytest.approx((0.45, 0.55), abs=0.005)
        assert (a, b) == pytest.approx((0.3, 0.12), rel=0.03)
        assert min(abs(angle - theta), 180 - abs(angle - theta)) < 1.0
        assert 0.0 <= angle < 180.0


def test_input_formats_agree(scenes: list[Scene]) -> None:
    image = render(scenes[0], 32)
    signed = to_signed(image)
    reference = parse_image(image)
    assert reference
    for other in (signed, signed.permute(1, 2, 0), signed.numpy()):
        parsed = parse_image(other)
        assert [(p.shape, p.color, p.box) for p in parsed] == [(p.shape, p.color, p.box) for p in reference]
        # theta of an isotropic shape is ill-conditioned: compare it loosely
        assert [p.ellipse[:4] for p in parsed] == [pytest.approx(p.ellipse[:4], abs=1e-6) for p in reference]
        assert [p.ellipse[4] for p in parsed] == [pytest.approx(p.ellipse[4], abs=1e-2) for p in reference]
        assert all(np.array_equal(p.mask, q.mask) for p, q in zip(parsed, reference))
    with pytest.raises(ValueError, match="one image"):
        parse_image(signed[None])
    with pytest.raises(ValueError, match="accepted names are"):
        parse_image(image, colors=["red", "magenta"])
    only = reference[0].color
    assert [p for p in parse_image(image, colors=[only])] == [p for p in reference if p.color == only]


def test_masks_areas_and_min_area(scenes: list[Scene]) -> None:
    scene = scenes[1]
    parsed = parse_image(render(scene, 32))
    for p in parsed:
        assert p.mask.shape == (32, 32) and p.mask.dtype == bool
        assert p.area == pytest.approx(p.mask.mean(), rel=0.3)
        assert "mask" not in repr(p)
    assert parse_image(render(Scene((), "gray"), 32)) == []  # nothing but background
    assert parse_image(render(scene, 32), min_area=0.5) == []


def test_box_iou() -> None:
    # The parser matches ground truth with the box latent's IoU (kaleido.latents.box), not a copy of its own.
    from kaleido.shapes import parser

    assert parser.box_iou is box_iou
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def fake(shape: str, color: str, area: float = 0.1) -> ParsedObject:
    return ParsedObject(shape, color, (0, 0, 0.1, 0.1), (0.05, 0.05, 0.05, 0.05, 0.0), area, np.zeros((4, 4), bool))


def test_objects_match() -> None:
    parsed = [fake("circle", "red", 0.3), fake("square", "blue", 0.2), fake("circle", "red", 0.1)]
    two_red = [DescribedObject("small", "red", "circle", "top"), DescribedObject(None, "red", "circle", None)]
    assert match_objects(two_red, parsed) == [0, 2]
    assert objects_match(two_red, parsed)
    assert not objects_match(two_red, parsed, allow_extra=False)  # the blue square is extra
    assert objects_match(two_red + [DescribedObject(None, "blue", "square", None)], parsed, allow_extra=False)
    three_red = two_red + [DescribedObject(None, "red", "circle", None)]
    assert match_objects(three_red, parsed) == [0, 2, None]
    assert not objects_match(three_red, parsed)  # each described object needs its own parsed one
    assert not objects_match(parse_description("a red square"), parsed)
    assert objects_match(parse_description("a blue square, on a gray background"), parsed)


def test_edited_description_no_longer_matches(scenes: list[Scene]) -> None:
    for scene in scenes[:20]:
        parsed = parse_image(render(scene, 32))
        text = describe(scene)
        color = scene.objects[0].color
        other = "blue" if color != "blue" else "red"
        edited = text.replace(f" {color} ", f" {other} ", 1)
        assert objects_match(parse_description(text), parsed)
        # The edit asks for one more (other, shape) object than the image holds.
        assert not objects_match(parse_description(edited), parsed)
