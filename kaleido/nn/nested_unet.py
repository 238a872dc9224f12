"""MDM's nested UNet (Gu et al., "Matryoshka Diffusion Models"; apple/ml-mdm): a UNet at a low resolution
nested, as the middle block, inside outer U-Net levels at the full resolution.

    x_t [B, 3, S, S] ──input conv──► outer way down (ResBlocks, S → S / 2^(k-1), skips kept)
                        │                               │
                        │ average-pooled to S / 2^(k-1),│ in_adapter (zero-init conv), added after
                        │ rescaled, at its own t'       │ the inner UNet's input conv
                        ▼                               ▼
                 inner UNet (the UNet, all its levels, its conditioning path) ──► inner head ──► low-res prediction
                        │ its last features
                        ▼ out_adapter (zero-init conv), added to the outer features
                 outer way up (ResBlocks + the skips) ──► output head ──► full-res prediction

The conditioning path is the inner UNet's (null token, transformer layers, pooled embedding): the outer
levels' ResBlocks take its timestep + pooled embedding, so a dropped row (``uncond``) ignores ``cond``
at every level. Pooling ``x_t = α x0 + σ ε`` over r² pixels (r = the nest ratio) averages the noise: it
gives ``α x̄0 + (σ / r) ε̄``, a signal-to-noise ratio r² times t's. With ``inner_input: matched`` (the
shipped configs') the inner UNet sees that rescaled to unit variance at the timestep t' of the model's
schedule with SNR(t') = r² SNR(t): exactly what a UNet trained alone at its side sees at t' (MDM's
schedule shifted per resolution, read off the one full-resolution state). Its output, in the model's
parametrisation at (x', t'), is turned into the same parametrisation of the pooled process at t, which
the loss scores against the pooled target. With both adapters at zero, a fresh nested UNet's inner
output is exactly its inner UNet's: an inner model trained alone (``inner_checkpoint``, ml-mdm's
progressive recipe) starts unchanged, on its own training distribution. Training scores both outputs
(``training_outputs``: MDM's multi-resolution loss); sampling uses the full-resolution one. With
``residual_on_inner`` (not MDM's) the full-resolution output adds the inner one, repeated over each r × r
block, to its head's, so a fresh model starts from the inner model's block means instead of from zero.
docs/choices.md, "The nested UNet", says where this departs from ml-mdm and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.checkpoint_io import CHECKPOINT_KEY, from_dict, read_checkpoint, to_dict
from kaleido.diffusion.schedule import CosineSchedule, Prediction, output_to_x0_eps, x0_to_output
from kaleido.nn.blocks import AttentionBlock, ResBlock, zero_init
from kaleido.nn.denoiser import Denoiser, TrainingOutput, downsample_to
from kaleido.nn.unet import (
    UNet,
    UNetContext,
    UNetSettings,
    build_levels,
    check_divisible,
    check_levels,
    run_down,
    run_up,
)

UNET_CLASS_PATH = f"{UNet.__module__}.{UNet.__qualname__}"


@dataclass
class InnerView:
    """What the inner UNet is given: ``x`` at timestep ``t``, and the coefficients of ``x`` (α', σ') and of the
    pooled ``x_t`` it came from (α, σ; the pooled process), to bring its output back to the pooled process."""

    x: Tensor
    t: Tensor
    pooled: Tensor
    alpha: Tensor
    sigma: Tensor
    alpha_inner: Tensor
    sigma_inner: Tensor


class NestedUNet(Denoiser):
    """A UNet (``inner``) at ``image_size / 2 ** (len(channel_mult) - 1)`` inside outer convolutional levels.

    Args:
        inner: the inner UNet's settings (``UNetSettings``: the ``unet:`` block of a UNet config, so an
            inner model can start from that config's checkpoint).
        base_channels, channel_mult, num_res_blocks: the outer levels, as the UNet's: level ``i`` runs at
            ``image_size / 2 ** i`` with ``channel_mult[i] * base_channels`` channels; the last level's
            resolution is the inner UNet's.
        attention_levels: outer levels with self- and cross-attention (default none: MDM's outer levels
            have none, attention at the full resolution is the costly part).
        loss_weights: (full resolution, inner resolution) weights of the multi-resolution loss; ml-mdm's
            default (``multi_res_weights`` unset) weighs every resolution 1.
        inner_checkpoint: a kaleido checkpoint whose denoiser is a UNet of the ``inner`` settings, trained
            at the inner resolution: its (averaged) weights start the inner UNet. Not stored in this
            model's checkpoint (the weights are), so its spec never names a file that may be gone.
        freeze_inner: keep the inner UNet's weights fixed (ml-mdm's ``freeze_inner_unet``); the outer
            levels and the adapters train.
        inner_input: ``"matched"`` (the shipped configs'): the pooled ``x_t`` rescaled to unit variance at the
            timestep with r² times t's SNR, as a UNet trained alone at the inner side sees it (needs the
            model's schedule, which the model binds; a network built alone uses the default cosine schedule
            and v-prediction); ``"pooled"`` (the default, so that checkpoints written before this option
            load as they were trained): the pooled ``x_t`` as it is, at t.
        inner_schedule_shift: the ``diffusion.schedule_shift`` the inner UNet is trained on (its
            checkpoint's, which ``inner_checkpoint`` checks): ``matched`` reads t' off that table, so the
            inner model keeps its own schedule when the full resolution's is shifted. MDM's pairing: a
            model shift equal to the nest ratio and 1 here give the inner UNet t' = t.
        residual_on_inner: the full-resolution prediction is the inner one (on the pooled process at t),
            repeated over each r × r block, plus the output head's, which starts at zero: fresh outer levels
            then start from the inner model's block means (its colours) instead of from a zero prediction,
            and learn only what the blocks miss. Not MDM's (``False``, the default); docs/choices.md.
        in_channels: image channels (the output has as many).
        cond_dim, image_size: given by the model (its conditioning width and ``data.image_size``).
    """

    def __init__(
        self,
        inner: UNetSettings | None = None,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        loss_weights: tuple[float, float] = (1.0, 1.0),
        inner_checkpoint: str | None = None,
        freeze_inner: bool = False,
        inner_input: Literal["matched", "pooled"] = "pooled",
        inner_schedule_shift: float = 1.0,
        residual_on_inner: bool = False,
        in_channels: int = 3,
        *,
        cond_dim: int,
        image_size: int,
    ) -> None:
        super().__init__()
        settings = from_dict(UNetSettings, inner)
        channel_mult, attention_levels = tuple(channel_mult), tuple(attention_levels)
        check_levels(channel_mult, attention_levels)
        self.nest_ratio = 2 ** (len(channel_mult) - 1)
        self.inner_size = image_size // self.nest_ratio
        self.inner_unet = UNet(in_channels, cond_dim=cond_dim, image_size=None, **to_dict(settings))
        factor = self.nest_ratio * self.inner_unet.downsample_factor
        if image_size % factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by {factor}: the outer levels halve it {len(channel_mult) - 1} "
                f"times (channel_mult {channel_mult}) and the inner UNet {self.inner_unet.downsample_factor} more; use a multiple of {factor}"
            )
        if inner_input not in ("matched", "pooled"):
            raise ValueError(f"inner_input must be 'matched' or 'pooled', got {inner_input!r}")
        if inner_schedule_shift <= 0:
            raise ValueError(f"inner_schedule_shift must be > 0 (1: the plain cosine schedule), got {inner_schedule_shift}")
        if len(loss_weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in loss_weights) or loss_weights[0] <= 0:
            raise ValueError(f"loss_weights must be (full resolution > 0, inner resolution >= 0), got {tuple(loss_weights)}")
        # Plain data (what spec() stores); inner_checkpoint is cleared once its weights are in the model.
        self.inner: dict[str, Any] = to_dict(settings)
        self.base_channels, self.channel_mult, self.num_res_blocks = base_channels, channel_mult, num_res_blocks
        self.attention_levels, self.loss_weights = attention_levels, (float(loss_weights[0]), float(loss_weights[1]))
        self.inner_checkpoint: str | None = None
        self.freeze_inner, self.inner_input, self.in_channels = freeze_inner, inner_input, in_channels
        self.inner_schedule_shift = float(inner_schedule_shift)
        self.residual_on_inner = bool(residual_on_inner)
        self.bind_diffusion(CosineSchedule(), "v")  # the model binds its own

        levels = build_levels(in_channels, base_channels, channel_mult, num_res_blocks, attention_levels, self.res_block, self.attention_block)
        self.input_conv, self.down, self.up, self.out = levels.input_conv, levels.down, levels.up, levels.out
        # Zero adapters: at the start the inner UNet sees only its own input and the outer path only itself.
        self.in_adapter = zero_init(nn.Conv2d(levels.inner_channels, settings.base_channels, 3, padding=1))
        self.out_adapter = zero_init(nn.Conv2d(self.inner_unet.feature_channels, levels.inner_channels, 3, padding=1))

        if inner_checkpoint is not None:
            load_inner_weights(self.inner_unet, inner_checkpoint, self.inner_size, self.inner_schedule_shift)
        if freeze_inner:
            self.inner_unet.requires_grad_(False)
        if settings.channels_last:  # the outer levels take the inner UNet's memory layout
            self.to(memory_format=torch.channels_last)

    # The outer blocks take the inner UNet's embedding and conditioning sequence (MDM's outer levels have
    # no conditioning path of their own).
    def res_block(self, cin: int, cout: int) -> ResBlock:
        return ResBlock(cin, cout, self.inner_unet.emb_dim, self.inner_unet.dropout)

    def attention_block(self, ch: int) -> AttentionBlock:
        inner = self.inner_unet
        return AttentionBlock(ch, inner.num_heads, context_dim=inner.emb_dim, qk_norm=inner.qk_norm)

    def bind_diffusion(self, schedule: CosineSchedule, prediction: Prediction) -> None:
        # Kept out of the module tree: the model owns the schedule (its device moves, no state).
        self.__dict__["_diffusion"] = (schedule, prediction)
        self.__dict__["_inner_schedule"] = None

    def inner_schedule(self, schedule: CosineSchedule) -> CosineSchedule:
        """The table the inner UNet's t' is read from: the model's own unless their shifts differ."""
        if schedule.shift == self.inner_schedule_shift:
            return schedule
        device = schedule.alphas_cumprod.device
        own = self.__dict__["_inner_schedule"]
        if own is None or own.alphas_cumprod.device != device:  # built once per device, not per call
            own = CosineSchedule(schedule.num_timesteps, schedule.s, schedule.max_beta, self.inner_schedule_shift).to(device)
            self.__dict__["_inner_schedule"] = own
        return own

    def inner_view(self, pooled: Tensor, t: Tensor) -> InnerView:
        """The inner UNet's input for the pooled ``x_t`` at ``t`` (``inner_input``)."""
        schedule, _ = self.__dict__["_diffusion"]
        abar = schedule.alphas_cumprod.to(t.device)[t.long()]
        if self.inner_input == "pooled":
            abar_inner, variance, t_inner = abar, torch.ones_like(abar), t
        else:  # pooling keeps α x̄0 and divides the noise's variance by r²
            variance = abar + (1 - abar) / self.nest_ratio**2
            abar_inner = abar / variance
            inner_schedule = self.inner_schedule(schedule)
            t_inner = inner_schedule.timestep_of(abar_inner.to(inner_schedule.alphas_cumprod.device)).to(t.device, torch.float32)

        def column(value: Tensor) -> Tensor:
            return value.float().view(-1, 1, 1, 1)

        return InnerView(
            pooled.float() / column(variance.sqrt()), t_inner, pooled.float(), column(abar.sqrt()), column((1 - abar).sqrt()),
            column(abar_inner.sqrt()), column((1 - abar_inner).sqrt()),
        )

    def features(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None) -> tuple[Tensor, Tensor, InnerView]:
        """(the outer levels' last features, the inner UNet's last features, what the inner UNet was given)."""
        check_divisible(x, self.nest_ratio * self.inner_unet.downsample_factor)
        encoded = self.inner_unet.encode_condition(cond, cond_mask, uncond)
        c: UNetContext = self.inner_unet.embed_time(t, encoded)
        layout = torch.channels_last if self.inner_unet.channels_last else torch.contiguous_format
        h, skips = run_down(self.down, self.input_conv(x.contiguous(memory_format=layout)), c)
        view = self.inner_view(downsample_to(x, h.shape[-1]), t)
        c_inner = c if view.t is t else self.inner_unet.embed_time(view.t, encoded)
        inner = self.inner_unet.features(view.x.to(x.dtype), c_inner, extra=self.in_adapter(h))
        return run_up(self.up, h + self.out_adapter(inner), skips, c), inner, view

    def predictions(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the full-resolution prediction, the inner one on the pooled process at t)."""
        outer, inner, view = self.features(x, t, cond, cond_mask, uncond)
        full = self.out(outer)
        low = self.pooled_output(self.inner_unet.out(inner), view)
        if self.residual_on_inner:  # the inner block means, then what the outer levels add
            full = full + F.interpolate(low.to(full.dtype), scale_factor=self.nest_ratio, mode="nearest")
        return full.contiguous(), low.contiguous()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> Tensor:
        if not self.residual_on_inner:  # the inner head is not needed
            return self.out(self.features(x, t, cond, cond_mask, uncond)[0]).contiguous()
        return self.predictions(x, t, cond, cond_mask, uncond)[0]

    def pooled_output(self, inner_output: Tensor, view: InnerView) -> Tensor:
        """The inner head's output, a prediction at (x', t'), as the same parametrisation of the pooled
        process at t (what the loss's pooled target is): through its estimate of the pooled x0."""
        _, prediction = self.__dict__["_diffusion"]
        if self.inner_input == "pooled":
            return inner_output
        x0, _ = output_to_x0_eps(view.x, inner_output.float(), view.alpha_inner, view.sigma_inner, prediction)
        return x0_to_output(view.pooled, x0, view.alpha, view.sigma, prediction)

    def training_outputs(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None
    ) -> list[TrainingOutput]:
        """The full-resolution prediction and the inner UNet's, at the inner resolution (MDM's two-resolution loss)."""
        full, low = self.predictions(x, t, cond, cond_mask, uncond)
        full_weight, low_weight = self.loss_weights
        return [TrainingOutput(full, full_weight), TrainingOutput(low, low_weight)]


def stored_unet_spec(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The denoiser spec a checkpoint's hyperparameters hold (``unet:`` settings before issue 17)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if hparams.get("denoiser") is not None:
        return hparams["denoiser"]
    if "unet" in hparams:
        return {"class_path": UNET_CLASS_PATH, "init_args": {"in_channels": 3, **(hparams["unet"] or {})}}
    kind = checkpoint[CHECKPOINT_KEY].get("class_path", "?").rpartition(".")[2]
    raise ValueError(f"inner_checkpoint {path} holds a {kind} checkpoint, which has no denoiser; give a Kaleido or DiffusionModel checkpoint with a UNet")


def load_inner_weights(unet: UNet, path: str | Path, inner_size: int, schedule_shift: float = 1.0) -> None:
    """Start ``unet`` from the denoiser of the kaleido checkpoint at ``path`` (its ``state_dict``: the EMA
    average where one was kept), after checking it is a UNet of the same settings, trained at ``inner_size``
    on a schedule of ``schedule_shift``."""
    checkpoint = read_checkpoint(path)  # one-line errors: no file, not a checkpoint, not kaleido's
    spec = stored_unet_spec(checkpoint, path)
    if spec["class_path"] != UNET_CLASS_PATH:
        raise ValueError(f"inner_checkpoint {path} holds a {spec['class_path']} denoiser; the nested UNet's inner model is a {UNET_CLASS_PATH}")
    stored = {"in_channels": 3, **asdict(UNetSettings()), **(spec.get("init_args") or {})}
    found = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}  # lists: a YAML's or an old file's
    expected = unet.init_args()
    layout = ("channels_last",)  # how tensors lie in memory, not what the weights are
    differ = [f"{k} {expected[k]!r} expected, {found.get(k)!r} found" for k in expected if k not in layout and expected[k] != found.get(k)]
    if differ:
        raise ValueError(f"inner_checkpoint {path} holds a UNet of other settings than `inner`: {'; '.join(differ)}")
    trained_at = (checkpoint.get("hyper_parameters") or {}).get("image_size")
    if trained_at is not None and trained_at != inner_size:
        raise ValueError(f"inner_checkpoint {path} was trained at {trained_at}²; this nested UNet's inner model runs at {inner_size}²")
    trained_shift = float(((checkpoint.get("hyper_parameters") or {}).get("diffusion") or {}).get("schedule_shift", 1.0))
    if trained_shift != schedule_shift:
        raise ValueError(
            f"inner_checkpoint {path} was trained with diffusion.schedule_shift {trained_shift:g}; the nested UNet's "
            f"inner_schedule_shift is {schedule_shift:g}: set it to {trained_shift:g}"
        )
    state = checkpoint["state_dict"]
    prefix = "denoiser." if any(k.startswith("denoiser.") for k in state) else "unet."  # "unet.": before issue 17
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    own = unet.state_dict()
    for name, value in own.items():
        if name not in weights:
            raise ValueError(f"inner_checkpoint {path} has no weight {prefix}{name}")
        if weights[name].shape != value.shape:
            hint = " (the conditioning width: its T5's d_model differs)" if name.startswith("cond_proj.") else ""
            raise ValueError(
                f"inner_checkpoint {path}: {prefix}{name} has shape {list(weights[name].shape)}, expected {list(value.shape)}{hint}"
            )
    unet.load_state_dict({name: weights[name] for name in own})


__all__ = ["NestedUNet", "load_inner_weights"]
