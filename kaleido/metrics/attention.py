"""Where the denoiser's cross-attention goes: the share on the learned null token, on the condition c
and on the latent z. A diagnostic for "does this model read z?": a Kaleido that ignores its latent
puts little attention on z (or parks it on the null token) at the noise levels where layout forms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kaleido.modules.base import ConditionalDiffusion


@dataclass
class AttentionShares:
    """Mean share of cross-attention (over samples, heads and pixels) on each token group, for all
    cross-attention layers together and per layer (``layers[name] = (null, condition, latent)``)."""

    null: float
    condition: float
    latent: float
    layers: dict[str, tuple[float, float, float]]


@torch.no_grad()
def cross_attention_shares(
    model: ConditionalDiffusion, batch: dict[str, Any], timesteps: Sequence[int] = (250, 500, 750), seed: int = 0
) -> dict[int, AttentionShares]:
    """For each timestep: noise the batch's images to it (seeded), run the denoiser once on the
    conditional branch and record where every cross-attention layer attends.

    The denoiser's context is ``[null, c tokens, z tokens]``; c is as long as ``batch["condition_ids"]``.
    """
    if not timesteps or not all(0 <= t < model.schedule.num_timesteps for t in timesteps):
        raise ValueError(f"timesteps must be non-empty, each in [0, {model.schedule.num_timesteps}), got {timesteps}")
    was_training = model.training
    model.eval()
    cond = model.condition(batch)
    images = batch["image"].to(cond.states.device)
    condition_length = batch["condition_ids"].shape[1]
    layers = {name: m for name, m in model.denoiser.named_modules() if name.endswith("cross_attn")}
    if not layers:
        raise ValueError(f"{type(model.denoiser).__name__} has no cross-attention layers (modules named '*cross_attn')")
    recorded: dict[str, Tensor] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:  # noqa: ARG001
            mass = module.weights(args[0], kwargs["context"], kwargs["mask"]).mean(dim=(1, 2))
            bounds = (0, 1, 1 + condition_length, mass.shape[1])
            recorded[name] = torch.stack([mass[:, a:z].sum(1) for a, z in zip(bounds, bounds[1:])], dim=1).mean(0)

        return hook

    handles = [module.register_forward_hook(record(name), with_kwargs=True) for name, module in layers.items()]
    generator = torch.Generator(images.device).manual_seed(seed)
    result = {}
    try:
        for step in timesteps:
            t = torch.full((images.shape[0],), step, device=images.device, dtype=torch.long)
            noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
            model.denoiser(model.schedule.add_noise(images, noise, t), t, cond.states, cond.mask)
            shares = {name: tuple(float(v) for v in recorded[name]) for name in layers}
            overall = torch.tensor(list(shares.values())).mean(0).tolist()
            result[step] = AttentionShares(*overall, layers=shares)  # type: ignore[arg-type]
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return result


__all__ = ["AttentionShares", "cross_attention_shares"]
