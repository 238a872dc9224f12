"""``python -m kaleido export`` (kaleido/export.py): one set of weights for sampling and evaluation, float32
or bf16, read by ``kaleido.load`` like any checkpoint; what it cannot do (resume, give the other weights)
fails in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

import kaleido
from kaleido.__main__ import main
from kaleido.callbacks import EMA, ModelCheckpoint
from tests.conftest import tiny_model_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(text_data, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A tiny Kaleido's last.ckpt, written with an EMA average beside the trained weights."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    trainer = Trainer(
        max_steps=3, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[EMA(decay=0.5), ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=100)],
    )
    trainer.fit(model, datamodule=text_data)
    return root / "last.ckpt"


@pytest.mark.parametrize("weights", ["averaged", "trained"])
def test_a_float32_export_loads_the_weights_it_was_asked_for(trained: Path, tmp_path: Path, weights: str) -> None:
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "m.ckpt"), "--weights", weights])
    exported = kaleido.load(tmp_path / "m.ckpt")
    source = kaleido.load(trained, weights=weights)  # type: ignore[arg-type]
    assert exported.loaded_weights == weights and type(exported) is type(source)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), source.state_dict().values(), strict=True))
    assert (tmp_path / "m.ckpt").stat().st_size < trained.stat().st_size / 2  # no optimiser state, no second copy
    images = exported.generate(["a circle", "a square"], num_steps=2, sampler="ddim", seed=0).images
    assert torch.equal(images, source.generate(["a circle", "a square"], num_steps=2, sampler="ddim", seed=0).images)


def test_a_bf16_export_is_half_the_size_and_rounds_only_the_weights(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "f.ckpt")])
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "b.ckpt"), "--dtype", "bfloat16"])
    assert "bfloat16 ->" in capsys.readouterr().out
    assert (tmp_path / "b.ckpt").stat().st_size < 0.6 * (tmp_path / "f.ckpt").stat().st_size
    model, source = kaleido.load(tmp_path / "b.ckpt"), kaleido.load(trained)
    for (name, value), reference in zip(model.state_dict().items(), source.state_dict().values(), strict=True):
        assert value.dtype == reference.dtype, name  # loaded into the model's own float32
        expected = reference.to(torch.bfloat16).to(reference.dtype) if reference.is_floating_point() else reference
        assert torch.equal(value, expected), name


def test_what_an_export_cannot_do_is_one_line(trained: Path, tmp_path: Path) -> None:
    export = tmp_path / "m.ckpt"
    main(["export", "--ckpt_path", str(trained), "--output", str(export)])
    with pytest.raises(SystemExit, match=r"^error: --dtype: 'float16' is not accepted; expected one of 'float32', 'bfloat16'"):
        main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "h.ckpt"), "--dtype", "float16"])
    with pytest.raises(SystemExit, match=r"^error: .*m\.ckpt exists; pass --overwrite true"):
        main(["export", "--ckpt_path", str(trained), "--output", str(export)])
    with pytest.raises(SystemExit, match="is an export of the averaged weights only; load it with weights='averaged'"):
        main(["export", "--ckpt_path", str(export), "--output", str(tmp_path / "again.ckpt"), "--weights", "trained"])
    with pytest.raises(ValueError, match="an export of the averaged weights only; load it with weights='averaged'"):
        kaleido.load(export, weights="trained")
    from kaleido.resume import refuse_export

    with pytest.raises(ValueError, match=r"export for sampling and evaluation \(no optimiser state\): resume from .*last\.ckpt"):
        refuse_export(export)
    refuse_export(trained)  # a training checkpoint resumes
    from kaleido.resume import latest_checkpoint

    beside = trained.parent / "zz_export.ckpt"  # written after last.ckpt, in the run's own folder
    main(["export", "--ckpt_path", str(trained), "--output", str(beside), "--overwrite", "true"])
    assert latest_checkpoint(trained.parent) == trained  # `--ckpt_path last` resumes the run, not the export
    config = Path(__file__).parent / "configs" / "tiny_kaleido.yaml"
    with pytest.raises(SystemExit, match=r"^error: .*m\.ckpt is an export for sampling and evaluation"):
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(export)])
    # What an export can do beside sampling: Lightning's validate reads it (weights, version, step).
    main(["validate", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "val"), "--ckpt_path", str(export)])


def test_a_bf16_export_keeps_buffers_such_as_the_vq_codebook(tmp_path: Path) -> None:
    # The VQ's nearest-code search keeps its codebook (a buffer) in float32 so that bf16 cannot tie codes.
    from kaleido.modules.vq import VQTokenizer
    from kaleido.nn.vqvae import VQSettings

    torch.manual_seed(0)
    model = VQTokenizer(image_size=16, vq=VQSettings(codebook_size=32, code_dim=8, channels=16, downsample=4))
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 3}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "vq.ckpt")
    main(["export", "--ckpt_path", str(tmp_path / "vq.ckpt"), "--output", str(tmp_path / "vq_bf16.ckpt"), "--dtype", "bfloat16"])
    stored = torch.load(tmp_path / "vq_bf16.ckpt", weights_only=True)["state_dict"]
    codebook = next(name for name in stored if name.endswith("codebook"))
    assert stored[codebook].dtype == torch.float32 and torch.equal(stored[codebook], model.state_dict()[codebook])
    assert {v.dtype for k, v in stored.items() if k in dict(model.named_parameters())} == {torch.bfloat16}


def test_an_export_of_an_export_keeps_its_source_step_and_rounding(trained: Path, tmp_path: Path) -> None:
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "t.ckpt"), "--weights", "trained", "--dtype", "bfloat16"])
    main(["export", "--ckpt_path", str(tmp_path / "t.ckpt"), "--output", str(tmp_path / "again.ckpt")])  # default weights: what it holds
    record = torch.load(tmp_path / "again.ckpt", weights_only=True)["kaleido_export"]
    assert record["source"] == str(trained) and record["global_step"] == 3 and record["weights"] == "trained"
    assert record["dtype"] == "float32" and record["bf16_rounded"] is True
    with pytest.raises(SystemExit, match="--output is the checkpoint being exported"):
        main(["export", "--ckpt_path", str(tmp_path / "t.ckpt"), "--output", str(tmp_path / "t.ckpt"), "--overwrite", "true"])


def test_an_export_records_its_run_s_data_so_a_lone_file_can_be_evaluated(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kaleido.checkpoint import recorded_data
    from kaleido.data.contract import build_datamodule, checkpoint_datamodule
    from kaleido.evaluate import evaluation_data

    section = {"class_path": "kaleido.shapes.ShapesDataModule", "init_args": {"shapes": {"resolution": 16, "max_objects": 1}, "num_train": 64}}
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 3}, "data": section}))
    source = run / "checkpoints" / "last.ckpt"
    shutil.copy(trained, source)
    main(["export", "--ckpt_path", str(source), "--output", str(tmp_path / "alone" / "m.ckpt"), "--dtype", "bfloat16"])
    lone = tmp_path / "alone" / "m.ckpt"
    assert recorded_data(lone) == section  # the config beside the run, one folder up
    data = checkpoint_datamodule(lone, None, lambda: recorded_data(lone))
    assert data is not None and data.identity() == build_datamodule(section).identity()
    assert evaluation_data(lone, None, "evaluate").identity() == data.identity()
    main(["export", "--ckpt_path", str(lone), "--output", str(tmp_path / "again.ckpt")])  # an export of an export keeps it
    assert recorded_data(tmp_path / "again.ckpt") == section

    capsys.readouterr()
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "none.ckpt")])  # no config.yaml beside it
    assert "the export records no data, so evaluate and adherence will need --data_config" in capsys.readouterr().out
    assert recorded_data(tmp_path / "none.ckpt") is None
    with pytest.raises(FileNotFoundError, match="it is no export that recorded one; pass --data_config"):
        evaluation_data(tmp_path / "none.ckpt", None, "evaluate")
    given = tmp_path / "data.yaml"
    given.write_text(yaml.safe_dump(section))
    main(["export", "--ckpt_path", str(trained), "--output", str(tmp_path / "given.ckpt"), "--data_config", str(given)])
    assert recorded_data(tmp_path / "given.ckpt") == section


def test_a_checkpoint_naming_a_missing_class_is_one_line(trained: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["kaleido"]["class_path"] = "kaleido.modules.gone.Kaleido"
    torch.save(checkpoint, tmp_path / "moved.ckpt")
    with pytest.raises(ValueError, match=r"^cannot import the checkpoint's model class_path 'kaleido.modules.gone.Kaleido': No module"):
        kaleido.load(tmp_path / "moved.ckpt")
