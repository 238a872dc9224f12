"""Pieces every LightningModule of kaleido shares: the optimiser, the checkpoint record, z sampling."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from kaleido.__about__ import __version__
from kaleido.modules.settings import OptimizerSettings, SamplingSettings
from kaleido.nn.prior import LatentPriorNet
from kaleido.tokenizer import KaleidoTokenizer


def adam_with_warmup(parameters: Iterable[nn.Parameter], settings: OptimizerSettings) -> dict[str, Any]:
    """Adam with a linear learning-rate warm-up, stepped per optimiser step (Lightning's format); fused (one
    kernel over every parameter) as ``settings.fused`` says, by default when every parameter is on a GPU."""
    trainable = [p for p in parameters if p.requires_grad]
    fused = settings.fused if settings.fused is not None else bool(trainable) and all(p.is_cuda for p in trainable)
    optimizer = torch.optim.Adam(
        trainable, lr=settings.lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay,
        **({"fused": True} if fused else {}),
    )
    warmup = max(1, settings.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout. A checkpoint
    keeps the layout its state was saved in: resumed with the other ``channels_last``, fused Adam refuses
    (CUDA) or misreads (CPU) moments laid out unlike their parameters."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


class GradientClipping:
    """The trainer's gradient clipping (``gradient_clip_val``), done by kaleido where Lightning refuses it.
    Mixed into kaleido's modules.

    - By norm, through the strategy when it clips by its own means (a ``clip_grad_norm(max_norm)`` method:
      FSDP's norm over every rank's shard, ``kaleido.fsdp.KaleidoFSDP``): Lightning's FSDP precision plugin
      refuses norm clipping (Lightning-AI/pytorch-lightning#19235), and the paper clips by norm.
    - Without loss scaling (bf16 and 32-bit training), directly on the optimiser's parameters: the gradients
      are the true ones, whatever the optimiser. Lightning's mixed-precision plugin refuses any optimiser that
      could unscale gradients itself (a fused Adam), even with no scaler to unscale.
    - With fp16 loss scaling, Lightning's own (it unscales first)."""

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        if not gradient_clip_val:
            return
        by_norm = gradient_clip_algorithm in (None, "norm")
        clip_norm = getattr(self.trainer.strategy, "clip_grad_norm", None)  # type: ignore[attr-defined]
        if by_norm and clip_norm is not None:
            clip_norm(float(gradient_clip_val))
        elif getattr(self.trainer.precision_plugin, "scaler", None) is None:  # type: ignore[attr-defined]
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            clip = torch.nn.utils.clip_grad_norm_ if by_norm else torch.nn.utils.clip_grad_value_
            clip(parameters, float(gradient_clip_val))
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)  # type: ignore[misc]


def log_options(stage: str, batch_size: int) -> dict[str, Any]:
    """``self.log`` options: per step in training; per epoch elsewhere, averaged over every rank's share
    of the data (DDP: without ``sync_dist`` only rank 0's share would be logged)."""
    training = stage == "train"
    return {"on_step": training, "on_epoch": not training, "sync_dist": not training, "batch_size": batch_size}


def checkpoint_record(module: LightningModule, tokenizer: KaleidoTokenizer) -> dict[str, Any]:
    """What ``kaleido.load`` needs beyond the weights and hparams: the class and the tokenizer."""
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "tokenizer": tokenizer.state_dict(), "version": __version__}


@torch.no_grad()
def sample_latent_ids(
    prior: LatentPriorNet,
    tokenizer: KaleidoTokenizer,
    encoded: Tensor,
    condition_mask: Tensor,
    settings: SamplingSettings,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """z ~ p(z | c), starting with the first type's tag; ids and mask up to and including ``</s>``.

    Seeded on a forked RNG so that drawing z leaves the caller's random state (and the diffusion
    noise) untouched.
    """
    prompt = torch.full_like(condition_mask[:, :1], tokenizer.tag_ids[tokenizer.latent_names[0]], dtype=torch.long)
    devices = [encoded.device] if encoded.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        ids = prior.sample(
            encoded, condition_mask, prompt, tokenizer.max_latent_length,
            temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        )
    is_eos = (ids == tokenizer.eos_id).long()
    mask = (torch.cumsum(is_eos, dim=1) - is_eos) == 0
    return ids.masked_fill(~mask, tokenizer.pad_id), mask
