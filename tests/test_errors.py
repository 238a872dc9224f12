"""Bad input on the command line ends in one line, `error: ...`, and a failing exit code; `--debug` (or
KALEIDO_DEBUG=1) shows the traceback instead. Sampled latents that do not parse are flagged."""

from __future__ import annotations

import json
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from kaleido import Kaleido
from kaleido.__main__ import DEBUG_ENV, main
from kaleido.checkpoint_io import read_checkpoint
from kaleido.diffusion.guidance import classifier_free_guidance
from kaleido.shapes import ShapesDataModule
from tests.conftest import tiny_model_kwargs

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests/configs/tiny_kaleido.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, text_data: ShapesDataModule) -> Path:
    """A real kaleido checkpoint after one step (its sampled latents are still garbage)."""
    path = tmp_path_factory.mktemp("ckpt") / "one_step.ckpt"
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()), text_data)
    trainer.save_checkpoint(path)
    return path


def _one_line(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


def _bad_files(tmp_path: Path, checkpoint: Path) -> dict[str, Path]:
    text = tmp_path / "notes.ckpt"
    text.write_text("every run I keep notes here\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    pickled = tmp_path / "pickled.ckpt"  # a zip archive whose pickle names a class: weights_only refuses it
    torch.save({"kaleido": OrderedDict(a=1), "payload": zipfile.ZipInfo("x")}, pickled)
    return {"text": text, "truncated": truncated, "pickled": pickled}


def test_unreadable_checkpoints_are_named_in_one_line(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = _bad_files(tmp_path, checkpoint)
    sample = ["sample", "--condition", "a circle", "--output", str(tmp_path / "out"), "--ckpt_path"]
    for name in ("text", "truncated"):
        message = _one_line([*sample, str(bad[name])], monkeypatch)
        assert f"{bad[name]} is not a readable checkpoint: not a torch.save archive" in message
    assert "a weights-only load refuses" in _one_line([*sample, str(bad["pickled"])], monkeypatch)
    with pytest.raises(ValueError, match="weights-only load refuses"):
        read_checkpoint(bad["pickled"])
    fit = ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path"]
    assert "truncated.ckpt is not a readable checkpoint" in _one_line([*fit, str(bad["truncated"])], monkeypatch)
    refused = _one_line([*fit, str(bad["pickled"])], monkeypatch)  # read by Lightning's resume, weights_only
    assert "weights-only load refuses" in refused and "zipfile.ZipInfo" in refused and "Please use" not in refused


def test_debug_shows_the_traceback(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _bad_files(tmp_path, checkpoint)["text"]
    monkeypatch.setenv(DEBUG_ENV, "0")  # recorded, so the "1" that --debug sets is undone after the test
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        main(["sample", "--debug", "--ckpt_path", str(bad), "--condition", "a circle"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        main(["sample", "--ckpt_path", str(bad), "--condition", "a circle"])


def test_an_unknown_latent_type_in_a_config_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _one_line(
        ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--data.init_args.latents=[nosuchtype]"],
        monkeypatch,
    )
    assert message.startswith("error: unknown latent type 'nosuchtype'; registered: ") and "text" in message


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--model.init_args.nope", "1"], "error: --model.init_args.nope: kaleido.Kaleido has no option 'nope'; `--model.help kaleido.Kaleido` lists"),
        (["--model.init_args.unet.nope", "1"], "error: --model.init_args.unet.nope: kaleido.nn.unet.UNetSettings has no option 'nope'"),
        (["--model.init_args.unet.base_channels", "abc"],
         "error: --model.init_args.unet.base_channels: 'abc' is not accepted by kaleido.nn.unet.UNetSettings; expected int"),
        (["--data.init_args.nope", "x"], "error: --data.init_args.nope: kaleido.shapes.ShapesDataModule has no option 'nope'"),
        (["--trainer.max_steps", "abc"], "error: --trainer.max_steps: 'abc' is not accepted; expected int"),
        (["--model.init_args.compile", "maybe"],
         "error: --model.init_args.compile: 'maybe' is not accepted by kaleido.Kaleido; expected bool or one of 'default', 'reduce-overhead'"),
        (["--model.class_path", "kaleido.Nope"], "error: --model.class_path: kaleido.Nope: module 'kaleido' has no attribute 'Nope'"),
        (["--model.class_path", "kaleido.shapes.ShapesDataModule"],
         "error: --model.class_path: Import path kaleido.shapes.ShapesDataModule does not correspond to a subclass of LightningModule"),
        (["--model.init_args.unet", "abc"], "error: --model.init_args.unet: 'abc' is not accepted by kaleido.Kaleido; expected UNetSettings or null"),
        (["--model.init_args.diffusion.prediction", "z"], "expected one of 'v', 'eps', 'x0'"),
        (["--bogus", "1"], "error: unrecognized arguments: --bogus 1"),
    ],
)
def test_a_bad_fit_option_is_one_line_naming_it(option: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _one_line(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), *option], monkeypatch)
    assert expected in message and "NestedArg" not in message and "null or null" not in message


def test_fit_without_a_config_says_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _one_line(["fit"], monkeypatch)
    assert "fit.data, fit.model" in message and message.endswith("e.g. --config configs/shapes/kaleido_text.yaml")


def test_sample_refuses_an_empty_condition_and_a_bad_cfg_scale(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = ["sample", "--ckpt_path", str(checkpoint), "--num_steps", "2", "--num_samples", "2", "--output", str(tmp_path)]
    assert "the condition is empty" in _one_line([*sample, "--condition", "  "], monkeypatch)
    for scale in ("-1", ".nan", ".inf"):
        message = _one_line([*sample, "--condition", "a circle", "--cfg_scale", scale], monkeypatch)
        assert message.startswith("error: cfg_scale must be a finite number >= 0")
    # a value that is not of the option's type: one line naming the option, not jsonargparse's report
    assert _one_line([*sample, "--condition", "a circle", "--cfg_scale", "nan"], monkeypatch) == (
        "error: --cfg_scale: 'nan' is not accepted; expected float or null"
    )
    assert _one_line([*sample, "--condition", "a circle", "--seed", "x"], monkeypatch).startswith("error: --seed: 'x' is not accepted")
    with pytest.raises(ValueError, match="got -0.5"):
        classifier_free_guidance(lambda x, t, u: x, -0.5)


def test_sampled_latents_that_do_not_parse_are_flagged_and_counted(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["sample", "--ckpt_path", str(checkpoint), "--condition", "a circle", "--num_steps", "2", "--num_samples", "3",
          "--output", str(tmp_path)])
    lines = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    flags = [line["latent_parses"] for line in lines]
    assert flags.count(False) >= 1  # one step of training writes no grammar yet
    assert f"{flags.count(False)} of 3 sampled latents do not parse" in capsys.readouterr().out
    main(["sample", "--ckpt_path", str(checkpoint), "--condition", "a circle", "--num_steps", "2", "--num_samples", "2",
          "--latent", "a large red circle in the center, on a white background", "--output", str(tmp_path / "given")])
    given = [json.loads(line) for line in (tmp_path / "given/samples.jsonl").read_text().splitlines()]
    assert [line["latent_parses"] for line in given] == [True, True]


def test_missing_inception_weights_name_the_command_line_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaleido.metrics import features

    monkeypatch.setattr(features, "_INCEPTION_MODULE", "kaleido_no_such_package")
    with pytest.raises(FileNotFoundError, match="--feature_weights PATH"):
        features.find_inception_weights()
