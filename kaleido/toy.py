"""The toy of the paper's Fig. 3: classifier-free guidance drops sub-modes, a discrete latent keeps them.

Two classes of 2-D points, each a mixture of two Gaussian sub-modes of unequal weight (0.7 / 0.3)
(σ 0.08), on the corners of a 1 × 0.4 rectangle so that each class's minor sub-mode sits just below
the other class's major one:

      B major (0.7) ·  · A major (0.7)            y = +0.2      class A: top right + bottom left
      A minor (0.3) ·  · B minor (0.3)            y = −0.2      class B: top left  + bottom right

While the noise is large, a point near a minor sub-mode looks more like the other class, so guidance
(which pushes towards what the class explains better than the unconditional model does) moves it
towards its class's major sub-mode: the baseline drops both minor sub-modes as γ grows.

* **baseline**: a small MLP denoiser conditioned on the class c;
* **Kaleido**: the same denoiser conditioned on (c, z), z the sub-mode token, and a prior p(z | c)
  (for one token the autoregressive prior is a categorical: an embedding of c → 2 logits), trained
  jointly with cross-entropy. At sampling z ~ p(z | c) is drawn first, then guidance acts on x only.

Both drop their whole condition with probability ``p_uncond`` in training (the null row of the
embeddings), so CFG ``u + γ (c − u)`` has its unconditional branch. Points are shaped [B, 2, 1, 1] so
kaleido's cosine schedule, samplers and guidance (written for images) apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.diffusion.guidance import classifier_free_guidance
from kaleido.diffusion.samplers import build_sampler
from kaleido.diffusion.schedule import CosineSchedule
from kaleido.metrics.modes import covered_modes

# Sub-mode k of class c is CENTERS[2 c + k]; k = 0 is the major one.
CENTERS = torch.tensor([[0.5, 0.2], [-0.5, -0.2], [-0.5, 0.2], [0.5, -0.2]])
WEIGHTS = (0.7, 0.3)
STD = 0.08
NUM_CLASSES = 2


def sample_data(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` points [n, 2] with their class c [n] and sub-mode z [n] (classes equally likely)."""
    c = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    z = (torch.rand(n, generator=generator) >= WEIGHTS[0]).long()
    x = CENTERS[2 * c + z] + STD * torch.randn(n, 2, generator=generator)
    return x, c, z


@dataclass
class ToyConfig:
    latent: bool  # False: the baseline (c only); True: Kaleido (c and the sub-mode token z)
    hidden: int = 64
    steps: int = 800
    batch_size: int = 256
    lr: float = 3e-3
    p_uncond: float = 0.1
    num_timesteps: int = 1000
    sample_steps: int = 100  # DDPM, respaced; at γ = 25, 50 steps are too coarse and the samples scatter
    seed: int = 0


class ToyDenoiser(nn.Module):
    """v-prediction MLP on (x_t, t, condition); the condition is the class (+ the sub-mode token)."""

    def __init__(self, latent: bool, hidden: int) -> None:
        super().__init__()
        self.latent = latent
        self.class_embedding = nn.Embedding(NUM_CLASSES + 1, hidden)  # last row: the null condition
        self.token_embedding = nn.Embedding(3, hidden) if latent else None
        self.prior = nn.Embedding(NUM_CLASSES, 2) if latent else None  # p(z | c): logits per class
        if self.prior is not None:
            nn.init.zeros_(self.prior.weight)  # start from the uniform prior
        self.net = nn.Sequential(
            nn.Linear(2 + 2 * 8, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )
        self.film = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, t: Tensor, c: Tensor, z: Tensor, uncond: Tensor) -> Tensor:
        """x [B, 2, 1, 1], t [B] in 0..T-1, c / z [B] long, uncond [B] bool → v [B, 2, 1, 1]."""
        freqs = torch.exp(torch.arange(8, device=x.device) * -math.log(1000.0) / 8)
        angles = t.float()[:, None] * freqs[None]  # a sinusoidal embedding of t
        h = torch.cat([x.flatten(1), angles.sin(), angles.cos()], dim=1)
        cond = self.class_embedding(torch.where(uncond, NUM_CLASSES, c))
        if self.token_embedding is not None:  # c and z are dropped together, as in Kaleido
            cond = cond + self.token_embedding(torch.where(uncond, 2, z))
        first, *rest = self.net
        h = first(h) * (1 + self.film(cond)) + cond  # the condition scales and shifts the first layer
        for layer in rest:
            h = layer(h)
        return h.view(-1, 2, 1, 1)


def train_toy(config: ToyConfig) -> tuple[ToyDenoiser, CosineSchedule]:
    """Train the denoiser (and, for Kaleido, the prior with CE) on fresh data every step."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model, schedule = ToyDenoiser(config.latent, config.hidden), CosineSchedule(config.num_timesteps)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    for _ in range(config.steps):
        x, c, z = sample_data(config.batch_size, gen)
        x0 = x.view(-1, 2, 1, 1)
        t = schedule.sample_timesteps(len(x), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        uncond = torch.rand(len(x), generator=gen) < config.p_uncond
        v = model(schedule.add_noise(x0, noise, t), t, c, z, uncond)
        loss = F.mse_loss(v, schedule.v_target(x0, noise, t))
        if model.prior is not None:
            loss = loss + F.cross_entropy(model.prior(c), z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_decay.step()
    return model.eval(), schedule


@torch.no_grad()
def sample_toy(
    model: ToyDenoiser, schedule: CosineSchedule, c: Tensor, cfg_scale: float, num_steps: int, seed: int
) -> Tensor:
    """Points [n, 2] for classes ``c`` [n]: z ~ p(z | c) first (Kaleido), then DDPM with CFG on x."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros_like(c)
    if model.prior is not None:
        z = torch.multinomial(model.prior(c).softmax(-1), 1, generator=gen).squeeze(1)

    def model_fn(x: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        reps = len(x) // len(c)  # 2 when guidance stacks the conditional and unconditional halves
        return model(x, t, c.repeat(reps), z.repeat(reps), uncond)

    sampler = build_sampler("ddpm", schedule, num_steps, prediction="v")
    noise = torch.randn(len(c), 2, 1, 1, generator=gen)
    return sampler(classifier_free_guidance(model_fn, cfg_scale), noise, generator=gen).view(-1, 2)


def submode_shares(points: Tensor, c: Tensor) -> Tensor:
    """[classes, 2]: the share of each class's samples that lie nearer to each of its two sub-modes."""
    shares = torch.zeros(NUM_CLASSES, 2)
    for k in range(NUM_CLASSES):
        mine = points[c == k]
        if len(mine):
            nearest = torch.cdist(mine, CENTERS[2 * k : 2 * k + 2]).argmin(dim=1)
            shares[k] = torch.bincount(nearest, minlength=2).float() / len(mine)
    return shares


def covered_submodes(points: Tensor, c: Tensor, min_share: float = 0.1) -> int:
    """How many of the four sub-modes receive at least ``min_share`` of their class's samples."""
    shares = submode_shares(points, c)
    return sum(len(covered_modes(dict(enumerate(row.tolist())), range(2), min_share)) for row in shares)


def run_toy(
    cfg_scales: tuple[float, ...] = (1.0, 5.0, 8.0, 25.0), num_samples: int = 2000, seed: int = 0
) -> dict[str, dict[float, Tensor]]:
    """Train both models and sample ``num_samples`` points per scale: {"baseline"|"kaleido": {γ: points}};
    the classes alternate, ``c = arange(n) % 2``."""
    c = torch.arange(num_samples) % NUM_CLASSES
    out: dict[str, dict[float, Tensor]] = {}
    for name, latent in (("baseline", False), ("kaleido", True)):
        config = ToyConfig(latent=latent, seed=seed)
        model, schedule = train_toy(config)
        out[name] = {s: sample_toy(model, schedule, c, s, config.sample_steps, seed) for s in cfg_scales}
    return out
