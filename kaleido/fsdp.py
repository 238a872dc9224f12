"""FSDP for large denoisers / priors (issue 20): Lightning's ``FSDPStrategy`` with kaleido's wrap units.

Each residual / attention / transformer block of the denoisers and each T5 layer is its own FSDP unit, so a
step gathers one block's full weights at a time. Checkpoints default to ``state_dict_type="full"``: one
consolidated ``.ckpt`` on rank 0 that ``kaleido.load`` reads on one device, like a single-GPU checkpoint.
Mixed precision is the trainer's ``precision`` (``bf16-mixed``: Lightning turns it into FSDP's
``MixedPrecision``). Use: ``python -m kaleido fit --config <run>.yaml --config configs/strategies/fsdp.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn

from kaleido.class_paths import import_class

# Repeated blocks of every backbone (UNet, nested UNet, DiT, the conditioning transformer) and of T5.
WRAP_CLASSES: tuple[str, ...] = (
    "kaleido.nn.blocks.ResBlock",
    "kaleido.nn.blocks.AttentionBlock",
    "kaleido.nn.dit.DiTBlock",
    "kaleido.nn.attention.TransformerBlock",
    "transformers.models.t5.modeling_t5.T5Block",
)


def module_classes(paths: Sequence[str]) -> set[type[nn.Module]]:
    """Module classes by dotted path, with a one-line error for a path that names none."""
    return {import_class(path, nn.Module, "FSDP wrap") for path in paths}


class KaleidoFSDP(FSDPStrategy):
    """``FSDPStrategy`` whose auto-wrap policy and activation checkpointing take classes by dotted path (so a
    YAML config can name them), defaulting to kaleido's blocks and T5's layers, and saving full checkpoints.

    Args:
        wrap: module classes that become FSDP units (``auto_wrap_policy``).
        state_dict_type: ``"full"`` (one consolidated file, loads with ``kaleido.load``) or ``"sharded"``
            (a folder of shards per checkpoint: convert with
            ``python -m lightning.pytorch.utilities.consolidate_checkpoint <folder>`` before ``kaleido.load``).
        sharding_strategy: FSDP's ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``HYBRID_SHARD``, ...
        activation_checkpointing: module classes whose activations are recomputed in the backward pass.
        cpu_offload: keep parameters (and gradients) on the CPU between uses.
        kwargs: the rest of ``FSDPStrategy``'s arguments.
    """

    def __init__(
        self,
        wrap: Sequence[str] = WRAP_CLASSES,
        state_dict_type: Literal["full", "sharded"] = "full",
        sharding_strategy: str = "FULL_SHARD",
        activation_checkpointing: Sequence[str] | None = None,
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        self.wrap_classes = tuple(wrap)
        super().__init__(
            auto_wrap_policy=module_classes(wrap),
            state_dict_type=state_dict_type,
            sharding_strategy=sharding_strategy,  # type: ignore[arg-type]
            activation_checkpointing_policy=module_classes(activation_checkpointing) if activation_checkpointing else None,
            cpu_offload=cpu_offload,
            **kwargs,
        )

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Clip the gradients to a total norm of ``max_norm`` over every rank's shard: FSDP's own
        ``clip_grad_norm_`` on the root unit (a collective), which kaleido's modules call for norm clipping
        (``GradientClipping``; Lightning's FSDP plugin clips by value only). Returns the norm before clipping."""
        return self.model.clip_grad_norm_(max_norm)  # type: ignore[union-attr,operator]
