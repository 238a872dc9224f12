"""The VQ image tokenizer as a LightningModule: trains the VQ-VAE behind the ``visual_token`` latent.

    python -m kaleido fit --config configs/shapes/vq.yaml

then point ``VisualTokenLatent(checkpoint=...)`` at the saved checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from kaleido.__about__ import __version__
from kaleido.checkpoint_io import CHECKPOINT_KEY
from kaleido.modules.common import GradientClipping, adam_with_warmup, checkpoint_record, log_options
from kaleido.modules.settings import OptimizerSettings, from_dict, to_dict
from kaleido.nn.vqvae import VQVAE, VQSettings
from kaleido.tokenizer import KaleidoTokenizer
from kaleido.viz import image_grid

GRID_IMAGES = 8  # originals over reconstructions in the TensorBoard grid


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code distribution given by ``counts`` [K]: the effective number of codes used."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def code_counts(codes: Tensor, codebook_size: int) -> Tensor:
    """How often each code occurs in ``codes`` (any shape); no host sync, unlike ``bincount``."""
    flat = codes.flatten()
    return torch.zeros(codebook_size, device=codes.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))


class VQTokenizer(GradientClipping, LightningModule):
    """Trains :class:`kaleido.nn.vqvae.VQVAE` on the images of any data module (reconstruction +
    commitment loss; the codebook follows by EMA).

    Args:
        tokenizer: the prior's tokenizer, linked by the CLI into every model. The VQ-VAE does not use
            it; it is kept only so that the checkpoint record is complete for ``kaleido.load``.
        image_size: side of the training images (linked from the data module).
        vq: the network and quantiser settings.
        optimizer: Adam and warm-up.
    """

    def __init__(
        self,
        tokenizer: KaleidoTokenizer | None = None,
        image_size: int = 32,
        vq: VQSettings | None = None,
        optimizer: OptimizerSettings | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.vq_settings = from_dict(VQSettings, vq)
        self.optimizer_settings = from_dict(OptimizerSettings, optimizer)
        # Plain dicts: the checkpoint then loads with weights_only=True and replays into __init__.
        self.save_hyperparameters(
            {"image_size": image_size, "vq": to_dict(self.vq_settings), "optimizer": to_dict(self.optimizer_settings)}
        )
        self.vq = VQVAE(image_size, self.vq_settings)
        # Plain tensors, not buffers: DDP would overwrite buffers with rank 0's at every forward.
        self._val_counts: Tensor | None = None
        self._grid_images: Tensor | None = None

    # -- inference --------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.vq.num_tokens

    def encode(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] → codes [B, K]."""
        return self.vq.encode(images.to(self.device))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, K] → images [B, 3, H, W] in [-1, 1]."""
        return self.vq.decode(codes.to(self.device))

    # -- training ---------------------------------------------------------------------------------
    def _step(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        images = batch["image"]
        reconstruction, losses, codes = self.vq(images)
        loss = losses["recon"] + losses["commitment"]
        mse = losses["recon"] if self.vq_settings.recon_loss == "mse" else F.mse_loss(reconstruction.float(), images.float())
        logs = {"loss": loss, "recon_mse": mse.detach(), "commitment": losses["commitment"].detach()}
        if stage == "train":  # the validation perplexity is taken over the whole epoch instead
            logs["perplexity"] = perplexity(code_counts(codes, self.vq_settings.codebook_size))
        for name, value in logs.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "recon_mse", **log_options(stage, images.shape[0]))
        return loss, reconstruction, codes

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "train")[0]

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.vq_settings.codebook_size, device=self.device)
        self._grid_images = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, reconstruction, codes = self._step(batch, "val")
        if self._val_counts is not None:
            self._val_counts += code_counts(codes, self.vq_settings.codebook_size)
        if batch_idx == 0:
            n = min(GRID_IMAGES, len(codes))
            self._grid_images = torch.cat([batch["image"][:n], reconstruction[:n]]).detach().float().cpu()
        return loss

    def _warn_if_collapsed(self, used: int) -> None:
        """One code for every validation image means the encoder's output no longer depends on the
        image; the dead-code restarts cannot recover from that (every restart candidate is the same
        vector), so say so instead of training on."""
        if used > 1 or self.trainer.sanity_checking or self.global_step == 0:
            return
        rank_zero_warn(
            f"the VQ codebook has collapsed: {used} of {self.vq_settings.codebook_size} codes used on the "
            f"validation set at step {self.global_step}, so the tokens carry no information. This is a "
            f"training divergence (seen on the GPU at lr 1e-3, batch 256); restart with a lower "
            f"optimizer.lr (configs/shapes/vq.yaml uses 3e-4) or a longer warm-up."
        )

    def on_validation_epoch_end(self) -> None:
        if self._val_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        if counts.sum() > 0:
            # Already summed over ranks: log without another reduction.
            self.log("val/codebook_usage", (counts > 0).float().mean())
            self.log("val/perplexity", perplexity(counts))
            self._warn_if_collapsed(int((counts > 0).sum()))
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or self._grid_images is None:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                n = len(self._grid_images) // 2
                grid = image_grid(self._grid_images, nrow=n, upscale=2)  # top row: data, bottom: reconstruction
                logger.experiment.add_image("val/reconstructions", grid, self.global_step)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "test")[0]

    def configure_optimizers(self) -> dict[str, Any]:
        return adam_with_warmup(self.parameters(), self.optimizer_settings)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_record(self, self.tokenizer)
        else:  # built in Python without a data module: load_vqvae reads it; kaleido.load needs a tokenizer
            cls = type(self)
            checkpoint[CHECKPOINT_KEY] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "tokenizer": None, "version": __version__}


__all__ = ["VQTokenizer", "perplexity"]
