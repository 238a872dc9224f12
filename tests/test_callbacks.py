"""The learning-rate cooldown (kaleido.callbacks.Cooldown): the rate the optimiser uses at every step,
over a step budget and over a time budget, on top of kaleido's warm-up schedule. Checkpoints that
keep a run's last steps (kaleido.callbacks.ModelCheckpoint), and the EMA around its start step."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from kaleido.callbacks import EMA, Cooldown, ModelCheckpoint
from kaleido.modules.common import adam_with_warmup
from kaleido.modules.settings import OptimizerSettings


class Regression(LightningModule):
    """One linear layer, kaleido's Adam with warm-up; records the rate each optimiser step used."""

    def __init__(self, lr: float = 0.1, warmup_steps: int = 2) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.settings = OptimizerSettings(lr=lr, warmup_steps=warmup_steps)
        self.rates: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return adam_with_warmup(self.parameters(), self.settings)


def fit(module: LightningModule, *callbacks: Callback, **trainer_args: Any) -> None:
    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randn(64, 1)), batch_size=4)
    trainer = Trainer(
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=any(isinstance(c, LightningModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_args,
    )
    trainer.fit(module, data)


def test_the_rate_follows_warmup_then_decays_linearly_over_the_last_steps() -> None:
    module = Regression(lr=0.1, warmup_steps=2)
    fit(module, Cooldown(fraction=0.5, final=0.0), max_steps=10)
    warmup = [0.05, 0.1, 0.1, 0.1, 0.1]
    decay = [0.1 * (1 - (step / 10 - 0.5) / 0.5) for step in range(5, 10)]  # progress = step / max_steps
    assert module.rates == pytest.approx(warmup + decay)


def test_final_and_shape_set_where_the_rate_ends() -> None:
    cosine = Cooldown(fraction=0.5, final=0.1, shape="cosine")
    assert cosine.factor_at(0.4) == 1.0
    assert cosine.factor_at(0.75) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine.factor_at(1.0) == pytest.approx(0.1)
    assert Cooldown(fraction=1.0, shape="sqrt").factor_at(0.25) == pytest.approx(0.5)


class Tick(Callback):
    """A fake training clock for Lightning's Timer: ``seconds`` pass with every optimiser step."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.now = seconds, 0.0

    def on_train_batch_end(self, *args: Any) -> None:
        self.now += self.seconds


def test_a_time_budget_drives_the_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_time only, progress is elapsed / max_time (Timer's elapsed and remaining time)."""
    from lightning.pytorch.callbacks import Timer

    tick = Tick(2.5)  # listed first: the clock advances before Cooldown and Timer read it
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": tick.now)
    module = Regression(lr=0.1, warmup_steps=1)
    fit(module, tick, Cooldown(fraction=0.5), max_time={"seconds": 40}, max_steps=100)
    assert len(module.rates) == 16  # the Timer stops training after 16 × 2.5 s
    # Step i runs at progress i × 2.5 / 40: the full rate up to half way, then a linear fall.
    assert module.rates == pytest.approx([0.1 * min(1.0, 2 - i / 8) for i in range(16)])


def test_a_run_without_an_end_is_refused() -> None:
    with pytest.raises(ValueError, match="max_steps, max_epochs or max_time"):
        fit(Regression(), Cooldown(), max_steps=-1, max_epochs=-1)


@pytest.mark.parametrize("arguments", [{"fraction": 0.0}, {"final": 1.0}, {"shape": "step"}])
def test_bad_settings_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Cooldown"):
        Cooldown(**arguments)


def test_factor_is_continuous_where_the_decay_starts() -> None:
    cooldown = Cooldown(fraction=0.2)
    assert math.isclose(cooldown.factor_at(0.8), 1.0) and cooldown.factor_at(0.81) < 1.0


class StopAt(Callback):
    """Stops training after ``step`` optimiser steps, as ``max_time``'s Timer does: ``should_stop`` at batch end."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def last_checkpoint(directory: Any) -> dict[str, Any]:
    return torch.load(directory / "last.ckpt", weights_only=True)


@pytest.mark.parametrize(("stop_at", "max_steps"), [(None, 7), (6, 15)])
def test_last_checkpoint_holds_the_step_where_training_stopped(tmp_path: Any, stop_at: int | None, max_steps: int) -> None:
    """``max_steps`` off the save interval, or a stop at batch end as ``max_time``'s Timer makes."""
    stop = [StopAt(stop_at)] if stop_at else []
    ours, stock = tmp_path / "ours", tmp_path / "stock"
    fit(Regression(), *stop, ModelCheckpoint(dirpath=ours, save_last=True, every_n_train_steps=5), max_steps=max_steps)
    fit(Regression(), *stop, LightningModelCheckpoint(dirpath=stock, save_last=True, every_n_train_steps=5), max_steps=max_steps)
    assert last_checkpoint(ours)["global_step"] == (stop_at or max_steps)
    assert last_checkpoint(stock)["global_step"] == 5  # what this callback fixes: Lightning's lost steps


def test_last_checkpoint_holds_the_step_where_max_time_stopped(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's own Timer (max_time) stopping between two interval saves."""
    from lightning.pytorch.callbacks import Timer

    tick = Tick(2.5)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": tick.now)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
    fit(Regression(), tick, checkpoint, max_time={"seconds": 17}, max_steps=100)  # stops at step 7 (17.5 s)
    assert last_checkpoint(tmp_path)["global_step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]


def test_last_checkpoint_keeps_raw_and_averaged_weights_apart(tmp_path: Any) -> None:
    """Saved before EMA copies the average into the model at the end of fit: resuming continues the raw weights."""
    fit(Regression(), EMA(decay=0.5), ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5), max_steps=7)
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["global_step"] == 7
    raw, averaged = checkpoint["current_model_state"]["layer.weight"], checkpoint["state_dict"]["layer.weight"]
    assert not torch.equal(raw, averaged)


class RecordWeights(Callback):
    """The layer's weights after every optimiser step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.weights.append(pl_module.layer.weight.detach().clone())


def test_averaging_starts_at_start_step_from_the_weights_of_then(tmp_path: Any) -> None:
    record = RecordWeights()
    fit(Regression(), record, EMA(decay=0.5, start_step=3), ModelCheckpoint(dirpath=tmp_path, save_last=True), max_steps=7)
    expected = record.weights[3]  # after the 4th step (index 3): the copy, then the EMA
    for weights in record.weights[4:]:
        expected = 0.5 * expected + 0.5 * weights
    assert torch.allclose(last_checkpoint(tmp_path)["state_dict"]["layer.weight"], expected)


def test_the_update_never_reads_the_count_back_from_the_device(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's AveragedModel.update_parameters does `bool(n_averaged == 0)` every step: a host sync on a GPU.
    from torch.optim.swa_utils import AveragedModel

    def refuse(*args: Any) -> None:
        raise AssertionError("AveragedModel.update_parameters was called")

    monkeypatch.setattr(AveragedModel, "update_parameters", refuse)
    record, ema = RecordWeights(), EMA(decay=0.5, start_step=1)
    fit(Regression(), record, ema, ModelCheckpoint(dirpath=tmp_path, save_last=True), max_steps=5)
    expected = record.weights[1]
    for weights in record.weights[2:]:
        expected = 0.5 * expected + 0.5 * weights
    checkpoint = last_checkpoint(tmp_path)
    assert torch.allclose(checkpoint["state_dict"]["layer.weight"], expected)
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 5  # kept on the device, saved as before


def test_before_averaging_starts_the_average_is_the_current_weights(tmp_path: Any) -> None:
    """A run shorter than ``start_step`` keeps what it trained, not the weights it started from."""
    module = Regression()
    initial = module.layer.weight.detach().clone()
    fit(module, EMA(decay=0.5, start_step=100), ModelCheckpoint(dirpath=tmp_path, save_last=True), max_steps=7)
    checkpoint = last_checkpoint(tmp_path)
    trained = checkpoint["current_model_state"]["layer.weight"]
    assert torch.equal(checkpoint["state_dict"]["layer.weight"], trained) and not torch.equal(trained, initial)
    assert torch.equal(module.layer.weight.detach(), trained)  # the end of fit copies the average in


def test_an_interval_save_at_the_last_step_is_not_repeated(tmp_path: Any) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
    saves: list[int] = []
    original = callback._save_last_checkpoint
    callback._save_last_checkpoint = lambda trainer, *a: (saves.append(trainer.global_step), original(trainer, *a))  # type: ignore[method-assign]
    fit(Regression(), callback, max_steps=10)
    assert saves == [5, 10]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_bf16_clipping_works_with_a_fused_adam_and_clips(text_data, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    """Lightning's mixed-precision plugin refuses to clip for a fused optimiser even without a loss scaler;
    kaleido clips the true gradients itself (GradientClipping): a fused Adam trains under bf16 with the
    paper's clipping, and the gradients come out clipped."""
    import kaleido
    from tests.conftest import tiny_model_kwargs

    kwargs = {**tiny_model_kwargs(), "optimizer": {"lr": 1e-3, "warmup_steps": 1, "fused": True}}
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **kwargs)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=text_data)
    assert trainer.global_step == 2 and trainer.optimizers[0].defaults["fused"] is True
    for p in model.parameters():  # gradients far above the bound
        p.grad = torch.full_like(p, 10.0)
    model.configure_gradient_clipping(trainer.optimizers[0], 0.5, algorithm)
    grads = [p.grad for p in model.parameters()]
    if algorithm == "norm":
        assert torch.nn.utils.get_total_norm(grads).item() == pytest.approx(0.5, rel=1e-4)
    else:
        assert max(g.abs().max().item() for g in grads) == 0.5


@pytest.mark.parametrize(("arguments", "words"), [({"decay": 1.0}, "EMA decay must be in (0, 1), got 1.0"), ({"start_step": -1}, "EMA start_step must be >= 0, got -1")])
def test_bad_ema_settings_say_what_is_accepted(arguments: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        EMA(**arguments)
