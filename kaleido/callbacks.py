"""Callbacks: sample grids (with their latent text, boxes and blobs drawn) and latent adherence during validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim.swa_utils import get_ema_multi_avg_fn

from kaleido.modules.base import ConditionalDiffusion
from kaleido.viz import has_geometry, image_grid, samples_grid


class EMA(WeightAveraging):
    """Exponential moving average of the weights (paper: decay 0.9999), updated with one fused
    ``foreach`` call per step rather than a Python loop over parameters (about 5x less overhead than
    Lightning's ``EMAWeightAveraging`` on an H100; see docs/performance.md). Validation, sampling
    callbacks and saved checkpoints use the averaged weights.

    Args:
        decay: the EMA decay.
        start_step: optimiser steps before averaging starts (the average copies the weights then).
    """

    def __init__(self, decay: float = 0.9999, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:  # noqa: ARG002
        return step_idx is not None and step_idx >= self.start_step


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

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
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
