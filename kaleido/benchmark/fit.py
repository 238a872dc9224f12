"""The benchmark's ``--fit_steps N``: the same model and data trained by Lightning's ``Trainer.fit`` as ``fit``
runs them (the config's callbacks, logger, progress bar, learning-rate schedule), without validation, to
set beside the bare training step: ``fit / step`` is what the loop around the step costs (hooks, logging,
host syncs) when the step itself is as fast as it gets. Where that cost goes (:mod:`kaleido.benchmark.host`):
the host syncs counted in the timed steps (CUDA), and ``--fit_host_profile K`` more steps under cProfile."""

from __future__ import annotations

import cProfile
import tempfile
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

from kaleido.benchmark.clock import sync
from kaleido.benchmark.host import SyncCounter, host_profile


class StepTimer(Callback):
    """The host clock from the start of step ``warmup`` to the end of step ``warmup + steps - 1``, the GPU
    synchronised at both ends (the last in ``callbacks``: every other hook of the last step is inside), and
    the part of it spent between one step's last hook and the next step's first: Lightning fetches the next
    batch from the loader and copies it to the device there, so a starved GPU shows up as time between steps.

    On CUDA it counts the host syncs over ``steps`` whole cycles of the loop: from the end of the last warmup
    step (this hook) to the end of the last timed one, so that each step's tail (the learning-rate
    scheduler, logging) and the next batch's fetch are counted once (with ``warmup`` 0, from the first
    step's start). Then ``profiled`` more steps run under cProfile, cycle for cycle the same way, after the
    clock has stopped: the timed steps run without the profiler."""

    def __init__(self, warmup: int, steps: int, device: str, profiled: int = 0) -> None:
        self.warmup, self.device = warmup, device
        self.timed_end, self.profiled_end = warmup + steps, warmup + steps + profiled  # global_step after the last of each
        self.start: float | None = None
        self.first_step = 0
        self.elapsed, self.steps = 0.0, 0
        self.between = 0.0
        self.last_end: float | None = None
        self.syncs = SyncCounter() if torch.device(device).type == "cuda" else None
        self.profiler = cProfile.Profile() if profiled else None
        self.profile_start: float | None = None
        self.profile_s, self.profiled = 0.0, 0

    def timing(self) -> bool:
        return self.start is not None and not self.steps

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            sync(self.device)  # torch.cuda.synchronize: not a sync the debug mode sees, so not counted
            if self.syncs is not None:
                self.syncs.start()  # already on unless warmup is 0
            self.start, self.first_step = time.perf_counter(), trainer.global_step
        elif self.timing() and self.last_end is not None:
            self.between += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.last_end = time.perf_counter()
        if self.syncs is not None and self.start is None and trainer.global_step >= self.warmup:
            self.syncs.start()  # the last warmup step has ended: its tail belongs to the first timed cycle
        if self.timing() and trainer.global_step >= self.timed_end:
            if self.syncs is not None:
                self.syncs.stop()
            sync(self.device)
            self.elapsed, self.steps = time.perf_counter() - self.start, trainer.global_step - self.first_step  # type: ignore[operator]
            if self.profiler is not None:
                self.profile_start = time.perf_counter()
                self.profiler.enable()
        elif self.profile_start is not None and not self.profiled and trainer.global_step >= self.profiled_end:
            self.close()
            self.profile_s, self.profiled = time.perf_counter() - self.profile_start, trainer.global_step - self.timed_end

    def close(self) -> None:
        """Sync warnings and the profiler off, whatever state fit stopped in."""
        if self.profiler is not None:
            self.profiler.disable()
        if self.syncs is not None:
            self.syncs.stop()


def trainer_placement(device: str, precision: str) -> dict[str, Any]:
    """The Trainer arguments that put ``fit`` where the benchmark measures: the device and the precision."""
    kind, _, index = device.partition(":")
    placement: dict[str, Any] = {"accelerator": "cpu", "devices": 1} if kind == "cpu" else {"accelerator": "gpu", "devices": [int(index or 0)]}
    return {**placement, "precision": "bf16-mixed" if precision == "bf16" else "32-true"}


def measure_fit(
    make_trainer: Any, model: LightningModule, data: LightningDataModule, steps: int, warmup: int, device: str, precision: str,
    host_profile_steps: int = 0,
) -> dict[str, Any]:
    """Seconds per ``Trainer.fit`` step over ``steps`` steps after ``warmup`` (worker start, compiling).
    ``make_trainer(**overrides)`` builds the config's Trainer with the given arguments replaced.

    ``syncs_per_step`` / ``sync_sites``: the host syncs of the timed steps by call site (None on a CPU,
    where work is synchronous: there is no sync to count). ``host_profile``: ``host_profile_steps`` more
    steps under cProfile, the top functions in ms per step (None with 0)."""
    timer = StepTimer(warmup, steps, device, host_profile_steps)
    # The sampling measures leave the model in eval mode, and Lightning starts fit in the mode it finds; in
    # eval mode a compiled model's training step runs its uncompiled networks (``training_network``).
    model.train()
    with tempfile.TemporaryDirectory(prefix="kaleido-benchmark-fit-") as root:  # the logger's and checkpoints' files
        # One untimed step after the measured ones: fit's last step writes last.ckpt (kaleido's ModelCheckpoint
        # with save_last), a once-a-run cost of seconds for a large model that would land in the measured window.
        trainer: Trainer = make_trainer(
            max_steps=warmup + steps + host_profile_steps + 1, max_epochs=-1, max_time=None, limit_val_batches=0, num_sanity_val_steps=0,
            default_root_dir=root, **trainer_placement(device, precision),
        )
        trainer.callbacks.append(timer)
        try:
            trainer.fit(model, datamodule=data)
        finally:
            timer.close()
    if timer.steps != steps or timer.profiled != host_profile_steps:
        raise RuntimeError(f"Trainer.fit ran {timer.steps} timed and {timer.profiled} profiled steps, {steps} and "
                           f"{host_profile_steps} expected: did a callback stop it early?")
    syncs = timer.syncs.report(steps) if timer.syncs is not None else {"syncs_per_step": None, "sync_sites": None}
    return {
        "steps": steps, "warmup": warmup, "step_s": timer.elapsed / steps, "between_steps_s": timer.between / max(steps - 1, 1),  # steps - 1 gaps
        **syncs,
        "host_profile": host_profile(timer.profiler, host_profile_steps, timer.profile_s) if timer.profiler is not None else None,
    }
