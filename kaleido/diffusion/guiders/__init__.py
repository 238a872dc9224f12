"""Guiders: how the conditional and unconditional predictions become one, step by step (docs/sampling.md).

    cfg       plain classifier-free guidance (the default)        cfg.py
    interval  CFG only for noise levels in (σ_lo, σ_hi]            interval.py
    apg       adaptive projected guidance on the x0 prediction     apg.py
    cads      annealed noise on the conditioning states, then CFG  cads.py
"""

from kaleido.diffusion.guiders.apg import APG
from kaleido.diffusion.guiders.base import Guider, Level, ModelFn, Net, conditioned, guide, guided_denoiser
from kaleido.diffusion.guiders.cads import CADS
from kaleido.diffusion.guiders.cfg import CFG
from kaleido.diffusion.guiders.interval import IntervalCFG
from kaleido.diffusion.guiders.registry import GUIDERS, GuiderSpec, build_guider

__all__ = [
    "APG", "CADS", "CFG", "GUIDERS", "Guider", "GuiderSpec", "IntervalCFG", "Level", "ModelFn", "Net",
    "build_guider", "conditioned", "guide", "guided_denoiser",
]
