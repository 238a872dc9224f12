"""Callbacks: EMA of the weights, a learning-rate cooldown at the end of a step or time budget, checkpoints
that keep a run's last steps, and sample grids (with their latent text, boxes and blobs drawn) and latent
adherence during validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import Timer, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim.swa_utils import get_ema_multi_avg_fn

from kaleido.modules.base import ConditionalDiffusion
from kaleido.viz import has_geometry, image_grid, samples_grid


class EMA(WeightAveraging):
    """Exponential moving average of the weights (paper: decay 0.9999), updated with one fused
    ``foreach`` call per step rather than a Python loop over parameters (about 5x less overhead than
    Lightning's ``EMAWeightAveraging`` on an H100; see docs/results.md). Validation, sampling
    callbacks and saved checkpoints use the averaged weights.

    Args:
        decay: the EMA decay.
        start_step: optimiser steps before averaging starts. Until then the "average" is a copy of the
            current weights, so that validation, checkpoints and the end of a shorter run use them
            rather than the weights the model started from.
    """

    def __init__(self, decay: float = 0.9999, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay, self.start_step = decay, start_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._average_model is not None and trainer.global_step - 1 <= self.start_step:
            self._average_model.n_averaged.zero_()  # an update at count 0 copies the weights
        super().on_train_batch_end(trainer, pl_module, *args)


class Cooldown(Callback):
    """Warm-up, stable, decay (WSD): the learning rate falls from the schedule's value to ``final`` times
    it over the last ``fraction`` of training. The end of training is whichever budget runs out first:
    ``trainer.max_steps`` / ``max_epochs`` or ``trainer.max_time`` (then progress is wall-clock time, so
    the decay follows the time budget on any hardware, but a run is no longer step-for-step repeatable).

    The factor multiplies what the optimiser's scheduler last set (the warm-up), after every scheduler
    step, so it never compounds and checkpoints resume at the right rate. Schedulers must compute their
    rate from their base rates (``LambdaLR``, kaleido's warm-up, does), not from the current one.

    Args:
        fraction: the share of training, at the end, over which the rate decays, in (0, 1].
        final: the rate at the end, as a multiple of the scheduled rate, in [0, 1).
        shape: "linear", "cosine" or "sqrt" (1 - sqrt(progress), Hägele et al. 2024).
    """

    SHAPES = ("linear", "cosine", "sqrt")

    def __init__(
        self, fraction: float = 0.2, final: float = 0.0, shape: Literal["linear", "cosine", "sqrt"] = "linear"
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"Cooldown fraction must be in (0, 1], got {fraction}")
        if not 0.0 <= final < 1.0:
            raise ValueError(f"Cooldown final must be in [0, 1), got {final}")
        if shape not in self.SHAPES:
            raise ValueError(f"Cooldown shape must be one of {self.SHAPES}, got {shape!r}")
        self.fraction, self.final, self.shape = fraction, final, shape

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not math.isfinite(trainer.estimated_stepping_batches) and self._timer(trainer) is None:
            raise ValueError(
                "Cooldown needs an end of training to decay towards: set trainer.max_steps, max_epochs or max_time"
            )
        self._apply(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._apply(trainer)  # after the scheduler's step (Lightning steps it before this hook)

    @staticmethod
    def _timer(trainer: Trainer) -> Timer | None:
        return next((c for c in trainer.callbacks if isinstance(c, Timer) and c._duration is not None), None)  # type: ignore[attr-defined]

    def progress(self, trainer: Trainer) -> float:
        """How far training is, in [0, 1]: the larger of the step and the time shares."""
        shares = [0.0]
        total_steps = trainer.estimated_stepping_batches
        if math.isfinite(total_steps) and total_steps > 0:
            shares.append(trainer.global_step / total_steps)
        timer = self._timer(trainer)
        if timer is not None:
            shares.append(timer.time_elapsed("train") / timer._duration)  # type: ignore[attr-defined]
        return min(1.0, max(shares))

    def factor_at(self, progress: float) -> float:
        into = (progress - (1.0 - self.fraction)) / self.fraction  # 0 where the decay starts, 1 at the end
        if into <= 0.0:
            return 1.0
        into = min(1.0, into)
        remaining = {
            "linear": 1.0 - into,
            "cosine": 0.5 * (1.0 + math.cos(math.pi * into)),
            "sqrt": 1.0 - math.sqrt(into),
        }[self.shape]
        return self.final + (1.0 - self.final) * remaining

    def _apply(self, trainer: Trainer) -> None:
        factor = self.factor_at(self.progress(trainer))
        scheduled = {id(c.scheduler.optimizer): c.scheduler.get_last_lr() for c in trainer.lr_scheduler_configs}
        for optimizer in trainer.optimizers:
            base = scheduled.get(id(optimizer)) or [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
            for group, lr in zip(optimizer.param_groups, base):
                group["lr"] = lr * factor


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments), which also writes ``last.ckpt`` (``save_last``) at
    the step where a run stops between two ``every_n_train_steps`` saves: ``max_time`` runs out, or
    ``max_steps`` is not a multiple of the interval. Lightning's own end-of-fit save is skipped once any
    checkpoint exists, so those steps were lost (up to 199 of a 9-minute GPU run's ~3,000 at 200). It is
    written at the last batch, before ``EMA`` copies the average into the model at the end of fit, so
    the checkpoint holds both weight sets as every other does and a resumed run continues exactly.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        out_of_steps = 0 < trainer.max_steps <= trainer.global_step
        # Lightning's own helpers (private in 2.x), so `save_last: link`, naming and the skip rules stay its own.
        if self.save_last and (trainer.should_stop or out_of_steps) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class LogSamples(Callback):
    """Every ``every_n_epochs`` validation epochs, sample ``samples_per_condition`` images for each
    condition with fixed seeds, log the grid to TensorBoard and the latent texts as a table (and, when z
    has boxes or blobs, the grid with them drawn over each image); if ``adherence`` is set, also log
    each latent type's adherence as ``val/adherence/<type>/<measure>`` (shapes latents: see
    :func:`kaleido.metrics.adherence.latent_adherence`; e.g. ``val/adherence/text/objects``)."""

    def __init__(
        self,
        conditions: Sequence[str] = ("a circle", "a square", "a triangle"),
        samples_per_condition: int = 8,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        adherence: bool = False,
    ) -> None:
        self.conditions = [c for c in conditions for _ in range(samples_per_condition)]
        self.samples_per_condition = samples_per_condition
        self.cfg_scale, self.sampler, self.num_steps = cfg_scale, sampler, num_steps
        self.every_n_epochs, self.seed, self.adherence = every_n_epochs, seed, adherence

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse, before training starts, latent types no adherence measure knows (not hours later)."""
        if not (self.adherence and isinstance(pl_module, ConditionalDiffusion)):
            return
        from kaleido.metrics.adherence import MEASURED

        unknown = [n for n in pl_module.tokenizer.latent_names if n not in MEASURED]
        if unknown:
            raise ValueError(
                f"LogSamples(adherence=true) has no measure for latent types {unknown}; measured are "
                f"{list(MEASURED)}. Set adherence: false for these types"
            )

    def _after_weight_averaging(self, trainer: Trainer) -> bool:
        """Whether an ``EMA`` (``WeightAveraging``) callback runs before this one. It swaps the averaged
        weights in when validation starts and out when it ends, so this callback samples at the start
        of validation when it comes after it, and at the end otherwise: with the averaged weights
        either way, as validation and checkpoints use."""
        order = {id(c): i for i, c in enumerate(trainer.callbacks)}
        averaging = [order[id(c)] for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        return bool(averaging) and min(averaging) < order[id(self)]

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._after_weight_averaging(trainer):
            self.log_samples(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._after_weight_averaging(trainer):
            self.log_samples(trainer, pl_module)

    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, ConditionalDiffusion):
            return
        if trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        out = pl_module.generate(
            self.conditions, cfg_scale=self.cfg_scale, sampler=self.sampler, num_steps=self.num_steps, seed=self.seed
        )
        if self.adherence and out.latent_texts is not None:
            from kaleido.metrics.adherence import latent_adherence

            scores = latent_adherence(out.images, out.latent_texts, pl_module.tokenizer.latent_types)
            values = {
                f"val/adherence/{name}/{field}": float(value)
                for name, score in scores.items()
                for field, value in vars(score).items()
                if field != "count"
            }
            pl_module.log_dict(values, rank_zero_only=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                step = trainer.global_step
                grid = image_grid(out.images, nrow=self.samples_per_condition, upscale=2)
                logger.experiment.add_image("samples", grid, step)
                if out.latent_texts is not None:
                    rows = [f"| {i} | {c} | {z} |" for i, (c, z) in enumerate(zip(out.conditions, out.latent_texts))]
                    table = "| # | condition | latent z |\n|---|---|---|\n" + "\n".join(rows)
                    logger.experiment.add_text("samples/latents", table, step)
                    types = pl_module.tokenizer.latent_types
                    if any(has_geometry(t) for t in types):
                        drawn = samples_grid(
                            out.images, out.latent_texts, types, self.samples_per_condition, captions=False
                        )
                        logger.experiment.add_image("samples/drawn_latents", np.asarray(drawn), step, dataformats="HWC")
