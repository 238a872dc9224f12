"""NonFiniteGuard: a NaN or infinite loss or gradient stops the run (or, on request, its step is skipped),
and no checkpoint with a non-finite weight is written (docs/troubleshooting.md). Configs name it
``kaleido.callbacks.NonFiniteGuard``: :mod:`kaleido.callbacks` exports it."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteError(RuntimeError):
    """A training step or a checkpoint with a NaN or infinite value: the run stops (NonFiniteGuard)."""


class NonFiniteGuard(Callback):
    """Stops training at the first step whose loss or gradient is not finite (NaN or infinite), before the
    optimiser applies it, with one message that names the step and the losses; or, with ``action: skip``,
    leaves that step out (no weight or optimiser-state change; it still counts as a step of the global step
    and the learning-rate schedule) and counts it (``train/nonfinite_skipped``),
    stopping all the same after ``max_skips`` skipped steps. It also refuses to write any checkpoint that
    holds a non-finite weight, so the last checkpoint on disk is the last good one.

    Cost: one reduction over the gradients per optimiser step, and reading its answer on the host. Read
    at once (``check: now``), that is a sync per step: the GPU's queue drains while the host prepares the
    next step. ``check: deferred`` copies the answer to the host without waiting and reads it at the next
    step (or checkpoint, or the end), when it is long computed: no sync, but a non-finite step is applied
    before the run stops, one step later, naming it (the last checkpoint on disk is still the last good
    one). ``auto`` (default): deferred for ``stop`` on a GPU, at once otherwise (``skip`` must know before
    the optimiser runs). Under fp16 loss scaling (``precision: 16-mixed``) infinite gradients are the
    scaler's to skip, so only the loss is checked. Under DDP every rank sees the same all-reduced
    gradients, so every rank stops (or skips) together.

    Args:
        action: ``"stop"`` (default) or ``"skip"``.
        max_skips: with ``skip``, how many steps may be skipped in all before the run stops anyway.
        check: ``"auto"``, ``"now"`` or ``"deferred"`` (with ``stop`` only), as above.
    """

    ACTIONS = ("stop", "skip")
    CHECKS = ("auto", "now", "deferred")

    def __init__(
        self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10, check: Literal["auto", "now", "deferred"] = "auto"
    ) -> None:
        if action not in self.ACTIONS:
            raise ValueError(f"NonFiniteGuard action must be one of {self.ACTIONS}, got {action!r}")
        if max_skips < 0:
            raise ValueError(f"NonFiniteGuard max_skips must be >= 0, got {max_skips}")
        if check not in self.CHECKS:
            raise ValueError(f"NonFiniteGuard check must be one of {self.CHECKS}, got {check!r}")
        if check == "deferred" and action == "skip":
            raise ValueError("NonFiniteGuard check 'deferred' needs action 'stop': a skipped step must be known before the optimiser runs")
        self.action, self.max_skips, self.check = action, max_skips, check
        self.skipped = 0
        self._losses: list[torch.Tensor] = []
        self._pending: tuple[int, int, torch.Tensor, Any] | None = None  # (step, epoch, values on the host, copy done)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        losses, self._losses = self._losses, []
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        checked = [loss.float().reshape(()) for loss in losses]
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            checked.append(torch.nn.utils.get_total_norm([p.grad for p in params]).float().to(pl_module.device))
        if not checked:
            return
        if self._deferred(pl_module):
            self._raise_if_pending_failed(trainer)
            self._defer(trainer, torch.stack(checked))
            return
        if bool(torch.isfinite(torch.stack(checked)).all()):
            return
        what = self._describe(trainer, pl_module, losses, params)
        for p in params:
            p.grad = None  # the optimiser leaves a parameter without a gradient as it is: this step changes nothing
        if self.action == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            rank_zero_warn(f"NonFiniteGuard: {what}; step skipped ({self.skipped} of at most {self.max_skips})")
            return
        saver = trainer.checkpoint_callback
        last = (saver.last_model_path or saver.best_model_path) if saver is not None else ""
        raise NonFiniteError(
            f"training stopped: {what}"
            + (f" (after {self.skipped} skipped steps, max_skips={self.max_skips})" if self.action == "skip" else "")
            + ". The weights were not updated; "
            + (f"the last checkpoint, {last}, holds only finite values. " if last else "no checkpoint was written. ")
            + "Lower optimizer.lr (or its warm-up), check the data, or resume with NonFiniteGuard(action: skip)"
        )

    def _describe(self, trainer: Trainer, pl_module: LightningModule, losses: list[torch.Tensor], params: list[Any]) -> str:
        """The step, its losses (what the module logged this step, e.g. train/loss_ar) and the first bad gradient."""
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and v.numel() == 1}
        values = logged if logged or not losses else {"loss": float(losses[-1])}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = next((names.get(id(p), "?") for p in params if not torch.isfinite(p.grad).all()), None)
        gradient = f"; first non-finite gradient: {bad}" if bad else ""
        return f"non-finite loss or gradient at step {trainer.global_step} (epoch {trainer.current_epoch}): {shown}{gradient}"

    def _deferred(self, pl_module: LightningModule) -> bool:
        if self.check == "auto":
            return self.action == "stop" and pl_module.device.type == "cuda"
        return self.check == "deferred"

    def _defer(self, trainer: Trainer, values: torch.Tensor) -> None:
        """Start copying this step's losses and gradient norm to the host; read at the next check."""
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done: Any = torch.cuda.Event()
            done.record()
        else:
            host, done = values, None
        self._pending = (trainer.global_step, trainer.current_epoch, host, done)

    def _raise_if_pending_failed(self, trainer: Trainer) -> None:
        """The deferred check of an earlier step: waits only for that step's copy, long done."""
        if self._pending is None:
            return
        step, epoch, host, done = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()
        if bool(torch.isfinite(host).all()):
            return
        saver = trainer.checkpoint_callback
        last = (saver.last_model_path or saver.best_model_path) if saver is not None else ""
        shown = ", ".join(f"{v:.4g}" for v in host.tolist())
        raise NonFiniteError(
            f"training stopped: non-finite loss or gradient at step {step} (epoch {epoch}): losses and gradient norm {shown}. "
            "The step was applied (NonFiniteGuard check: deferred reads it one step later, without a host sync per step); "
            + (f"the last checkpoint, {last}, holds only finite values. " if last else "no checkpoint was written. ")
            + "Lower optimizer.lr (or its warm-up), check the data, or resume with NonFiniteGuard(action: skip)"
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raise_if_pending_failed(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.action == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._raise_if_pending_failed(trainer)  # a deferred failure names its step before the weights are read
        for key in ("state_dict", "current_model_state"):
            for name, value in checkpoint.get(key, {}).items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise NonFiniteError(
                        f"refusing to write a checkpoint at step {trainer.global_step}: weight {name} is not finite; "
                        f"the last checkpoint on disk is kept. Lower optimizer.lr (or its warm-up) or check the data"
                    )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)
