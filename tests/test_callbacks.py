"""The learning-rate cooldown (kaleido.callbacks.Cooldown): the rate the optimiser uses at every step,
over a step budget and over a time budget, on top of kaleido's warm-up schedule."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from kaleido.callbacks import Cooldown
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


def fit(module: LightningModule, callback: Cooldown, **trainer_args: Any) -> None:
    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randn(64, 1)), batch_size=4)
    trainer = Trainer(
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
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


def test_a_time_budget_drives_the_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_time only, progress is elapsed / max_time: fake a clock that advances 1 s per reading."""
    from lightning.pytorch.callbacks import Timer

    clock = iter(range(10_000))
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": float(next(clock)))
    module = Regression(lr=0.1, warmup_steps=1)
    fit(module, Cooldown(fraction=0.5), max_time={"seconds": 40}, max_epochs=1)  # 16 steps
    rates = torch.tensor(module.rates)
    assert len(rates) == 16
    assert (rates[:8] == 0.1).all()  # progress < 0.5 while fewer than 20 fake seconds went by
    assert (rates[8:].diff() < 0).all() and rates[-1] < 0.05  # then it falls every step


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
