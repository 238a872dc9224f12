"""Latents from images of objects on a plain background (kaleido/latents/foreground.py) and from the
images' metadata (kaleido/latents/metadata.py), through `extract` and as a folder's adherence reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from kaleido.data.contract import data_extractor
from kaleido.data.folder import ImageFolderDataModule
from kaleido.extract import ExtractionError, extract
from kaleido.latents import BlobLatent, BoxLatent, TextLatent
from kaleido.latents.foreground import ForegroundBlobExtractor, ForegroundBoxExtractor, colour_name, parse_colour
from kaleido.latents.metadata import MetadataTextExtractor
from kaleido.metrics.adherence import adherence_readers


def _images(*arrays: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] arrays → the extractor contract, [B, 3, H, W] in [-1, 1]."""
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arrays])


def _canvas(size: int = 40, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    return np.full((size, size, 3), background, dtype=np.uint8)


def test_boxes_are_the_exact_pixel_edges_of_each_part_named_by_colour() -> None:
    image = _canvas()
    image[4:10, 6:20] = (220, 30, 30)    # red, the larger part
    image[24:32, 28:34] = (30, 60, 220)  # blue
    image[0, 39] = (0, 0, 0)             # one stray pixel: below min_area
    image[36, 2] = (250, 250, 245)       # near-white: within the threshold, background
    found = ForegroundBoxExtractor(components=True, grid=40, order="given")(_images(image), [""])[0]
    assert [(b.phrase, b.box) for b in found] == [("red", (6, 4, 20, 10)), ("blue", (28, 24, 34, 32))]
    whole = ForegroundBoxExtractor(grid=40, phrase="emoji")(_images(image), [""])[0]
    assert [(b.phrase, b.box) for b in whole] == [("emoji", (6, 4, 34, 32))]  # one object around all of it, specks left out
    assert ForegroundBoxExtractor()(_images(_canvas()), [""]) == [[]]  # nothing but background: the empty latent
    assert BoxLatent(grid=100).format([]) == "" and BoxLatent(grid=100).parse("") == []


def test_blob_is_the_second_moment_ellipse_of_the_ink() -> None:
    canvas = Image.new("RGB", (100, 100), (0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((20, 35, 79, 64), fill=(255, 255, 255))  # pixels 20..79 × 35..64: a = 30, b = 15 px
    found = ForegroundBlobExtractor(background="black", threshold=64, phrase="digit", grid=100)(_images(np.array(canvas)), [""])[0]
    (blob,) = found
    cx, cy, a, b, theta = blob.ellipse
    assert blob.phrase == "digit" and (cx, cy) == (50, 50) and abs(a - 30) <= 1 and abs(b - 15) <= 1 and theta in (0, 179)
    rotated = np.array(canvas.rotate(45))  # counter-clockwise on screen: the major axis points up-right
    (tilted,) = ForegroundBlobExtractor(background="black", threshold=64, phrase="digit", grid=100)(_images(rotated), [""])[0]
    assert abs(tilted.ellipse[4] - 135) <= 2  # theta from +x towards +y (down), so up-right is 135°


def test_colour_words_and_settings() -> None:
    words = {(250, 210, 40): "yellow", (220, 30, 30): "red", (30, 160, 60): "green", (40, 60, 220): "blue",
             (120, 60, 20): "brown", (245, 140, 30): "orange", (240, 120, 180): "pink", (130, 60, 180): "purple",
             (20, 20, 20): "black", (128, 128, 128): "gray", (250, 250, 250): "white"}
    assert {rgb: colour_name(rgb) for rgb in words} == words
    assert parse_colour("#ff8000") == (255, 128, 0) and parse_colour([1, 2, 3]) == (1, 2, 3) and parse_colour("black") == (0, 0, 0)
    for bad in ("#ff80", "orange", [1, 2], [0, 0, 256]):
        with pytest.raises(ValueError, match="a colour is"):
            parse_colour(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid phrase"):
        ForegroundBoxExtractor(phrase="a (b)")
    with pytest.raises(ValueError, match="threshold"):
        ForegroundBlobExtractor(threshold=300)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three emoji-like images with names in their metadata (one without a name)."""
    records = [("a.png", "Food", "hamburger", (200, 120, 30)), ("b.png", "Food", "pizza", (230, 60, 40)), ("c.png", "Nature", None, (40, 160, 60))]
    with open(tmp_path / "metadata.jsonl", "w") as lines:
        for file_name, category, name, colour in records:
            image = _canvas(32)
            image[8:24, 10:20] = colour
            Image.fromarray(image).save(tmp_path / file_name)
            lines.write(json.dumps({"file_name": file_name, "caption": category, **({"name": name} if name else {})}) + "\n")
    return tmp_path


def test_metadata_text_through_extract(folder: Path) -> None:
    with pytest.raises(ExtractionError, match=r"'c.png'.*no field 'name'"):
        extract("text", folder=folder, extractor=MetadataTextExtractor("{name}"), progress=False)
    extract("text", folder=folder, extractor=MetadataTextExtractor("{name}"), on_error="skip", progress=False)
    sidecar = [json.loads(line) for line in (folder / "latents/text.jsonl").read_text().splitlines()]
    assert sidecar == [{"id": "a.png", "latent": "hamburger"}, {"id": "b.png", "latent": "pizza"}]
    assert "c.png" in (folder / "latents/text.errors.jsonl").read_text()
    with pytest.raises(ValueError, match="not from generated samples"):
        MetadataTextExtractor()(torch.zeros(1, 3, 8, 8), ["a"])  # samples have no metadata
    with pytest.raises(ValueError, match="names no metadata field"):
        MetadataTextExtractor("a fixed text")


def test_a_folder_reads_samples_back_with_its_readers(folder: Path) -> None:
    reader = ForegroundBoxExtractor(grid=100)
    extract(BoxLatent(grid=100), folder=folder, extractor=reader, progress=False)
    data = ImageFolderDataModule(root=str(folder), latents=[BoxLatent(grid=100)], image_size=32, val_fraction=0.0, readers={"box": reader})
    box = data.latent_types[0]
    assert data_extractor(data, box) is reader
    readers = adherence_readers(data.latent_types, data)
    assert readers.extractors == {"box": reader} and not readers.skipped
    first = data.images("train")[0]
    found = reader(first["image"][None], [first["condition"]])[0]
    assert box.adherence(data.ground_truth("train", box)[0], found)["iou"] == 1.0  # a training image follows its own z
    with pytest.raises(ValueError, match=r"readers name latent types this data does not serve: \['blob'\]"):
        ImageFolderDataModule(root=str(folder), latents=[BoxLatent(grid=100)], readers={"blob": ForegroundBlobExtractor()})
    assert adherence_readers([TextLatent()], data).extractors == {}  # free text: skipped with its line


def test_readers_come_from_yaml(folder: Path, tmp_path: Path) -> None:
    from kaleido.data.contract import build_datamodule

    extract(BlobLatent(grid=100, max_objects=1), folder=folder, extractor=ForegroundBlobExtractor(max_objects=1), progress=False)
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: kaleido.data.folder.ImageFolderDataModule\n  init_args:\n"
        f"    root: {folder}\n    image_size: 32\n    latents:\n"
        "      - {class_path: kaleido.latents.BlobLatent, init_args: {grid: 100, max_objects: 1}}\n"
        "    readers:\n      blob: {class_path: kaleido.latents.foreground.ForegroundBlobExtractor, init_args: {max_objects: 1, threshold: 40}}\n"
    )
    data = build_datamodule(config)
    reader = data.latent_extractor(data.latent_types[0])
    assert isinstance(reader, ForegroundBlobExtractor) and reader.threshold == 40 and reader.latent.max_objects == 1
