"""The user's path: `python -m kaleido fit --config ...`, then `sample` from the checkpoint."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

import kaleido
from kaleido.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "tests" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: kaleido." in printed and "tokenizer" not in printed.split("model:")[1].split("data:")[0]


def _without_z(config_name: str) -> dict:
    """A config with what only Kaleido has taken out: z (and its readers), the prior's decoder and its loss."""
    config = yaml.safe_load((ROOT / "configs" / f"{config_name}.yaml").read_text())
    model = config.pop("model")["init_args"]  # the class differs by design
    model.pop("ar_loss_weight", None)
    model["t5"].pop("num_decoder_layers", None)
    model["compile"] = model.get("compile", False)
    config["data"]["init_args"].pop("latents")
    config["data"]["init_args"].pop("readers", None)
    for callback in config["trainer"]["callbacks"]:
        callback.get("init_args", {}).pop("adherence", None)  # the baseline has no latent to follow
    return {**config, "model_settings": model}


@pytest.mark.parametrize(
    ("baseline", "kaleido"),
    [
        ("shapes/baseline", "shapes/kaleido_text"), ("shapes/baseline_gpu", "shapes/kaleido_text_gpu"),
        ("shapes/baseline_dit_gpu", "shapes/kaleido_text_dit_gpu"), ("shapes/baseline_nested_gpu", "shapes/kaleido_text_nested_gpu"),
        ("mnist/baseline", "mnist/kaleido_blob"), ("mnist/baseline_gpu", "mnist/kaleido_blob_gpu"),
        ("twemoji/baseline", "twemoji/kaleido"), ("twemoji/baseline_gpu", "twemoji/kaleido_gpu"),
        ("shapes/baseline", "shapes/kaleido_colour"), ("shapes/baseline_gpu", "shapes/kaleido_colour_gpu"),
        ("shapes/baseline", "shapes/kaleido_colour_text"), ("shapes/baseline_gpu", "shapes/kaleido_colour_text_gpu"),
        ("twemoji/baseline_gpu", "twemoji/kaleido_colour_gpu"), ("twemoji/baseline_gpu", "twemoji/kaleido_colour_text_gpu"),
        ("twemoji/baseline_dit_gpu", "twemoji/kaleido_dit_gpu"), ("mnist/baseline_dit_gpu", "mnist/kaleido_blob_dit_gpu"),
    ],
)
def test_each_baseline_config_trains_like_its_kaleido_pair(baseline: str, kaleido: str) -> None:
    # Every result is reported beside the baseline: the pair must share denoiser, data, optimiser and trainer.
    assert _without_z(baseline) == _without_z(kaleido)


def test_fit_then_sample_through_the_cli(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "kaleido"]
    subprocess.run(
        [*run, "fit", "--config", str(ROOT / "tests/configs/tiny_kaleido.yaml"), "--trainer.default_root_dir", str(tmp_path)],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    assert (tmp_path / "lightning_logs/version_0/config.yaml").is_file()
    assert list((tmp_path / "lightning_logs/version_0").glob("events.out.tfevents.*")), "no TensorBoard log"
    out = tmp_path / "samples"
    latent = "a large blue square in the center, on a white background"
    result = subprocess.run(
        [*run, "sample", "--ckpt_path", str(checkpoints[-1]), "--condition", "a square", "--num_samples", "3",
         "--cfg_scale", "2", "--num_steps", "3", "--seed", "1", "--latent", latent, "--output", str(out)],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )
    assert "wrote 3 samples" in result.stdout
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [line["latent"] for line in lines] == [latent] * 3
    assert all(line["condition"] == "a square" and (out / line["image"]).is_file() for line in lines)
    assert Image.open(out / "grid.png").size[0] > 32

    # A latent that does not parse: one line, and a failing exit status (SystemExit with a message: 1 in a shell).
    with pytest.raises(SystemExit, match=r"^error: .*at position 2") as bad:
        main(["sample", "--ckpt_path", str(checkpoints[-1]), "--condition", "a square", "--latent", "a huge red square",
              "--output", str(out)])
    assert "\n" not in str(bad.value.code)


def test_fit_on_two_processes_with_ddp(tmp_path: Path) -> None:
    """`--trainer.devices N` is all multi-GPU training needs; here two CPU processes (gloo) stand in for GPUs.
    Validation metrics are averaged over the ranks, so Lightning has nothing to warn about."""
    import torch

    result = subprocess.run(
        [sys.executable, "-m", "kaleido", "fit", "--config", str(ROOT / "tests/configs/tiny_kaleido.yaml"),
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    unsynced = re.findall(r"self\.log\('(val/[^']+)'.*sync_dist=True", result.stderr)
    assert not [name for name in unsynced if "adherence" not in name], unsynced  # the probe logs on rank 0 only
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3


def test_latents_command_lists_types_and_origins(capsys: pytest.CaptureFixture[str]) -> None:
    main(["latents"])
    listed = capsys.readouterr().out
    for name, origin in [("text", "TextLatent"), ("box", "BoxLatent"), ("blob", "BlobLatent"), ("visual_token", "VisualTokenLatent")]:
        assert re.search(rf"^{name} +kaleido\.latents\.\w+\.{origin}$", listed, re.M), listed


def test_unknown_command_says_what_exists() -> None:
    with pytest.raises(SystemExit, match="unknown command 'train'; choose one of fit"):
        main(["train"])


def test_sampling_precision_auto_is_bf16_on_a_gpu_and_32_on_a_cpu() -> None:
    from kaleido.devices import resolve_precision, sampling_autocast

    assert resolve_precision("auto", "cpu") == "32" and resolve_precision("auto", "cuda:1") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("32", "cuda") == "32"
    with pytest.raises(ValueError, match="precision 'fp16' is not one of 'auto'"):
        resolve_precision("fp16", "cpu")
    with sampling_autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with sampling_autocast("32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_compiled_fit_pads_batches_to_one_shape_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from kaleido.cli import pad_for_compile
    from tests.conftest import tiny_datamodule, tiny_model_kwargs

    data = tiny_datamodule()
    eager = kaleido.Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs())
    pad_for_compile(eager, data)
    assert data.pad_to_limits is False and capsys.readouterr().out == ""  # eager: batches as long as their longest text
    compiled = kaleido.Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs(), compile="reduce-overhead")
    pad_for_compile(compiled, data)
    assert data.pad_to_limits is True and "padded to the tokenizer's limits" in capsys.readouterr().out
    data.setup("fit")
    shapes = {tuple(batch["latent_ids"].shape) for batch, _ in zip(data.train_dataloader(), range(3))}
    assert shapes == {(data.batch_size, data.tokenizer.max_latent_length)}


def test_a_second_ema_is_one_line_not_lightning_s_traceback(tmp_path: Path) -> None:
    config = ROOT / "configs" / "shapes" / "baseline.yaml"
    assert "kaleido.callbacks.EMA" in config.read_text()  # the CPU config averages already
    with pytest.raises(SystemExit, match=r"^error: trainer.callbacks holds kaleido.callbacks.EMA twice .*needs no --trainer.callbacks\+=\)$"):
        main(["fit", "--config", str(config), "--trainer.callbacks+=kaleido.callbacks.EMA", "--trainer.max_steps", "1",
              "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)])


def test_a_machine_that_cannot_compile_fails_before_fit_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch import Trainer

    from kaleido.cli import check_compiler_before_fit
    from kaleido.compiler_check import CompilerUnavailable, check_compiler
    from tests.conftest import tiny_datamodule, tiny_model_kwargs

    modes: list[str | None] = []

    def working(fn: Any, mode: str | None = None, **kwargs: Any) -> Any:
        modes.append(mode)
        return fn

    def broken(fn: Any, mode: str | None = None, **kwargs: Any) -> Any:
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\n(inductor internals ...)")

    monkeypatch.setattr(torch, "compile", broken)
    check_compiler(False, torch.device("cpu"))  # eager: nothing compiled, nothing to check
    with pytest.raises(CompilerUnavailable, match=r"compile is 'reduce-overhead', but torch.compile fails .*cpu \(RuntimeError: "
                                                  r"Failed to find C compiler. Please specify via CC environment variable.\); "
                                                  r"train eager with --model.init_args.compile false"):
        check_compiler("reduce-overhead", torch.device("cpu"))
    monkeypatch.setattr(torch, "compile", working)
    check_compiler(True, torch.device("cpu"))
    check_compiler("reduce-overhead", torch.device("cpu"))
    assert modes == ["default", "reduce-overhead"]  # the probe compiles in the run's own mode
    compiled = kaleido.Kaleido(tokenizer=tiny_datamodule().tokenizer, **tiny_model_kwargs(), compile="reduce-overhead")
    check_compiler_before_fit(compiled, Trainer(accelerator="cpu", logger=False, enable_checkpointing=False))
    assert "note: model.compile is 'reduce-overhead': the first training step compiles" in capsys.readouterr().out

    monkeypatch.setattr(torch, "compile", broken)
    config = ROOT / "tests" / "configs" / "tiny_kaleido.yaml"
    with pytest.raises(SystemExit, match=r"^error: model.init_args.compile is True, but torch.compile fails on this machine's cpu "
                                         r"\(RuntimeError: Failed to find C compiler[^\n]*docs/performance.md$"):
        main(["fit", "--config", str(config), "--model.init_args.compile", "true", "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path)])
