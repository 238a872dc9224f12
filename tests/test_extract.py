"""`kaleido extract`: sidecars from an image folder (or any data module), resumable, failures named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from jsonargparse import CLI
from torch import Tensor

from kaleido.__main__ import main
from kaleido.devices import resolve_device
from kaleido.extract import ExtractionError, extract
from kaleido.latents import BoxLatent, Extractor
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesDataset, ShapesTextLatent, describe, export_shapes
from kaleido.shapes.latents import ShapesBoxExtractor
from kaleido.shard import _sidecar_types

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


# -- split over processes (--num_parts / --part, WORLD_SIZE / RANK) and merged -----------------------------
TEXT_SPEC = json.dumps({"class_path": "kaleido.shapes.ShapesTextLatent"})


def test_parts_merged_give_the_single_process_sidecar(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single = extract(TEXT, folder=folder, output=tmp_path / "single", batch_size=4, progress=False)
    split = tmp_path / "split"
    extract(TEXT, folder=folder, output=split, limit=5, progress=False)  # a sidecar begun before the split: kept
    part0 = extract(TEXT, folder=folder, output=split, num_parts=2, part=0, batch_size=3, num_workers=2, progress=False)
    part1 = extract(TEXT, folder=folder, output=split, num_parts=2, part=1, batch_size=3, progress=False)
    assert (part0, part1) == (split / "text.part-0-of-2.jsonl", split / "text.part-1-of-2.jsonl")
    assert [r["id"] for r in lines(part0)] == file_names(folder)[6::2]  # positions ≡ 0 mod 2, past those done
    out = capsys.readouterr().out
    assert "text part 0 of 2: extracted 7, skipped 0, already done 3" in out and "--merge true" in out
    assert _sidecar_types(split) == ["text"]  # what `shard` takes by default: no part for a sidecar of its own
    assert extract(TEXT, folder=folder, output=split, merge=True, progress=False) == split / "text.jsonl"
    assert (split / "text.jsonl").read_bytes() == single.read_bytes()  # the same lines in the same order
    assert sorted(p.name for p in split.iterdir()) == ["text.jsonl"]  # the parts went, after the merge
    assert "text: merged 2 parts: 20 latents, 0 failed ->" in capsys.readouterr().out


class StopAfter(Extractor):
    """The shapes text reader, interrupted (as by Ctrl-C or a killed job) at its call number ``calls``."""

    def __init__(self, calls: int) -> None:
        self.reader, self.calls = TEXT.build_extractor(), calls

    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list:
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.reader(images, conditions)


def test_an_interrupted_part_resumes_without_duplicates(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyboardInterrupt):
        extract(TEXT, folder=folder, extractor=StopAfter(3), num_parts=2, part=1, batch_size=2, progress=False)
    part = folder / "latents/text.part-1-of-2.jsonl"
    assert [r["id"] for r in lines(part)] == file_names(folder)[1::2][:4]  # two batches written, the third lost
    extract(TEXT, folder=folder, num_parts=2, part=1, batch_size=2, progress=False)
    assert "text part 1 of 2: extracted 6, skipped 0, already done 4" in capsys.readouterr().out
    assert [r["id"] for r in lines(part)] == file_names(folder)[1::2]
    extract(TEXT, folder=folder, num_parts=2, part=0, progress=False)
    extract(TEXT, folder=folder, merge=True, progress=False)
    assert [r["id"] for r in lines(folder / "latents/text.jsonl")] == file_names(folder)


def test_the_launchers_variables_pick_the_part(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's WORLD_SIZE / RANK through the command line, in a process of its own."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kaleido", "extract", "--folder", str(folder), "--latent", TEXT_SPEC, "--progress", "false"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "text part 1 of 2: extracted 10, skipped 0, already done 0" in result.stdout
    assert [r["id"] for r in lines(folder / "latents/text.part-1-of-2.jsonl")] == file_names(folder)[1::2]
    # explicit arguments win over the variables; out-of-range variables are named; a merge runs alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    extract(TEXT, folder=folder, num_parts=2, part=0, progress=False)
    assert [r["id"] for r in lines(folder / "latents/text.part-0-of-2.jsonl")] == file_names(folder)[::2]
    with pytest.raises(ValueError, match="runs in one process"):
        extract(TEXT, folder=folder, merge=True, progress=False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"^RANK must be in 0\.\.1 with WORLD_SIZE 2, got 2$"):
        extract(TEXT, folder=folder, progress=False)
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="WORLD_SIZE is set but RANK is not"):
        extract(TEXT, folder=folder, progress=False)


def test_auto_device_takes_the_local_rank_s_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [resolve_device("auto", rank) for rank in (None, 0, 3, 5)] == ["cuda", "cuda:0", "cuda:3", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 3) == "cuda"  # one GPU visible (e.g. srun --gpus-per-task 1): it is this one


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--num_parts", "2", "--part", "2"], "error: --part must be in 0..1 with --num_parts 2, got 2"),
        (["--num_parts", "0", "--part", "0"], "error: --num_parts must be >= 1, got 0"),
        (["--part", "1"], "error: give --num_parts N and --part I together, or neither"),
        (["--merge", "true", "--part", "1", "--num_parts", "2"], "error: --merge true joins every part file found"),
    ],
)
def test_bad_parts_are_refused_in_one_line(folder: Path, arguments: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--folder", str(folder), "--latent", TEXT_SPEC, *arguments])
    assert str(stop.value).startswith(message) and "\n" not in str(stop.value)
    assert not (folder / "latents").exists()  # refused before anything was written


def test_merge_refuses_missing_and_doubled_images_and_other_splits(folder: Path) -> None:
    names = file_names(folder)
    extract(TEXT, folder=folder, num_parts=2, part=0, progress=False)
    with pytest.raises(ExtractionError, match=rf"^cannot merge the 2 parts of text in .*: 10 images missing \('{names[1]}', "
                                              rf"'{names[3]}', '{names[5]}', \.\.\.\), of parts 1: run them \(again\)$"):
        extract(TEXT, folder=folder, merge=True, progress=False)
    assert not (folder / "latents/text.jsonl").exists()  # nothing changed
    with pytest.raises(ValueError, match=r"holds text\.part-I-of-2\.jsonl files of a run split in 2, and this run is split in 3"):
        extract(TEXT, folder=folder, num_parts=3, part=0, progress=False)

    part1 = extract(TEXT, folder=folder, num_parts=2, part=1, progress=False)
    part0 = folder / "latents/text.part-0-of-2.jsonl"
    with part1.open("a") as file:  # an image of part 0 also in part 1
        file.write(part0.read_text().splitlines()[2] + "\n")
    with pytest.raises(ExtractionError, match=rf"1 images extracted twice \('{names[4]}' in text\.part-0-of-2\.jsonl and text\.part-1-of-2\.jsonl\)$"):
        extract(TEXT, folder=folder, merge=True, progress=False)
    part1.write_text("".join(line + "\n" for line in part1.read_text().splitlines()[:-1]))

    # a merge cut short after writing the sidecar (the parts still there) is simply run again
    (folder / "latents/text.jsonl").write_text(part0.read_text())
    extract(TEXT, folder=folder, merge=True, progress=False)
    assert [r["id"] for r in lines(folder / "latents/text.jsonl")] == names


def test_failures_are_counted_and_named_per_part_and_merged(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = file_names(folder)
    original = (folder / names[3]).read_bytes()
    (folder / names[3]).write_bytes(b"not a png at all")  # position 3: part 1
    for index in (0, 1):
        extract(TEXT, folder=folder, num_parts=2, part=index, on_error="skip", num_workers=1, progress=False)
    out = capsys.readouterr().out
    assert f"text part 1 of 2: extracted 9, skipped 1 (unreadable image: 1; see {folder / 'latents/text.part-1-of-2.errors.jsonl'})" in out
    assert f"\n  '{names[3]}': unreadable image: cannot read image" in out
    extract(TEXT, folder=folder, merge=True, progress=False)
    out = capsys.readouterr().out
    assert "text: merged 2 parts: 19 latents, 1 failed (unreadable image: 1; see" in out and f"\n  '{names[3]}': unreadable image" in out
    assert [(e["id"], e["kind"]) for e in lines(folder / "latents/text.errors.jsonl")] == [(names[3], "unreadable image")]
    assert sorted(p.name for p in (folder / "latents").iterdir()) == ["text.errors.jsonl", "text.jsonl"]
    (folder / names[3]).write_bytes(original)  # fixed: a plain run retries it and clears the log
    extract(TEXT, folder=folder, progress=False)
    assert [r["id"] for r in lines(folder / "latents/text.jsonl")] == [n for n in names if n != names[3]] + [names[3]]
    assert not (folder / "latents/text.errors.jsonl").exists()
