"""Callbacks that tests add to a real `python -m kaleido fit` (subprocesses import this file through
PYTHONPATH=tests): they record what the run trained on, and can hold it still to be killed or feed it NaN."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging


def weight_sum(state: Any) -> float:
    """One number per set of weights, enough to tell two sets apart."""
    return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))


class RecordBatches(Callback):
    """Writes one JSON line per training step (its global step and the ids of its items), and at the start
    of training what was restored: the step, Adam's state, the learning rate, both weight sets. At
    ``wait_at_step`` it writes ``{"waiting": step}`` and sleeps, for the test to kill it."""

    def __init__(self, path: str, wait_at_step: int = 0) -> None:
        self.path, self.wait_at_step = Path(path), wait_at_step

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        averaging = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))
        average = averaging._average_model.module.state_dict() if averaging._average_model is not None else {}
        self._write({
            "start": trainer.global_step,
            "adam_step": float(state["step"]) if state else 0.0,
            "exp_avg": float(state["exp_avg"].double().sum()) if state else 0.0,
            "lr": optimizer.param_groups[0]["lr"],
            "weights": weight_sum(pl_module.state_dict()),
            "average": weight_sum(average) if average else None,
        })

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._write({"step": trainer.global_step, "ids": [i if isinstance(i, str) else int(i) for i in batch["id"]]})
        if trainer.global_step == self.wait_at_step:
            self._write({"waiting": trainer.global_step})
            time.sleep(300)


class PoisonBatches(Callback):
    """Turns the images of the batches of the given optimiser steps (0-based) into NaN: bad data."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            batch["image"].fill_(float("nan"))
