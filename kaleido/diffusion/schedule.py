"""Discrete cosine noise schedule and the v / eps / x0 parameterisation maths.

Notation (Nichol & Dhariwal 2021, Salimans & Ho 2022):
    x_t = α_t x0 + σ_t ε,   α_t = sqrt(ᾱ_t),  σ_t = sqrt(1 - ᾱ_t),  α_t² + σ_t² = 1
    v   = α_t ε − σ_t x0
Because (α, σ) is a rotation, x0 and ε are recovered from (x_t, v) without any division.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Prediction = Literal["v", "eps", "x0"]
PREDICTIONS: tuple[str, ...] = ("v", "eps", "x0")


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999, shift: float = 1.0) -> Tensor:
    """β_t (float64, [T]) of the improved-DDPM cosine schedule, its SNR divided by ``shift²``.

    ᾱ(u) = cos²((u + s) / (1 + s) · π/2) on u ∈ [0, 1]; β_t = 1 − ᾱ((t+1)/T) / ᾱ(t/T), clipped at
    `max_beta` because the last step would otherwise be β = 1 (ᾱ_T = 0 exactly).

    ``shift`` > 1 makes every step noisier: SNR'(t) = SNR(t) / shift², i.e. ᾱ' = ᾱ / (ᾱ + shift² (1 − ᾱ)).
    Doubling an image's side averages noise over 4× the pixels per feature, so the same t hides less of
    it; shift 2 at 64² gives the 32² schedule's SNR per 2×2 block (simple diffusion, Hoogeboom et al.
    2023; SD3's ``shift`` is the same map for flow matching).
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    if shift == 1.0:
        return betas
    abar = torch.cumprod(1 - betas, dim=0)
    shifted = abar / (abar + shift**2 * (1 - abar))
    previous = torch.cat([shifted.new_ones(1), shifted[:-1]])
    return (1 - shifted / previous).clamp(max=max_beta)


def output_to_x0_eps(
    x_t: Tensor, output: Tensor, alpha: Tensor | float, sigma: Tensor | float, prediction: Prediction
) -> tuple[Tensor, Tensor]:
    """(x0, ε) from a network output given the coefficients (α_t, σ_t) of x_t."""
    if prediction == "v":  # inverse rotation: no division, exact at both ends of the schedule
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def x0_to_output(
    x_t: Tensor, x0: Tensor, alpha: Tensor | float, sigma: Tensor | float, prediction: Prediction
) -> Tensor:
    """The network output that implies the estimate `x0` at x_t (the inverse of `output_to_x0_eps`)."""
    if prediction == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


class CosineSchedule(nn.Module):
    """Cosine schedule over integer timesteps t = 0..T-1 (t = 0 is the least noisy).

    `betas` and `alphas_cumprod` are non-persistent float64 buffers: they follow `.to(device)`, are
    rebuilt from the constructor args rather than stored in checkpoints, and stay float64 even when
    a parent model is cast to half precision (ᾱ spans ~1e-9..1, which bf16 cannot represent).
    Methods return coefficients in the dtype of the data they are applied to.
    """

    def __init__(
        self, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999, shift: float = 1.0
    ) -> None:
        super().__init__()
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps
        self.s = s
        self.max_beta = max_beta
        self.shift = shift
        betas = cosine_betas(num_timesteps, s, max_beta, shift)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, dim=0), persistent=False)

    betas: Tensor
    alphas_cumprod: Tensor

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Follow device moves but undo dtype casts: recompute the exact float64 values on the new device.
        super()._apply(fn, recurse)
        device = self.betas.device
        betas = cosine_betas(self.num_timesteps, self.s, self.max_beta, self.shift).to(device)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        return self

    def alpha_sigma(self, t: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) = (sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) for integer timesteps t [B], each shaped [B, 1, 1, 1]."""
        abar = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return abar.sqrt().to(dtype), (1 - abar).sqrt().to(dtype)

    def timestep_of(self, abar: Tensor) -> Tensor:
        """The continuous timestep whose ᾱ is ``abar`` [B] (float64 [B]): linear between the table's integer
        steps, clamped to [0, T − 1] (ᾱ decreases with t)."""
        rising = self.alphas_cumprod.flip(0)  # rising[k] = ᾱ_{T-1-k}
        a = abar.to(rising).clamp(rising[0], rising[-1])
        k = torch.searchsorted(rising, a).clamp(1, len(rising) - 1)  # rising[k-1] <= a <= rising[k]
        low, high = rising[k - 1], rising[k]
        position = (k - 1) + (a - low) / (high - low).clamp(min=torch.finfo(torch.float64).tiny)
        return (len(rising) - 1) - position

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) as float64 [B]."""
        abar = self.alphas_cumprod[t.long()]
        return abar / (1 - abar)

    def min_snr_weight(self, t: Tensor, prediction: Prediction, gamma: float) -> Tensor:
        """Per-sample loss weights [B] (float32) of Min-SNR-γ (Hang et al. 2023): the loss on the
        network's target, reweighted to min(SNR, γ) · ‖x̂0 − x0‖². The plain v-loss equals
        (SNR + 1) · ‖x̂0 − x0‖², the ε-loss SNR · ‖x̂0 − x0‖², the x0-loss itself."""
        snr = self.snr(t)
        clipped = snr.clamp(max=gamma)
        per_target = {"v": snr + 1, "eps": snr, "x0": torch.ones_like(snr)}
        if prediction not in per_target:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        return (clipped / per_target[prediction]).float()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample q(x_t | x0): α_t x0 + σ_t ε."""
        a, s = self.alpha_sigma(t, x0.dtype)
        return a * x0 + s * noise

    def v_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Velocity target v = α_t ε − σ_t x0."""
        a, s = self.alpha_sigma(t, x0.dtype)
        return a * noise - s * x0

    def predict_x0_eps(
        self, x_t: Tensor, t: Tensor, model_output: Tensor, prediction: Prediction
    ) -> tuple[Tensor, Tensor]:
        """Convert a network output of the given parameterisation into (x0, ε) estimates."""
        a, s = self.alpha_sigma(t, x_t.dtype)
        return output_to_x0_eps(x_t, model_output.to(x_t.dtype), a, s, prediction)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction: Prediction) -> Tensor:
        """Regression target of the network for the given parameterisation."""
        if prediction == "v":
            return self.v_target(x0, noise, t)
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Uniform integer timesteps in [0, T) as a long tensor [batch_size].

        A `generator` must live on `device` (PyTorch's rule for sampling on CUDA).
        """
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}, s={self.s}, max_beta={self.max_beta}, shift={self.shift}"
