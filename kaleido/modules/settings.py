"""Plain, typed settings groups. jsonargparse turns each into a YAML section; checkpoints store them
as dicts of plain values, so loading never needs to unpickle code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

from kaleido.checkpoint_io import from_dict, to_dict
from kaleido.diffusion.guiders import GuiderSpec, build_guider
from kaleido.diffusion.samplers import SamplerName
from kaleido.nn.prior import T5Settings
from kaleido.nn.unet import UNetSettings

S = TypeVar("S")

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
# false: eager; true: torch.compile's "default" mode; a mode by name: that mode ("reduce-overhead" and
# "max-autotune" replay the compiled step as CUDA graphs: no launch cost per kernel, static shapes).
Compile = bool | CompileMode


def compile_mode(compile: Compile | None) -> str | None:
    """``torch.compile``'s ``mode`` for a ``compile`` setting; None: do not compile."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if compile not in get_args(CompileMode):
        raise ValueError(f"compile must be true, false or one of {get_args(CompileMode)}, got {compile!r}")
    return compile


@dataclass
class DiffusionSettings:
    """The forward process and training objective (paper: cosine, 1000 steps, v-prediction, MSE)."""

    num_timesteps: int = 1000
    prediction: Literal["v", "eps", "x0"] = "v"
    p_uncond: float = 0.1  # (c, z) dropped together with this probability: learns the null conditioning
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"  # min_snr: Hang et al. 2023, beyond the paper
    min_snr_gamma: float = 5.0
    # SNR(t) ÷ shift² at every t: a noisier schedule for larger images (simple diffusion's shift, which MDM
    # applies per resolution); 2 at 64² keeps the 32² recipe's SNR per 2×2 block. 1: the paper's cosine.
    schedule_shift: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule_shift <= 0:
            raise ValueError(f"schedule_shift must be > 0 (1: the plain cosine schedule), got {self.schedule_shift}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.loss_weighting not in ("uniform", "min_snr"):
            raise ValueError(f"loss_weighting must be 'uniform' or 'min_snr', got {self.loss_weighting!r}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")


@dataclass
class SamplingSettings:
    """Defaults for ``generate`` (paper: DDPM ancestral, 250 respaced steps, x0 clipped, plain CFG).
    ``guider``: a name (``cfg``, ``interval``, ``apg``, ``cads``) or ``{class_path: ..., init_args: {...}}``
    (docs/sampling.md); kept as plain data, so checkpoints store it as written."""

    sampler: SamplerName = "ddpm"
    num_steps: int = 250
    cfg_scale: float = 3.0
    temperature: float = 1.0  # the prior's; 1.0 is what the diversity argument assumes
    top_k: int | None = None
    top_p: float | None = None
    compile: Compile = False  # torch.compile the denoiser for sampling (long sweeps; ~30 s per new batch size), or a mode
    guider: GuiderSpec = "cfg"

    def __post_init__(self) -> None:
        build_guider(self.guider)  # an unknown guider or a bad setting fails here, with one line
        compile_mode(self.compile)


@dataclass
class OptimizerSettings:
    """Adam with linear warm-up, as in the paper (lr 1e-4, β 0.9/0.99, ε 1e-8, no weight decay)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    fused: bool | None = None  # one kernel for every parameter's update; None: fused when every parameter is on a GPU


__all__ = ["DiffusionSettings", "OptimizerSettings", "SamplingSettings", "T5Settings", "UNetSettings", "from_dict", "to_dict"]
