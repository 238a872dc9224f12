"""The latent prior trained alone (the first stage of two-stage training)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from kaleido.checkpoint_io import CHECKPOINT_KEY
from kaleido.modules.common import GradientClipping, adam_with_warmup, checkpoint_record, log_options, sample_latent_ids
from kaleido.modules.settings import OptimizerSettings, SamplingSettings, T5Settings, from_dict, to_dict
from kaleido.nn.prior import LatentPriorNet
from kaleido.tokenizer import KaleidoTokenizer


class LatentPrior(GradientClipping, LightningModule):
    """p(z | c) alone: teacher-forced token cross-entropy. ``Kaleido(init_prior_from=ckpt)`` starts
    its prior from this module's checkpoint.

    Args:
        tokenizer: built by the data module, with its latent types (linked by the CLI).
        image_size: unused (the prior sees no pixels); accepted because the CLI links it to every model.
        t5: size of the encoder-decoder, or a local pretrained checkpoint.
        sampling: temperature / top-k / top-p for ``sample``.
        optimizer: Adam and warm-up.
    """

    def __init__(
        self,
        tokenizer: KaleidoTokenizer | None = None,
        image_size: int | None = None,
        t5: T5Settings | None = None,
        sampling: SamplingSettings | None = None,
        optimizer: OptimizerSettings | None = None,
    ) -> None:
        super().__init__()
        self.image_size = image_size  # unused; see Args
        if tokenizer is None or not tokenizer.latent_names:
            raise ValueError("LatentPrior needs the data module's tokenizer with at least one latent type (data.latents)")
        self.tokenizer = tokenizer
        self.t5_settings = from_dict(T5Settings, t5)
        self.sampling = from_dict(SamplingSettings, sampling)
        self.optimizer_settings = from_dict(OptimizerSettings, optimizer)
        self.save_hyperparameters(
            {"t5": to_dict(self.t5_settings), "sampling": to_dict(self.sampling), "optimizer": to_dict(self.optimizer_settings)}
        )
        self.prior = LatentPriorNet(self.t5_settings, tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id)

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor:
        encoded = self.prior.encode(batch["condition_ids"], batch["condition_mask"])
        nll = self.prior.teacher_force(encoded, batch["condition_mask"], batch["latent_ids"], batch["latent_mask"]).nll
        self.log(f"{stage}/nll", nll, prog_bar=True, **log_options(stage, len(batch["condition_ids"])))
        return nll

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        return adam_with_warmup(self.parameters(), self.optimizer_settings)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_record(self, self.tokenizer)

    @torch.no_grad()
    def sample(self, conditions: Sequence[str], seed: int = 0) -> list[str]:
        """Draw one editable latent text per condition."""
        tok = self.tokenizer
        ids, mask = (x.to(self.device) for x in tok.encode_conditions(conditions))
        encoded = self.prior.encode(ids, mask)
        latent_ids, latent_mask = sample_latent_ids(self.prior, tok, encoded, mask, self.sampling, seed)
        return [tok.join_latent_texts(tok.decode_latent_texts(row[m].tolist())) for row, m in zip(latent_ids.cpu(), latent_mask.cpu())]
