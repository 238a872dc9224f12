"""`kaleido extract`: sidecars from an image folder (or any data module), resumable, failures named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from jsonargparse import CLI
from torch import Tensor

from kaleido.extract import ExtractionError, extract
from kaleido.latents import BoxLatent, Extractor
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesDataset, ShapesTextLatent, describe, export_shapes
from kaleido.shapes.latents import ShapesBoxExtractor

NUM_IMAGES = 20
SHAPES = ShapesConfig(resolution=32, max_objects=2)
TEXT = ShapesTextLatent()
BOXES = ShapesBoxExtractor()  # the folder holds shapes renders: the analytic parser reads their boxes


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 rendered shapes scenes as PNGs + metadata.jsonl (captions = conditions); copy before changing it."""
    return export_shapes(tmp_path_factory.mktemp("shapes_folder"), NUM_IMAGES, SHAPES)


@pytest.fixture
def folder(shapes_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shapes_folder, tmp_path / "images"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def file_names(folder: Path) -> list[str]:
    return [record["file_name"] for record in lines(folder / "metadata.jsonl")]


def test_text_and_box_sidecars_hold_one_parsable_line_per_image(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text_path = extract(TEXT, folder=folder, batch_size=8, progress=False)
    box_path = extract("box", folder=folder, extractor=BOXES, batch_size=8, progress=False)
    assert (text_path, box_path) == (folder / "latents/text.jsonl", folder / "latents/box.jsonl")
    assert "text: extracted 20, skipped 0, already done 0" in capsys.readouterr().out
    for path, latent_type in ((text_path, TEXT), (box_path, BoxLatent())):
        records = lines(path)
        assert [r["id"] for r in records] == file_names(folder)
        for record in records:
            assert latent_type.format(latent_type.parse(record["latent"])) == record["latent"]
    # the analytic extractor reads the PNGs back to the scenes' descriptions (the order of two objects
    # of the shape the condition names may differ: the condition does not say which one is first)
    truth = [describe(ShapesDataset(NUM_IMAGES, SHAPES).scene(i)) for i in range(NUM_IMAGES)]
    assert [set(r["latent"].split(", ")) for r in lines(text_path)] == [set(t.split(", ")) for t in truth]
    assert not (folder / "latents/text.errors.jsonl").exists()


def test_interrupted_run_resumes_without_duplicates(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = extract(TEXT, folder=folder, batch_size=4, limit=7, progress=False)
    first = lines(path)
    assert [r["id"] for r in first] == file_names(folder)[:7]
    extract(TEXT, folder=folder, batch_size=4, progress=False)
    assert "extracted 13, skipped 0, already done 7" in capsys.readouterr().out
    records = lines(path)
    assert records[:7] == first and [r["id"] for r in records] == file_names(folder)


def test_a_truncated_last_line_is_dropped_and_redone(folder: Path) -> None:
    path = extract(TEXT, folder=folder, progress=False)
    full = path.read_text()
    path.write_text(full[: len(full) - 15])  # a write cut short in the last line
    with pytest.warns(UserWarning, match="unterminated last line"):
        extract(TEXT, folder=folder, progress=False)
    assert path.read_text() == full


def test_a_malformed_complete_line_is_an_error_naming_the_line(folder: Path) -> None:
    path = extract(TEXT, folder=folder, limit=3, progress=False)
    path.write_text(path.read_text().replace('"latent"', '"latnet"', 1))
    with pytest.raises(ValueError, match=r"text\.jsonl, line 1: expected"):
        extract(TEXT, folder=folder, progress=False)


def test_a_corrupt_image_is_skipped_and_logged_or_raises_naming_the_file(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = file_names(folder)[3]
    original = (folder / bad).read_bytes()
    (folder / bad).write_bytes(b"not a png at all")
    with pytest.raises(ExtractionError, match=rf"unreadable image for '{bad}': cannot read image .*{bad}"):
        extract("box", folder=folder, extractor=BOXES, batch_size=8, progress=False)

    path = extract("box", folder=folder, extractor=BOXES, batch_size=8, on_error="skip", progress=False)
    assert "extracted 20" not in (out := capsys.readouterr().out)
    assert "box: extracted 19, skipped 1 (unreadable image: 1; see" in out
    assert bad not in [r["id"] for r in lines(path)] and len(lines(path)) == 19
    errors = lines(folder / "latents/box.errors.jsonl")
    assert [(e["id"], e["kind"]) for e in errors] == [(bad, "unreadable image")] and "cannot read image" in errors[0]["error"]

    # fixed: the next run retries it, and the log of resolved failures goes away
    (folder / bad).write_bytes(original)
    extract("box", folder=folder, extractor=BOXES, on_error="skip", progress=False)
    assert len(lines(path)) == 20 and not (folder / "latents/box.errors.jsonl").exists()


class FlakyExtractor(Extractor):
    """Fails on one condition, returns text the type cannot read back for another; a batch with either fails."""

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[str]:
        if "a triangle" in conditions:
            raise RuntimeError("triangles break me")
        return ["a <z:text> token" if c == "a square" else "fine" for c in conditions]


def test_extractor_failures_are_isolated_to_their_images(folder: Path) -> None:
    conditions = [r["caption"] for r in lines(folder / "metadata.jsonl")]
    path = extract("text", folder=folder, extractor=FlakyExtractor(), batch_size=8, on_error="skip", progress=False)
    assert [r["id"] for r in lines(path)] == [n for n, c in zip(file_names(folder), conditions) if c == "a circle"]
    kinds = {e["id"]: e["kind"] for e in lines(folder / "latents/text.errors.jsonl")}
    expected = {"a triangle": "extractor error", "a square": "invalid latent"}
    assert kinds == {n: expected[c] for n, c in zip(file_names(folder), conditions) if c != "a circle"}
    with pytest.raises(ExtractionError, match="(extractor error|invalid latent) for '"):
        extract("text", folder=folder, extractor=FlakyExtractor(), output=folder / "other", progress=False)


class DeviceRecorder(Extractor):
    """Records where extract put it and which device its images arrive on."""

    def __init__(self) -> None:
        self.device: str | None = None
        self.seen: set[str] = set()

    def to(self, device: str) -> DeviceRecorder:
        self.device = device
        return self

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[str]:
        self.seen.add(images.device.type)
        return ["fine"] * len(conditions)


def test_the_extractor_is_moved_to_the_device_before_any_image(folder: Path) -> None:
    recorder = DeviceRecorder()
    extract("text", folder=folder, extractor=recorder, device="cpu", output=folder / "on_cpu", progress=False)
    assert recorder.device == "cpu" and recorder.seen == {"cpu"}
    recorder = DeviceRecorder()
    extract("text", folder=folder, extractor=recorder, output=folder / "auto", progress=False)
    assert recorder.device == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, expected in [("gpu", "is not a device"), ("meta", "is not supported")]:
        with pytest.raises(ValueError, match=expected):
            extract("text", folder=folder, extractor=DeviceRecorder(), device=bad, output=folder / "bad", progress=False)
    assert not (folder / "bad").exists()  # refused before anything was written
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            extract("text", folder=folder, extractor=DeviceRecorder(), device="cuda", output=folder / "bad", progress=False)


def test_a_type_without_a_builtin_extractor_says_what_to_do(folder: Path) -> None:
    with pytest.raises(ExtractionError, match="--extractor"):
        extract("text", folder=folder, progress=False)  # free text: no built-in extractor
    with pytest.raises(ExtractionError, match="DetectorBoxExtractor"):
        extract("box", folder=folder, progress=False)


def test_a_data_module_source_matches_its_items_and_reads_with_its_own_extractor(tmp_path: Path) -> None:
    data = ShapesDataModule(latents=["box"], shapes=SHAPES, num_val=6)
    path = extract("box", data=data, split="val", output=tmp_path, progress=False)  # no --extractor: the data's own
    records = lines(path)
    assert [r["id"] for r in records] == list(range(6))
    box = BoxLatent()
    for record, item in zip(records, data.dataset("val")):
        got, want = box.parse(record["latent"]), item["latents"]["box"]
        assert [b.phrase for b in got] == [b.phrase for b in want]
        assert all(abs(g - w) <= 40 for gb, wb in zip(got, want) for g, w in zip(gb.box, wb.box))  # pixel rounding


def test_the_source_must_be_named_once(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of --folder"):
        extract("box")
    with pytest.raises(ValueError, match="exactly one of --folder"):
        extract("box", folder=folder, data=ShapesDataModule())
    with pytest.raises(ValueError, match="need --output"):
        extract("box", data=ShapesDataModule(num_train=2))


def test_a_data_module_without_the_contract_is_named(tmp_path: Path) -> None:
    from lightning.pytorch import LightningDataModule

    with pytest.raises(TypeError, match="LightningDataModule lacks .*images"):
        extract("box", data=LightningDataModule(), output=tmp_path, progress=False)


def test_command_line_arguments(folder: Path, tmp_path: Path) -> None:
    """The signature as the CLI sees it (``python -m kaleido extract`` runs it through jsonargparse)."""
    spec = json.dumps({"class_path": "kaleido.shapes.ShapesTextLatent"})
    path = CLI(extract, as_positional=False, args=["--folder", str(folder), "--latent", spec, "--limit", "5", "--progress", "false"])
    assert len(lines(path)) == 5
    path = CLI(extract, as_positional=False, args=["--folder", str(folder), "--latent", "box", "--on_error", "skip",
                                                   "--extractor", "kaleido.shapes.latents.ShapesBoxExtractor",
                                                   "--extractor.grid", "100", "--image_size", "16", "--progress", "false"])
    assert len(lines(path)) == 20
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  class_path: kaleido.shapes.ShapesDataModule\n  init_args: {num_test: 3, shapes: {resolution: 32}}\n")
    out = folder / "shapes_latents"
    CLI(extract, as_positional=False, args=["--data_config", str(config), "--split", "test",
                                            "--output", str(out), "--latent", "box", "--progress", "false"])
    assert [r["id"] for r in lines(out / "box.jsonl")] == [0, 1, 2]
