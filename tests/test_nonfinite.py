"""NonFiniteGuard: a NaN loss stops the run with one message naming the step and the losses, before the
weights change; no checkpoint with a non-finite weight is written; or, on request, the step is skipped
and counted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from kaleido import Kaleido
from kaleido.callbacks import EMA, ModelCheckpoint, NonFiniteError, NonFiniteGuard
from kaleido.shapes import ShapesDataModule
from tests.conftest import tiny_model_kwargs
from tests.probes import PoisonBatches

ROOT = Path(__file__).resolve().parents[1]


def _fit(data: ShapesDataModule, tmp_path: Path, guard: NonFiniteGuard, poisoned: list[int], max_steps: int) -> Trainer:
    model = Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs())
    trainer = Trainer(
        accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[EMA(decay=0.9), guard, PoisonBatches(poisoned),
                   ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(model, data)
    return trainer


def _all_finite(path: Path) -> bool:
    checkpoint = torch.load(path, weights_only=True)
    tensors = [*checkpoint["state_dict"].values(), *checkpoint.get("current_model_state", {}).values()]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_a_nan_loss_stops_the_run_and_the_last_good_checkpoint_stays(
    text_data: ShapesDataModule, tmp_path: Path, single_thread: None
) -> None:
    with pytest.raises(NonFiniteError) as error:
        _fit(text_data, tmp_path, NonFiniteGuard(), poisoned=[3], max_steps=6)
    message = str(error.value)
    assert "\n" not in message and "at step 3 (epoch 0)" in message
    assert "train/loss=nan" in message and "train/loss_ar=" in message and "train/loss_diff=nan" in message
    assert "last.ckpt" in message and "were not updated" in message
    saved = sorted(tmp_path.glob("*.ckpt"))
    assert {p.name for p in saved} == {"last.ckpt", "epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt"}
    assert all(_all_finite(p) for p in saved)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3


def test_skip_leaves_the_step_out_counts_it_and_stops_past_max_skips(
    text_data: ShapesDataModule, tmp_path: Path, single_thread: None
) -> None:
    guard = NonFiniteGuard(action="skip", max_skips=2)
    trainer = _fit(text_data, tmp_path / "a", guard, poisoned=[1, 3], max_steps=5)
    assert trainer.global_step == 5 and guard.skipped == 2
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 2.0
    optimizer = trainer.optimizers[0]
    adam_steps = {float(optimizer.state[p]["step"]) for group in optimizer.param_groups for p in group["params"]}
    assert adam_steps == {3.0}  # the two poisoned steps changed neither weights nor Adam's moments
    assert all(_all_finite(p) for p in (tmp_path / "a").glob("*.ckpt"))
    assert torch.load(tmp_path / "a/last.ckpt", weights_only=True)["callbacks"]["NonFiniteGuard"] == {"skipped": 2}

    with pytest.raises(NonFiniteError, match=r"at step 2 .*after 1 skipped steps, max_skips=1"):
        _fit(text_data, tmp_path / "b", NonFiniteGuard(action="skip", max_skips=1), poisoned=[1, 2], max_steps=5)


def test_no_checkpoint_with_a_non_finite_weight_is_written() -> None:
    guard = NonFiniteGuard()
    trainer = type("T", (), {"global_step": 7})()
    checkpoint = {"state_dict": {"a": torch.ones(2)}, "current_model_state": {"unet.w": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(NonFiniteError, match="at step 7: weight unet.w is not finite"):
        guard.on_save_checkpoint(trainer, None, checkpoint)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="action must be one of"):
        NonFiniteGuard(action="ignore")  # type: ignore[arg-type]


def test_a_diverging_fit_ends_with_one_line_and_a_failing_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaleido", "fit", "--config", str(ROOT / "tests/configs/tiny_kaleido.yaml"),
         "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "0",
         "--trainer.callbacks+=probes.PoisonBatches", "--trainer.callbacks.steps=[1]"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped: non-finite loss or gradient at step 1"), result.stderr[-2000:]
    assert "no checkpoint was written" in last and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing was saved before step 1, and nothing non-finite after


def test_a_deferred_check_stops_one_step_later_naming_the_bad_step(
    text_data: ShapesDataModule, tmp_path: Path, single_thread: None
) -> None:
    """check: deferred (the GPU default for stop: no host sync per step) reads step k's answer at step k + 1,
    or at a checkpoint, whichever comes first: the bad step is named, nothing non-finite is written."""
    with pytest.raises(NonFiniteError) as error:  # a checkpoint every step: it reads the answer first
        _fit(text_data, tmp_path / "a", NonFiniteGuard(check="deferred"), poisoned=[3], max_steps=6)
    message = str(error.value)
    assert "\n" not in message and "at step 3 (epoch 0)" in message and "nan" in message
    assert "The step was applied" in message and "last.ckpt" in message
    saved = sorted((tmp_path / "a").glob("*.ckpt"))
    assert {p.name for p in saved} == {"last.ckpt", "epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt"}
    assert all(_all_finite(p) for p in saved)

    guard = NonFiniteGuard(check="deferred")  # no checkpoint in between: the next step's check stops the run
    trainer = Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[guard, PoisonBatches([3])])
    with pytest.raises(NonFiniteError, match=r"at step 3 \(epoch 0\).*no checkpoint was written"):
        trainer.fit(Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()), text_data)
    assert trainer.global_step == 4  # step 3 was applied; step 4 stopped before its optimiser ran


def test_the_check_setting_says_what_it_accepts() -> None:
    with pytest.raises(ValueError, match="check 'deferred' needs action 'stop'"):
        NonFiniteGuard(action="skip", check="deferred")
    with pytest.raises(ValueError, match=r"check must be one of \('auto', 'now', 'deferred'\), got 'later'"):
        NonFiniteGuard(check="later")  # type: ignore[arg-type]
