"""Plain classifier-free guidance (Ho & Salimans 2022), the default guider: out = u + γ (c − u)."""

from __future__ import annotations

from dataclasses import dataclass

from kaleido.diffusion.guiders.base import Guider


@dataclass
class CFG(Guider):
    """Ho & Salimans 2022, Eq. 6: ε̃ = (1 + w) ε(c) − w ε(∅), here with γ = 1 + w as u + γ (c − u).

    Applied to the raw network output at every step; for v / ε / x0 it is the same affine combination of
    the implied x0 and ε, since all three are linear in the output. Kaleido: `c` is the condition and
    the sampled z together, and `u` drops both (the paper's Eq. 5)."""

    name = "cfg"
