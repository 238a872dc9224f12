"""The benchmark's ``--fit_steps N``: the same model and data trained by Lightning's ``Trainer.fit`` as ``fit``
runs them (the config's callbacks, logger, progress bar, learning-rate schedule), without validation, to
set beside the bare training step: ``fit / step`` is what the loop around the step costs (hooks, logging,
host syncs) when the step itself is as fast as it gets."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

from kaleido.benchmark.clock import sync


class StepTimer(Callback):
    """The host clock from the start of step ``warmup`` to the end of the last step, the GPU synchronised at
    both ends (the last in ``callbacks``: every other hook of the last step is inside), and the part of it
    spent between one step's last hook and the next step's first: Lightning fetches the next batch from the
    loader and copies it to the device there, so a starved GPU shows up as time between steps."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.first_step = 0
        self.elapsed, self.steps = 0.0, 0
        self.between = 0.0
        self.last_end: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            sync(self.device)
            self.start, self.first_step = time.perf_counter(), trainer.global_step
        elif self.start is not None and self.last_end is not None:
            self.between += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.last_end = time.perf_counter()
        if self.start is not None and trainer.global_step >= (trainer.max_steps or 0):
            sync(self.device)
            self.elapsed, self.steps = time.perf_counter() - self.start, trainer.global_step - self.first_step


def trainer_placement(device: str, precision: str) -> dict[str, Any]:
    """The Trainer arguments that put ``fit`` where the benchmark measures: the device and the precision."""
    kind, _, index = device.partition(":")
    placement: dict[str, Any] = {"accelerator": "cpu", "devices": 1} if kind == "cpu" else {"accelerator": "gpu", "devices": [int(index or 0)]}
    return {**placement, "precision": "bf16-mixed" if precision == "bf16" else "32-true"}


def measure_fit(
    make_trainer: Any, model: LightningModule, data: LightningDataModule, steps: int, warmup: int, device: str, precision: str
) -> dict[str, Any]:
    """Seconds per ``Trainer.fit`` step over ``steps`` steps after ``warmup`` (worker start, compiling).
    ``make_trainer(**overrides)`` builds the config's Trainer with the given arguments replaced."""
    timer = StepTimer(warmup, device)
    # The sampling measures leave the model in eval mode, and Lightning starts fit in the mode it finds; in
    # eval mode a compiled model's training step runs its uncompiled networks (``training_network``).
    model.train()
    with tempfile.TemporaryDirectory(prefix="kaleido-benchmark-fit-") as root:  # the logger's and checkpoints' files
        trainer: Trainer = make_trainer(
            max_steps=warmup + steps, max_epochs=-1, max_time=None, limit_val_batches=0, num_sanity_val_steps=0,
            default_root_dir=root, **trainer_placement(device, precision),
        )
        trainer.callbacks.append(timer)
        trainer.fit(model, datamodule=data)
    if timer.steps != steps:
        raise RuntimeError(f"Trainer.fit ran {timer.steps} timed steps, {steps} expected: did a callback stop it early?")
    return {"steps": steps, "warmup": warmup, "step_s": timer.elapsed / steps, "between_steps_s": timer.between / max(steps - 1, 1)}  # steps - 1 gaps
