"""The synthetic ``shapes`` data set and its text descriptions."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from kaleido.shapes import dataset as shapes_dataset
from kaleido.shapes.dataset import ShapesDataset, collate
from kaleido.shapes.scenes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesConfig,
    condition_text,
    render,
    render_masks,
    sample_scene,
)
from kaleido.shapes.text import (
    DescribedObject,
    Description,
    ShapesTextError,
    describe,
    parse_description,
)

CONFIG = ShapesConfig()


def scenes(count: int, seed: int = 0, config: ShapesConfig = CONFIG) -> list[Scene]:
    return [sample_scene(np.random.default_rng([seed, i]), config) for i in range(count)]


# --- vocabulary -----------------------------------------------------------------------------


def test_vocabulary() -> None:
    assert SHAPES == ("circle", "square", "triangle")
    assert len(COLORS) >= 6 and set(SIZES) == {"small", "medium", "large"}
    assert POSITIONS == ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
    for a, b in itertools.combinations(COLORS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) > 100, (a, b)
    for rgb in BACKGROUNDS.values():
        assert max(rgb) - min(rgb) < 10  # neutral
        for color in COLORS.values():
            assert np.linalg.norm(np.subtract(rgb, color)) > 120
    assert min(lo for lo, _ in SIZES.values()) * 32 >= 3.5


# --- sampling --------------------------------------------------------------------------------


def test_scene_invariants() -> None:
    counts = set()
    for scene in scenes(500):
        counts.add(len(scene.objects))
        assert 1 <= len(scene.objects) <= 3
        assert scene.background in BACKGROUNDS
        assert condition_text(scene) == f"a {scene.objects[0].shape}"
        for obj in scene.objects:
            assert obj.shape in SHAPES and obj.color in COLORS
            lo, hi = SIZES[obj.size]
            assert lo <= obj.radius <= hi
            x1, y1, x2, y2 = obj.box
            assert 0.0 < x1 < x2 < 1.0 and 0.0 < y1 < y2 < 1.0
            if obj.shape == "circle":
                assert obj.angle == 0.0
        for a, b in itertools.combinations(scene.objects, 2):
            assert math.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius + CONFIG.margin - 1e-9
        masks = render_masks(scene, 32)
        assert masks.sum(0).max() <= 1  # disjoint
    assert counts == {1, 2, 3}


def test_condition_names_only_the_main_shape() -> None:
    found = {condition_text(s) for s in scenes(200)}
    assert found == {"a circle", "a square", "a triangle"}


def test_config_subsets_are_respected() -> None:
    config = ShapesConfig(colors=["red", "blue"], shapes=["triangle"], backgrounds=["gray"], sizes=["small"],
                          min_objects=2, max_objects=2)
    for scene in scenes(100, config=config):
        assert len(scene.objects) == 2 and scene.background == "gray"
        assert {o.color for o in scene.objects} <= {"red", "blue"}
        assert {(o.shape, o.size) for o in scene.objects} == {("triangle", "small")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"colors": ["red", "magenta"]}, "accepted names are: red, green, blue"),
        ({"shapes": ["hexagon"]}, "circle, square, triangle"),
        ({"backgrounds": ["pink"]}, "black, gray, white"),
        ({"sizes": ["huge"]}, "small, medium, large"),
        ({"colors": []}, "non-empty list"),
        ({"colors": "red"}, "non-empty list"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects"),
        ({"min_objects": 0}, "1 <= min_objects"),
        ({"max_objects": 9}, "max_objects must be <= 4"),
        ({"resolution": 8}, "resolution must be an int >= 16"),
        ({"margin": -0.1}, "margin"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)


def test_impossible_config_raises() -> None:
    config = ShapesConfig(min_objects=3, max_objects=3, sizes=["large"], margin=0.2, max_attempts=5)
    with pytest.raises(RuntimeError, match="could not place"):
        sample_scene(np.random.default_rng(0), config)


# --- geometry and rendering ------------------------------------------------------------------


def _fine_mask(obj: ShapeObject, n: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(grid, grid)
    return obj.contains(x, y), x, y


@pytest.mark.parametrize("shape", SHAPES)
def test_box_ellipse_and_area_are_exact(shape: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        obj = ShapeObject(shape, "red", "large", 0.5, 0.5, 0.25, float(rng.uniform(0, 120)) if shape != "circle" else 0.0)
        inside, x, y = _fine_mask(obj)
        assert inside.mean() == pytest.approx(obj.area, rel=0.01)
        x1, y1, x2, y2 = obj.box
        assert x[inside].min() == pytest.approx(x1, abs=2e-3) and x[inside].max() == pytest.approx(x2, abs=2e-3)
        assert y[inside].min() == pytest.approx(y1, abs=2e-3) and y[inside].max() == pytest.approx(y2, abs=2e-3)
        cov = np.cov(np.stack([x[inside], y[inside]]))
        cx, cy, a, b, theta = obj.ellipse
        assert (cx, cy) == (0.5, 0.5) and a == b and theta == 0.0
        assert np.allclose(np.linalg.eigvalsh(cov), (a / 2) ** 2, rtol=0.01)


def test_position_is_the_cell_of_the_centre() -> None:
    for row, col in itertools.product(range(3), range(3)):
        obj = ShapeObject("circle", "red", "small", (col + 0.5) / 3, (row + 0.5) / 3, 0.1)
        assert obj.position == POSITIONS[3 * row + col]
    assert ShapeObject("circle", "red", "small", 0.1, 0.9, 0.1).position == "bottom left"
    assert ShapeObject("square", "red", "small", 0.9, 0.1, 0.1).position == "top right"


@pytest.mark.parametrize("resolution", [32, 64])
def test_render_colours_and_masks(resolution: int) -> None:
    for scene in scenes(50, seed=1):
        image, masks = render(scene, resolution), render_masks(scene, resolution)
        assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
        assert masks.shape == (len(scene.objects), resolution, resolution) and masks.dtype == bool
        assert (image[0, 0] == BACKGROUNDS[scene.background]).all()
        for obj, mask in zip(scene.objects, masks):
            assert abs(mask.mean() - obj.area) < 0.35 * obj.area
            # Interior pixels (mask eroded by one pixel) carry exactly the object's colour.
            core = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
            assert (image[core] == COLORS[obj.color]).all()
        # Antialiasing: some pixels are neither background nor an object colour.
        palette = [BACKGROUNDS[scene.background], *(COLORS[o.color] for o in scene.objects)]
        pure = np.zeros(image.shape[:2], dtype=bool)
        for rgb in palette:
            pure |= (image == rgb).all(-1)
        assert not pure.all()


# --- data set --------------------------------------------------------------------------------


def test_dataset_items() -> None:
    data = ShapesDataset(20, ShapesConfig(resolution=32), seed=5)
    assert len(data) == 20
    item = data[3]
    assert set(item) == {"id", "image", "condition", "scene", "text"}
    assert item["id"] == 3
    image = item["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert item["condition"] == condition_text(item["scene"])
    assert item["text"] == describe(item["scene"])
    expected = torch.from_numpy(render(item["scene"], 32)).permute(2, 0, 1).float() / 127.5 - 1.0
    assert torch.allclose(image, expected)
    with pytest.raises(IndexError):
        data[20]
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["id"].tolist() == [0, 1]
    assert len(batch["scene"]) == len(batch["text"]) == len(batch["condition"]) == 2


def test_determinism() -> None:
    a, b = ShapesDataset(10, seed=0), ShapesDataset(10, seed=0)
    later_first = [b[i] for i in (7, 2)]  # access order must not matter
    for got, i in zip(later_first, (7, 2)):
        ref = a[i]
        assert got["scene"] == ref["scene"] and torch.equal(got["image"], ref["image"])
    assert a[1]["scene"] != a[2]["scene"] and not torch.equal(a[1]["image"], a[2]["image"])
    other_seed = ShapesDataset(10, seed=1)
    assert [other_seed[i]["scene"] for i in range(5)] != [a[i]["scene"] for i in range(5)]
    high_res = ShapesDataset(10, ShapesConfig(resolution=64), seed=0)
    assert high_res[4]["scene"] == a[4]["scene"]  # the scene does not depend on the resolution
    assert high_res[4]["image"].shape == (3, 64, 64)


def test_corpus_does_not_render(monkeypatch: pytest.MonkeyPatch) -> None:
    data = ShapesDataset(30, seed=2)
    expected = [t for i in range(5) for t in (data[i]["condition"], data[i]["text"])]

    def no_render(*args: object) -> None:
        raise AssertionError("corpus() must not render images")

    monkeypatch.setattr(shapes_dataset, "render", no_render)
    assert list(data.corpus(limit=5)) == expected
    assert len(list(data.corpus())) == 60


def test_items_are_fast() -> None:
    data = ShapesDataset(300)
    data[0]
    start = time.perf_counter()
    for i in range(300):
        data[i]
    per_item = (time.perf_counter() - start) / 300
    print(f"\n32x32 item: {per_item * 1e3:.2f} ms")
    assert per_item < 5e-3  # typically ~1 ms; loose for busy CI machines


# --- text ------------------------------------------------------------------------------------


def test_describe_example() -> None:
    scene = Scene(
        objects=(
            ShapeObject("circle", "red", "large", 0.2, 0.2, 0.24),
            ShapeObject("triangle", "blue", "small", 0.5, 0.5, 0.14, 30.0),
            ShapeObject("square", "orange", "medium", 0.2, 0.5, 0.19, 10.0),
        ),
        background="black",
    )
    assert describe(scene) == (
        "a large red circle at the top left, a small blue triangle in the center, "
        "a medium orange square on the left, on a black background"
    )
    assert describe(Scene((ShapeObject("circle", "orange", "small", 0.5, 0.9, 0.14),), "gray")) == (
        "a small orange circle at the bottom, on a gray background"
    )


def test_description_round_trip() -> None:
    for scene in scenes(500, seed=9):
        parsed = parse_description(describe(scene))
        assert parsed.background == scene.background
        assert parsed.objects == tuple(DescribedObject(o.size, o.color, o.shape, o.position) for o in scene.objects)


def test_hand_edited_descriptions() -> None:
    text = "  A Large  RED circle at the Top Left ,a small blue triangle in the centre and an orange square. "
    assert parse_description(text) == Description(
        objects=(
            DescribedObject("large", "red", "circle", "top left"),
            DescribedObject("small", "blue", "triangle", "center"),
            DescribedObject(None, "orange", "square", None),
        ),
        background=None,
    )
    assert parse_description("a green square on top, on a grey background") == Description(
        (DescribedObject(None, "green", "square", "top"),), "gray"
    )
    assert parse_description("a red circle on a white background").background == "white"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a large magenta circle", "expected a colour (one of red, green, blue, yellow, purple, orange) at position 8, found 'magenta'"),
        ("a red hexagon", "expected a shape (one of circle, square, triangle) at position 6, found 'hexagon'"),
        ("a red circle at the middle", "expected a position (one of top left, top, top right, left, center, right, bottom left, bottom, bottom right) at position 20, found 'middle'"),
        ("the red circle", "expected 'a' or 'an' at position 0, found 'the'"),
        ("", "expected 'a' or 'an' at position 0, found the end of the text"),
        ("a red circle, ", "expected 'a' or 'an' at position 14, found the end of the text"),
        ("a huge red circle", "expected a size or colour (one of small, medium, large, red, green, blue, yellow, purple, orange) at position 2, found 'huge'"),
        ("a red circle on a pink background", "expected a background (one of black, gray, white) at position 18, found 'pink'"),
        ("a red circle on a black", "expected 'background' at position 23, found the end of the text"),
        ("a red circle; a blue square", "expected ',' or the end of the text at position 12, found ';'"),
        ("a red circle on a black background, a blue square", "the background comes last) at position 34, found ','"),
    ],
)
def test_description_errors_name_the_position(text: str, message: str) -> None:
    with pytest.raises(ShapesTextError) as info:
        parse_description(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_description_of_no_object_parses_only_when_allowed() -> None:
    # What `describe` writes for an image in which the parser finds nothing: the latent grammar refuses it,
    # a reading of a sample (adherence) accepts it.
    nothing = describe(Scene((), "black"))
    assert nothing == "on a black background"
    assert parse_description(nothing, allow_empty=True) == Description((), "black")
    with pytest.raises(ShapesTextError, match="expected 'a' or 'an' at position 0"):
        parse_description(nothing)
    # allow_empty changes nothing else: a description with objects parses the same either way.
    text = "a red circle, on a gray background"
    assert parse_description(text, allow_empty=True) == parse_description(text)


def test_scene_from_image_reads_a_render_back() -> None:
    from kaleido.shapes import scene_from_image

    for scene in scenes(40, seed=4):
        image = torch.from_numpy(render(scene, 64)).permute(2, 0, 1).float() / 127.5 - 1.0
        read = scene_from_image(image)
        assert read.background == scene.background
        assert sorted((o.shape, o.color, o.size, o.position) for o in read.objects) == sorted(
            (o.shape, o.color, o.size, o.position) for o in scene.objects
        )
        # With the condition, an object of the named shape comes first (the data set's convention).
        assert condition_text(scene_from_image(image, condition_text(scene))) == condition_text(scene)
    assert scene_from_image(torch.from_numpy(render(Scene((), "white"), 32)).permute(2, 0, 1).float() / 127.5 - 1).objects == ()


def test_the_package_re_exports_the_common_names() -> None:
    import kaleido.shapes as package
    from kaleido.shapes import datamodule, parser, reader, text
    from kaleido.shapes import scenes as scenes_module

    assert package.ShapesDataset is ShapesDataset and package.Scene is Scene and package.render is render
    assert package.ShapesDataModule is datamodule.ShapesDataModule and package.parse_image is parser.parse_image
    assert package.scene_from_image is reader.scene_from_image and package.describe is text.describe
    assert package.SHAPES is scenes_module.SHAPES and package.parse_description is parse_description


def test_extractor_latents_are_computed_once_in_batches_and_follow_the_item() -> None:
    from typing import Any

    from kaleido.latents import LatentType
    from kaleido.latents.base import Extractor
    from kaleido.shapes.datamodule import ShapesDataModule

    calls: list[int] = []
    devices: list[str] = []

    class MeanColour(Extractor):  # the image's mean red level, as a count of 1/10ths
        def __call__(self, images: torch.Tensor, conditions: Any) -> list[int]:
            calls.append(len(images))
            return [int((img[0].mean() + 1) * 5) for img in images]

        def to(self, device: str) -> "MeanColour":
            devices.append(device)
            return self

    class RedLevel(LatentType):
        name = "red_level"

        def format(self, latent: int) -> str:
            return f"red {latent}"

        def parse(self, text: str) -> int:
            return int(text.split()[1])

        def build_extractor(self) -> Extractor:
            return MeanColour()

    data = ShapesDataModule(
        latents=[RedLevel()], shapes=ShapesConfig(resolution=16), num_train=300, num_val=4, batch_size=8, extract_device="cpu"
    )
    data.tokenizer  # noqa: B018 - builds the tokenizer from the training texts, extracting on the way
    train = data.dataset("train")
    items = [train[i] for i in (0, 137, 299)]
    assert calls == [256, 44]  # one pass over the split, in batches; the loader reuses it
    assert devices == ["cpu"]
    for item in items:
        assert item["latents"]["red_level"] == int((item["image"][0].mean() + 1) * 5)


def test_an_extractor_returning_too_few_latents_is_an_error() -> None:
    from kaleido.latents import LatentType
    from kaleido.latents.base import Extractor
    from kaleido.shapes.datamodule import extract_latents

    class DropsOne(Extractor):
        def __call__(self, images: torch.Tensor, conditions: object) -> list[int]:
            return [0] * (len(images) - 1)

    class Broken(LatentType):
        name = "broken"

        def format(self, latent: int) -> str:
            return str(latent)

        def parse(self, text: str) -> int:
            return int(text)

        def build_extractor(self) -> Extractor:
            return DropsOne()

    with pytest.raises(ValueError, match="returned 3 latents for 4 images"):
        extract_latents(ShapesDataset(4, ShapesConfig(resolution=16)), [Broken()])
