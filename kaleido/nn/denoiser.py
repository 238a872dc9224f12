"""The denoiser contract: any network that predicts the diffusion target from a noisy image, its
timestep and the conditioning sequence, chosen in YAML by ``class_path`` (``model.init_args.denoiser``).

    denoiser(x_t [B, C, H, W], t [B], cond [B, L, D], cond_mask [B, L] bool, uncond [B] bool | None)
        -> [B, C, H, W]

``cond`` is the paper's conditioning, ``[enc(c); h(z)]`` (or ``enc(c)`` for the baseline); ``uncond``
marks the rows whose ``(c, z)`` are dropped (CFG training and the unconditional branch of sampling).
A dropped row must not depend on its ``cond`` at all: the built-in backbones see only a learned null
token there (:class:`kaleido.nn.conditioning.ConditionedDenoiser`).

The model builds its denoiser as ``cls(cond_dim=..., image_size=..., **init_args)``: ``cond_dim`` (the
width of ``cond``) and ``image_size`` come from the model; everything else is the backbone's own
typed ``__init__`` arguments, which jsonargparse checks and the checkpoint stores (``spec()``).

Training asks ``training_outputs`` rather than ``forward``: one full-resolution prediction with weight 1
for most backbones, several resolutions for the nested UNet (MDM's multi-resolution loss). The model
compares each with the target brought to its side by :func:`downsample_to`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.class_paths import import_class
from kaleido.diffusion.schedule import CosineSchedule, Prediction

WIRED = ("cond_dim", "image_size")  # given by the model, never by the config


@dataclass
class TrainingOutput:
    """One prediction a training step is scored on: ``prediction`` [B, C, h, w] (any side that divides the
    image's) against the target average-pooled to ``h``, its squared error weighted by ``weight``."""

    prediction: Tensor
    weight: float = 1.0


def downsample_to(x: Tensor, side: int) -> Tensor:
    """``x`` [B, C, H, W] average-pooled to ``side``² (unchanged at its own side); ``side`` must divide H and W."""
    height, width = x.shape[-2:]
    if (height, width) == (side, side):
        return x
    if side < 1 or height % side or width % side or height // side != width // side:
        raise ValueError(f"cannot average-pool {height}×{width} to {side}×{side}: the side must divide both by one factor")
    return F.avg_pool2d(x, height // side)


class Denoiser(nn.Module, ABC):
    """Base class of denoiser backbones (:class:`kaleido.nn.unet.UNet`, :class:`kaleido.nn.dit.DiT`).

    A subclass takes ``cond_dim`` and ``image_size`` as keyword arguments beside its own, and keeps
    each of its own arguments as an attribute of the same name, so that ``init_args()`` can read
    them back for the checkpoint (the convention of latent types)."""

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> Tensor:
        """x [B, C, H, W]; t [B] timesteps (long or float); cond [B, L, cond_dim]; cond_mask [B, L] bool
        (True = real token); uncond [B] bool (True = drop that row's conditioning) → [B, C, H, W]."""

    def training_outputs(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None
    ) -> list[TrainingOutput]:
        """What the diffusion loss scores, as ``forward``'s inputs: by default the one full-resolution
        prediction with weight 1; a multi-resolution backbone returns one output per resolution."""
        return [TrainingOutput(self(x, t, cond, cond_mask, uncond))]

    def bind_diffusion(self, schedule: CosineSchedule, prediction: Prediction) -> None:  # noqa: B027 - optional hook
        """The model's noise schedule and output parametrisation, given once the model has built this
        network; a backbone that works on the noise level itself (the nested UNet) keeps them. Default: nothing."""

    @property
    def num_params(self) -> int:
        """Number of parameters (all trainable)."""
        return sum(p.numel() for p in self.parameters())

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments other than the wired ones: ``type(self)(cond_dim=..., image_size=...,
        **init_args())`` rebuilds this network."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", *WIRED)]
        missing = [name for name in names if not hasattr(self, name)]
        if missing:
            raise TypeError(f"{type(self).__name__} must keep its constructor arguments {missing} as attributes of the same name")
        return {name: getattr(self, name) for name in names}

    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: plain data, what a checkpoint stores."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}


class DenoiserFactory(Protocol):
    """What ``model.init_args.denoiser`` is in YAML: a :class:`Denoiser` subclass by ``class_path`` with
    its ``init_args``; jsonargparse leaves out the two arguments the model gives."""

    def __call__(self, *, cond_dim: int, image_size: int) -> Denoiser: ...


def build_denoiser(choice: DenoiserFactory | Mapping[str, Any], *, cond_dim: int, image_size: int) -> Denoiser:
    """A denoiser from a factory (what jsonargparse gives for a ``class_path`` block, or a class) or
    from a spec ``{"class_path": ..., "init_args": {...}}`` (what a checkpoint stores)."""
    if isinstance(choice, Mapping):
        if "class_path" not in choice:
            raise TypeError(f"a denoiser spec needs a class_path (and init_args); got keys {sorted(choice)}")
        cls, init_args = import_class(choice["class_path"], Denoiser, "denoiser"), dict(choice.get("init_args") or {})
        wired = sorted(set(init_args) & set(WIRED))
        if wired:
            raise ValueError(f"denoiser init_args {wired} are given by the model (its conditioning width and data.image_size); remove them")
        try:
            net = cls(cond_dim=cond_dim, image_size=image_size, **init_args)
        except TypeError as error:  # arguments the class does not take (a spec from another version)
            raise TypeError(f"cannot build denoiser {choice['class_path']} with init_args {init_args}: {error}") from None
    else:
        net = choice(cond_dim=cond_dim, image_size=image_size)
    if not isinstance(net, Denoiser):
        raise TypeError(f"the denoiser must be a kaleido.nn.denoiser.Denoiser, got {type(net).__name__}")
    return net


def rename_keys(state_dict: dict[str, Any], prefix: str, renames: Mapping[str, str]) -> None:
    """Rename, in place, the keys under ``prefix`` that start with an old name (a
    ``load_state_dict`` pre-hook's job: checkpoints written before a module moved keep loading)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in renames.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                break


__all__ = ["WIRED", "Denoiser", "DenoiserFactory", "TrainingOutput", "build_denoiser", "downsample_to", "rename_keys"]
