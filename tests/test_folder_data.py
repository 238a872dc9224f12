"""ImageFolderDataModule: metadata + images + extracted sidecars → batches, and `fit` on a folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from kaleido.cli import cli_main
from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.folder_format import FolderDataError, load_image
from kaleido.extract import extract
from kaleido.latents import BoxLatent
from kaleido.shapes import ShapesConfig, ShapesTextLatent, export_shapes
from kaleido.shapes.latents import ShapesBoxExtractor

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ShapesConfig(resolution=32, max_objects=2)
TEXT = ShapesTextLatent()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 shapes PNGs with text and box sidecars; copy before changing it."""
    root = export_shapes(tmp_path_factory.mktemp("folder"), 20, SHAPES)
    extract(TEXT, folder=root, progress=False)
    extract("box", folder=root, extractor=ShapesBoxExtractor(), progress=False)  # shapes renders: the parser reads boxes
    return root


@pytest.fixture
def folder(extracted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(extracted, tmp_path / "images"))


def datamodule(root: Path, **kwargs: object) -> ImageFolderDataModule:
    settings: dict = dict(root=str(root), latents=[TEXT, "box"], image_size=16, val_fraction=0.2, batch_size=4)
    settings.update(kwargs)
    return ImageFolderDataModule(**settings)


def test_batches_carry_images_conditions_and_latents(extracted: Path) -> None:
    data = datamodule(extracted)
    assert data.tokenizer.latent_names == ["text", "box"] and data.image_size == 16
    train, val = data.dataset("train"), data.dataset("val")
    assert len(train) + len(val) == 20 and len(val) >= 1
    assert [i.file_name for i in val.items] == [i.file_name for i in datamodule(extracted).dataset("val").items]  # fixed split

    item = train[0]
    metadata = {r["file_name"]: r for r in map(json.loads, (extracted / "metadata.jsonl").read_text().splitlines())}
    boxes = {r["id"]: r["latent"] for r in map(json.loads, (extracted / "latents/box.jsonl").read_text().splitlines())}
    assert item["condition"] == metadata[item["id"]]["caption"]
    assert item["latents"]["box"] == BoxLatent().parse(boxes[item["id"]])
    assert item["image"].shape == (3, 16, 16) and (item["image"] == load_image(extracted / item["id"], 16)).all()

    batch = next(iter(data.train_dataloader()))
    assert {"id", "image", "condition", "condition_ids", "condition_mask", "latent_ids", "latent_mask", "latent_text"} <= set(batch)
    assert batch["image"].shape == (4, 3, 16, 16) and -1.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
    assert batch["latent_ids"].shape[0] == 4 and batch["latent_text"][0].startswith("text: ")
    assert len(next(iter(data.val_dataloader()))["id"]) == min(4, len(val))


def test_labels_fill_the_template_and_images_are_center_cropped(tmp_path: Path) -> None:
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (10, 0, 30, 20))  # red centre square, blue sides that the crop removes
    wide.save(tmp_path / "wide.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "wide.png", "label": "tabby cat"}) + "\n")
    data = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.0, condition_template="a photo of a {label}")
    item = data.dataset("train")[0]
    assert item["condition"] == "a photo of a tabby cat" and item["latents"] == {}
    assert item["image"].shape == (3, 8, 8)
    assert item["image"][0].min() > 0.9 and item["image"][2].max() < -0.9  # all red


def test_images_without_latents_raise_naming_them_and_the_command(folder: Path) -> None:
    sidecar = folder / "latents/text.jsonl"
    kept = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join(kept[:-3]) + "\n")
    missing = json.loads(kept[-1])["id"]
    with pytest.raises(FolderDataError, match=rf"3 image\(s\).*no latent in .*text\.jsonl.*{missing}") as error:
        datamodule(folder).load()
    assert "python -m kaleido extract --folder" in str(error.value) and '"class_path": "kaleido.shapes.latents.ShapesTextLatent"' in str(error.value)

    with pytest.warns(UserWarning, match="skipped 3 image"):
        data = datamodule(folder, on_missing="skip")
        data.setup("fit")
    assert len(data.dataset("train")) + len(data.dataset("val")) == 17
    assert sum(map(len, data.skipped.values())) == 3


def test_a_missing_sidecar_names_the_command_that_fills_it(folder: Path) -> None:
    with pytest.raises(FolderDataError, match=r"blob\.jsonl does not exist\. Fill it with: python -m kaleido extract --folder .* --latent blob$"):
        datamodule(folder, latents=["blob"]).load()


def test_corrupt_and_missing_images_raise_or_are_skipped(folder: Path) -> None:
    names = [json.loads(line)["file_name"] for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / names[2]).write_bytes(b"\x89PNG garbage")
    (folder / names[5]).unlink()
    with pytest.raises(FolderDataError, match=rf"2 image\(s\).*{names[2]} \(unreadable.*{names[5]} \(missing\)"):
        datamodule(folder).load()
    with pytest.warns(UserWarning, match="skipped 2 image"):
        data = datamodule(folder, on_missing="skip")
        data.load()
    assert len(data.dataset("train")) + len(data.dataset("val")) == 18


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"metadata\.jsonl, line 3: not valid JSON"),
        ('{"file_name": "x.png"}', r"line 3: needs a 'caption' or a 'label'"),
        ('{"caption": "a circle"}', r"line 3: needs a 'file_name'"),
        ('{"file_name": "000000.png", "caption": "a circle"}', r"line 3: file_name '000000.png' is already listed on line 1"),
    ],
)
def test_malformed_metadata_names_the_line(folder: Path, line: str, message: str) -> None:
    path = folder / "metadata.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([*rows[:2], line, *rows[2:]]) + "\n")
    with pytest.raises(FolderDataError, match=message):
        datamodule(folder).load()


def test_fit_on_a_folder_through_the_cli(extracted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["kaleido"])  # LightningCLI warns when pytest's own arguments are there too
    tiny = yaml.safe_load((ROOT / "tests/configs/tiny_kaleido.yaml").read_text())
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 2, "limit_val_batches": 1, "val_check_interval": 2,
            "log_every_n_steps": 1, "enable_model_summary": False, "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
        },
        "model": tiny["model"],
        "data": {
            "class_path": "kaleido.data.folder.ImageFolderDataModule",
            "init_args": {"root": str(extracted), "latents": [TEXT.spec(), "box"], "image_size": 16, "val_fraction": 0.2, "batch_size": 4},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = cli_main(["fit", "--config", str(tmp_path / "config.yaml")])
    assert cli.trainer.global_step == 2
    assert cli.model.tokenizer.latent_names == ["text", "box"]
    assert list(tmp_path.rglob("*.ckpt")), "fit wrote no checkpoint"
