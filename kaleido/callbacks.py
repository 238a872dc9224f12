"""Callbacks: EMA of the weights, a learning-rate cooldown at the end of a step or time budget, checkpoints
that keep a run's last steps, the non-finite guard (:mod:`kaleido.nonfinite`), and sample grids (with their latent text, and latents drawn by the types
that draw) and latent adherence during validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import Timer, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn import Module
from torch.optim.swa_utils import get_ema_multi_avg_fn

from kaleido.metrics.adherence import Readers, adherence_readers, latent_adherence
from kaleido.modules.base import ConditionalDiffusion
from kaleido.nonfinite import NonFiniteError, NonFiniteGuard  # configs name it kaleido.callbacks.NonFiniteGuard
from kaleido.viz import draws, image_grid, samples_grid


class EMA(WeightAveraging):
    """Exponential moving average of the weights (paper: decay 0.9999). Validation, sampling callbacks and
    saved checkpoints use the averaged weights (Lightning's ``WeightAveraging`` swaps them in and saves them).

    Args:
        decay: the EMA decay.
        start_step: optimiser steps before averaging starts. Until then the "average" is a copy of the
            current weights, so that validation, checkpoints and the end of a shorter run use them
            rather than the weights the model started from.

    The update after each optimiser step is one fused ``foreach`` call per dtype on lists of tensors
    gathered at the first update. Lightning's own (torch's ``AveragedModel.update_parameters``) walks the
    module tree for every tensor and reads ``n_averaged`` back from the device, a host sync at every
    training step: on a GPU the host then waits for the step to finish before it launches the next.
    """

    def __init__(self, decay: float = 0.9999, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if start_step < 0:
            raise ValueError(f"EMA start_step must be >= 0, got {start_step}")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay, self.start_step = decay, start_step
        self._groups: list[tuple[list[Tensor], list[Tensor]]] | None = None  # (averaged, current) per device and dtype

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, FSDPStrategy):
            # Lightning's WeightAveraging copies the whole unsharded model on every rank and averages the
            # module's parameters, which FSDP shards outside its forward: the average would be wrong.
            raise ValueError(
                "the EMA callback does not work under FSDP (it would average sharded weights): remove "
                "kaleido.callbacks.EMA from trainer.callbacks, or train with DDP (docs/scale.md)"
            )
        super().setup(trainer, pl_module, stage)
        self._groups = None  # gathered again at the first update: the model may have moved since

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step  # optimiser steps taken; the step just taken has index step - 1
        if step <= self._latest_update_step or not self.should_update(step_idx=step - 1):
            return  # no optimiser step in this batch (gradient accumulation)
        assert self._average_model is not None
        if self._groups is None:
            self._groups = _tensor_groups(self._average_model.module, pl_module)
        copying = step - 1 <= self.start_step  # start_step >= 0: the first update always copies
        for averaged, current in self._groups:
            if copying or not averaged[0].is_floating_point():
                torch._foreach_copy_(averaged, current)
            else:
                torch._foreach_lerp_(averaged, current, 1.0 - self.decay)  # = decay · average + (1 - decay) · current
        self._average_model.n_averaged.add_(1)  # on the device, never read back here: checkpoints keep it
        self._latest_update_step = step


def _tensor_groups(averaged: Module, current: Module) -> list[tuple[list[Tensor], list[Tensor]]]:
    """The parameters and buffers of two copies of a model, paired in order and grouped by device and dtype
    (what one ``foreach`` call takes). The parameters themselves, not detached views, so that new data
    behind a parameter (``load_state_dict``, ``.to()``) is seen; buffers are gathered again at each ``setup``."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    pairs = zip(chain(averaged.parameters(), averaged.buffers()), chain(current.parameters(), current.buffers()), strict=True)
    for average, tensor in pairs:
        kept, live = groups.setdefault((average.device, average.dtype), ([], []))
        kept.append(average)
        live.append(tensor)
    return list(groups.values())


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
        """The Timer that ``max_time`` set up (a Timer without a duration has no time remaining)."""
        return next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining("train") is not None), None)

    def progress(self, trainer: Trainer) -> float:
        """How far training is, in [0, 1]: the larger of the step and the time shares."""
        shares = [0.0]
        total_steps = trainer.estimated_stepping_batches
        if math.isfinite(total_steps) and total_steps > 0:
            shares.append(trainer.global_step / total_steps)
        timer = self._timer(trainer)
        if timer is not None:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train") or 0.0
            if elapsed + remaining > 0:  # the duration, from Timer's public API
                shares.append(elapsed / (elapsed + remaining))
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
        if self.save_last and (trainer.should_stop or out_of_steps):
            self._save_last_now(trainer)

    def _save_last_now(self, trainer: Trainer) -> None:
        """Write ``last.ckpt`` for the current step unless this step is already saved (or not fitting).

        The only use of Lightning's private ModelCheckpoint helpers here, checked against Lightning 2.6.6:
        no public method saves "last" on demand. ``on_train_end`` does it only when no checkpoint was
        saved yet; ``trainer.save_checkpoint`` would bypass the version counter, ``last_model_path``,
        removal of the previous last file and the already-saved-this-step check, which these helpers
        keep Lightning's own. (With ``save_last: link`` the helper links ``last.ckpt`` to the latest
        interval checkpoint, so that mode still loses the steps after it.)
        """
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class LogSamples(Callback):
    """Every ``every_n_epochs`` validation epochs, sample ``samples_per_condition`` images for each
    condition with fixed seeds, log the grid to TensorBoard and the latent texts as a table (and, when a
    latent type draws its latents, the grid with them drawn over each image); if ``adherence`` is set,
    also log each latent type's adherence as ``val/adherence/<type>/<measure>`` (the types' ``adherence``
    hooks, read back by the data set's or the type's extractor: :mod:`kaleido.metrics.adherence`; e.g.
    ``val/adherence/text/objects``). Types that cannot be measured are skipped with one line each.

    Args:
        conditions: the conditions to sample; default: the first ``num_conditions`` distinct conditions
            of the data's validation split (its training split if it has none).
        num_conditions: how many distinct conditions the default takes.
    """

    def __init__(
        self,
        conditions: Sequence[str] | None = None,
        samples_per_condition: int = 8,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        adherence: bool = False,
        num_conditions: int = 3,
    ) -> None:
        self.conditions = list(conditions) if conditions is not None else None
        self.samples_per_condition, self.num_conditions = samples_per_condition, num_conditions
        self.cfg_scale, self.sampler, self.num_steps = cfg_scale, sampler, num_steps
        self.every_n_epochs, self.seed, self.adherence = every_n_epochs, seed, adherence
        self.readers: Readers | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Choose the conditions, and the adherence readers, before training starts (not hours later)."""
        if not isinstance(pl_module, ConditionalDiffusion):
            return
        data = getattr(trainer, "datamodule", None)
        if self.conditions is None:
            self.conditions = self._data_conditions(data)
        if self.adherence and pl_module.uses_latents and self.readers is None:
            self.readers = adherence_readers(pl_module.tokenizer.latent_types, data)
            for note in self.readers.notes():
                rank_zero_info(f"LogSamples: {note}")

    def _data_conditions(self, data: object) -> list[str]:
        for split in ("val", "train"):
            try:
                found = list(dict.fromkeys(data.conditions(split)))[: self.num_conditions]  # type: ignore[attr-defined]
            except (AttributeError, KeyError, ValueError):  # no such method or split
                continue
            if found:
                return found
        raise ValueError(
            "LogSamples has no conditions to sample: give conditions: [...], or use a data module with "
            "conditions(split) (the data contract, docs/data.md)"
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
        conditions = [c for c in self.conditions or () for _ in range(self.samples_per_condition)]
        out = pl_module.generate(
            conditions, cfg_scale=self.cfg_scale, sampler=self.sampler, num_steps=self.num_steps, seed=self.seed
        )
        if self.readers is not None and self.readers.extractors and out.latent_texts is not None:
            types = pl_module.tokenizer.latent_types
            scores = latent_adherence(out.images, out.latent_texts, types, self.readers.extractors, out.conditions)
            values = {f"val/adherence/{name}/{k}": float(v) for name, score in scores.items() for k, v in score.flat().items()}
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
                    if any(draws(t) for t in types):
                        drawn = samples_grid(
                            out.images, out.latent_texts, types, self.samples_per_condition, captions=False
                        )
                        logger.experiment.add_image("samples/drawn_latents", np.asarray(drawn), step, dataformats="HWC")


__all__ = ["EMA", "Cooldown", "LogSamples", "ModelCheckpoint", "NonFiniteError", "NonFiniteGuard"]
