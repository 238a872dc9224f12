"""`python -m kaleido shard` and ShardDataModule: a folder's items, streamed from litdata shards, equal to the
folder data module's; split over ranks (two gloo processes) and workers; resumed mid-epoch from a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.utilities import CombinedLoader

from kaleido.__main__ import main
from kaleido.data.contract import require_data
from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.folder_format import FolderDataError
from kaleido.data.shards import MANIFEST, ShardDataModule
from kaleido.extract import extract
from kaleido.shapes import ShapesConfig, ShapesTextLatent, export_shapes
from kaleido.shard import shard

TEXT = ShapesTextLatent()
NUM_IMAGES, VAL_FRACTION = 38, 0.1  # the file-name hash puts 6 in val: 32 training items, 8 batches of 4
NUM_TRAIN, BATCH = 32, 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """38 shapes PNGs with a text sidecar; copy before changing it."""
    root = export_shapes(tmp_path_factory.mktemp("folder"), NUM_IMAGES, ShapesConfig(resolution=16, max_objects=1))
    extract(TEXT, folder=root, progress=False)
    return root


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shard(folder, tmp_path_factory.mktemp("shards") / "out", latents=[TEXT.spec()], val_fraction=VAL_FRACTION, num_workers=2)


def shard_data(root: Path, **kwargs: object) -> ShardDataModule:
    settings: dict = dict(root=str(root), latents=[TEXT], image_size=8, batch_size=BATCH, seed=0)
    settings.update(kwargs)
    return ShardDataModule(**settings)


def test_shards_hold_the_folder_modules_items_item_by_item(folder: Path, shards: Path) -> None:
    data = ImageFolderDataModule(str(folder), latents=[TEXT], image_size=8, val_fraction=VAL_FRACTION, batch_size=BATCH)
    streamed = require_data(shard_data(shards), "test")
    for split in ("train", "val"):
        expected, got = data.dataset(split), streamed.images(split)
        assert len(expected) == len(got) == {"train": NUM_TRAIN, "val": NUM_IMAGES - NUM_TRAIN}[split]
        for index in range(len(expected)):
            a, b = expected[index], got[index]
            assert (a["id"], a["condition"], a["latents"]) == (b["id"], b["condition"], b["latents"])
            assert torch.equal(a["image"], b["image"]), a["id"]  # the same bytes through the same transform
        assert streamed.conditions(split, 5) == data.conditions(split, 5)
        assert streamed.ground_truth(split, TEXT, 5) == data.ground_truth(split, TEXT, 5)
    assert streamed.identity() == data.identity()  # one image set: the FID reference cache is shared
    conditions = data.conditions("train")
    assert torch.equal(streamed.tokenizer.encode_conditions(conditions)[0], data.tokenizer.encode_conditions(conditions)[0])
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["latents"] == {"text": TEXT.spec()} and manifest["splits"] == {"train": NUM_TRAIN, "val": NUM_IMAGES - NUM_TRAIN}
    assert manifest["source"] == str(folder.resolve())


def test_latent_types_are_checked_against_the_manifest(shards: Path) -> None:
    with pytest.raises(FolderDataError, match=r"holds no 'box' latents \(it holds \['text'\]\)"):
        shard_data(shards, latents=["box"]).setup()
    with pytest.raises(FolderDataError, match=r"the 'text' latents were written as .*ShapesTextLatent.*the config asks for .*TextLatent"):
        shard_data(shards, latents=["text"]).setup()  # the free-text type, not the shapes grammar
    assert len(shard_data(shards, latents=[]).images("train")) == NUM_TRAIN  # a baseline may read shards with latents


def _ids(batches: object) -> list[str]:
    return [item for batch in batches for item in batch["id"]]  # type: ignore[attr-defined]


def test_training_loader_resumes_mid_epoch_from_a_checkpoint(shards: Path, tmp_path: Path) -> None:
    loader = shard_data(shards, num_workers=2).train_dataloader()
    assert len(loader) == NUM_TRAIN // BATCH
    iterator = iter(loader)
    first = _ids(next(iterator) for _ in range(3))
    # what Lightning does: the loaders' state_dicts in the checkpoint, loaded (weights_only) before a resumed run iterates
    torch.save({"loops": {"combined_loader": CombinedLoader(loader)._state_dicts()}}, tmp_path / "last.ckpt")
    del iterator, loader
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["loops"]["combined_loader"]
    resumed = shard_data(shards, num_workers=2).train_dataloader()
    combined = CombinedLoader(resumed)
    combined._load_state_dicts(saved)
    rest = _ids(resumed)
    epoch = first + rest
    assert len(first) == 3 * BATCH and len(epoch) == len(set(epoch)) == NUM_TRAIN, (first, rest)
    assert set(epoch) == {item.id for item in shard_data(shards).texts("train")}
    again = _ids(resumed)  # the next epoch is whole, in another order
    assert sorted(again) == sorted(epoch) and again != epoch


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_resume_onto_another_number_of_workers_repeats_nothing(shards: Path, before: int, after: int) -> None:
    """litdata's elastic resume re-stripes the rest of the epoch over the new workers: no item twice; what is
    left out is only what drop_last leaves out of each worker's share (fewer than a batch per worker)."""
    loader = shard_data(shards, num_workers=before).train_dataloader()
    iterator = iter(loader)
    first = _ids(next(iterator) for _ in range(3))
    state = CombinedLoader(loader)._state_dicts()
    del iterator, loader
    resumed = shard_data(shards, num_workers=after).train_dataloader()
    CombinedLoader(resumed)._load_state_dicts(state)
    epoch = first + _ids(resumed)
    assert len(epoch) == len(set(epoch))
    assert 0 <= NUM_TRAIN - len(epoch) < after * (BATCH - 1) + 1 and len(epoch) % BATCH == 0


def _rank_items(rank: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["KALEIDO_TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loader = shard_data(Path(shards), num_workers=1).train_dataloader()
        Path(out, f"rank{rank}.json").write_text(json.dumps({"batches": len(loader), "ids": _ids(loader)}))
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_see_disjoint_items_covering_the_epoch(shards: Path, tmp_path: Path) -> None:
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    os.environ["KALEIDO_TEST_PORT"] = str(find_free_network_port())
    # fork: the ranks inherit the imports (spawn would import torch and kaleido twice more, ~20 s on 2 cores)
    mp.start_processes(_rank_items, args=(str(shards), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    first, second = (set(r["ids"]) for r in ranks)
    assert [len(r["ids"]) for r in ranks] == [NUM_TRAIN // 2] * 2 and [r["batches"] for r in ranks] == [NUM_TRAIN // 2 // BATCH] * 2
    assert not first & second and first | second == {item.id for item in shard_data(shards).texts("train")}


def test_the_command_line_and_bad_folders(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(folder, tmp_path / "images"))
    with open(copy / "latents/text.jsonl", "a", encoding="utf-8") as sidecar:
        sidecar.write(json.dumps({"id": "gone.png", "latent": "a large red circle in the center, on a white background"}) + "\n")
    latent = f"--latents=[{json.dumps(TEXT.spec())}]"
    main(["shard", "--folder", str(copy), "--output", str(tmp_path / "s"), latent, "--num_workers", "1", "--val_fraction", "0.1"])
    assert "train 32, val 6 items, latents ['text']" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["ignored_sidecar_lines"] == {"text": 1}
    with pytest.raises(SystemExit, match="exists; pass --overwrite true"):
        main(["shard", "--folder", str(copy), "--output", str(tmp_path / "s"), latent])

    (copy / "000003.png").unlink()  # the folder module's own checks, with its own words
    with pytest.raises(SystemExit, match=r"1 image\(s\) of .*: missing or unreadable image files: 000003.png \(missing\)"):
        main(["shard", "--folder", str(copy), "--output", str(tmp_path / "t"), latent])
    lines = (copy / "metadata.jsonl").read_text().splitlines()
    (copy / "metadata.jsonl").write_text("\n".join([json.dumps({"file_name": "000001.png"}), *lines[4:]]) + "\n")
    with pytest.raises(SystemExit, match=r"metadata.jsonl, line 1: needs a 'caption' or a 'label' field"):
        main(["shard", "--folder", str(copy), "--output", str(tmp_path / "t"), latent])
    assert not (tmp_path / "t").exists()


def test_fit_from_shards_resumes_mid_epoch_through_the_cli(shards: Path, tmp_path: Path) -> None:
    """The documented override turns a config's data into shards; a run stopped at step 4 of 8 and resumed
    from its checkpoint trains on the epoch's other items, each once."""
    root = Path(__file__).resolve().parents[1]
    record = tmp_path / "batches.jsonl"

    def fit(max_steps: int, *extra: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "kaleido", "fit", "--config", str(root / "tests/configs/tiny_kaleido.yaml"),
             "--data.class_path", "kaleido.data.shards.ShardDataModule", "--data.init_args.root", str(shards),
             "--data.init_args.image_size", "16", "--data.init_args.batch_size", str(BATCH), "--data.init_args.num_workers", "1",
             "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "0", "--trainer.max_steps", str(max_steps),
             "--trainer.callbacks+=probes.RecordBatches", f"--trainer.callbacks.path={record}", *extra],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])},
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    fit(4)
    fit(NUM_TRAIN // BATCH, "--ckpt_path", "last")
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["start"] for r in records if "start" in r] == [0, 4]  # the second run began at the checkpoint's step
    steps = [r["step"] for r in records if "ids" in r]
    assert steps == list(range(1, NUM_TRAIN // BATCH + 1))
    epoch = [i for r in records if "ids" in r for i in r["ids"]]
    assert len(epoch) == len(set(epoch)) == NUM_TRAIN


def test_without_litdata_the_command_says_how_to_install_it(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)  # as if it were not installed
    with pytest.raises(SystemExit, match=r'^error: shards need litdata: pip install -e "\.\[scale\]"'):
        main(["shard", "--folder", str(folder), "--output", str(tmp_path / "s")])


def test_the_loader_benchmark_reads_a_plugin_type_by_its_spec(folder: Path, shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/loader_throughput.py: folder and shards side by side; a latent type given as its class_path
    spec (the shards hold ShapesTextLatent, not the registered `text`)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loader_throughput.py"
    spec = importlib.util.spec_from_file_location("loader_throughput", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--folder", str(folder), "--shards", str(shards), "--latents", json.dumps(TEXT.spec()), "--image_size", "8",
                 "--batch_size", "4", "--num_workers", "0", "--batches", "2", "--warmup", "1", "--val_fraction", str(VAL_FRACTION)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["folder", "shards"] and all("images/s" in line for line in lines)
