"""The training progress bar without a host sync per step.

Lightning's progress bars read the logged metrics (``train/loss``, ...) at every training step to show
them, and reading a metric copies it to the host: a CUDA sync that drains the GPU's queue of launched
work each step, so the host's share of the next step (the loader, Python, launches) no longer overlaps
the GPU's. kaleido's bars are Lightning's with the shown metrics refreshed every ``metrics_every_n_steps``
steps (``fit`` uses ``trainer.log_every_n_steps``, when the logger reads them anyway); the bar itself
still moves every step. ``fit`` puts one in place of Lightning's default bar unless the config names a
progress bar of its own (``trainer.callbacks``) or turns the bar off (``trainer.enable_progress_bar``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar


class _MetricsEveryNSteps:
    """Mixed into a Lightning progress bar: during training, the metrics shown are read every n steps."""

    def __init__(self, *args: Any, metrics_every_n_steps: int = 50, **kwargs: Any) -> None:
        if metrics_every_n_steps < 1:
            raise ValueError(f"metrics_every_n_steps must be >= 1, got {metrics_every_n_steps}")
        super().__init__(*args, **kwargs)
        self.metrics_every_n_steps = metrics_every_n_steps
        self._shown: tuple[int, dict[str, Any]] | None = None  # (the step they were read at, the metrics)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        if not trainer.training:  # validation and the end of an epoch: read as Lightning does
            return super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        step = trainer.global_step
        if self._shown is None or step < self._shown[0] or step - self._shown[0] >= self.metrics_every_n_steps:
            self._shown = (step, super().get_metrics(trainer, pl_module))  # type: ignore[misc]
        return self._shown[1]


class KaleidoRichProgressBar(_MetricsEveryNSteps, RichProgressBar):
    """Lightning's ``RichProgressBar``, metrics read every ``metrics_every_n_steps`` training steps."""


class KaleidoTQDMProgressBar(_MetricsEveryNSteps, TQDMProgressBar):
    """Lightning's ``TQDMProgressBar``, metrics read every ``metrics_every_n_steps`` training steps."""


def use_kaleido_progress_bar(trainer: Trainer, configured: list[Any]) -> None:
    """Swap the bar Lightning added by default (``configured``, the config's callbacks, holds none) for
    kaleido's of the same kind, refreshing metrics every ``trainer.log_every_n_steps`` steps."""
    if any(isinstance(callback, ProgressBar) for callback in configured):
        return
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) in (RichProgressBar, TQDMProgressBar):
            kind = KaleidoRichProgressBar if isinstance(callback, RichProgressBar) else KaleidoTQDMProgressBar
            trainer.callbacks[index] = kind(metrics_every_n_steps=max(1, trainer.log_every_n_steps))
            return
