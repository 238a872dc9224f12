"""Reverse-process samplers over a respaced subset of the schedule's timesteps: DDPM (ancestral, the
paper's), DDIM and DPM-Solver++(2M).

All samplers walk K timesteps τ_{K-1} = T-1 > ... > τ_0 = 0 chosen evenly as in improved-DDPM, and
treat them as a K-step schedule with ᾱ'_i = ᾱ[τ_i] and ᾱ'_{-1} = 1 (clean data). The network is always
called with the ORIGINAL timestep index τ_i, so a model trained on T steps needs no rescaling.

Randomness comes only from `generator` (if given). It must live on the same device as `noise`
(PyTorch refuses a CPU generator for CUDA sampling); with a CUDA generator the samples are
reproducible per seed on that device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kaleido.diffusion.schedule import PREDICTIONS, CosineSchedule, Prediction, output_to_x0_eps

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""(x_t [B, C, H, W], t [B] long original timestep index in 0..T-1) -> model output."""
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"]


def respaced_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """`num_steps` timesteps from T-1 down to 0, evenly spaced with a fractional stride (improved-DDPM)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (num_steps - 1)  # >= 1, so rounded indices are distinct
    return [int(math.floor(i * stride + 0.5)) for i in reversed(range(num_steps))]


class Sampler(ABC):
    """Base class: holds the respaced schedule and runs the reverse loop; subclasses define one step."""

    def __init__(
        self, schedule: CosineSchedule, num_steps: int, prediction: Prediction = "v", clip_x0: bool = True
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.num_steps = num_steps
        self.prediction = prediction
        self.clip_x0 = clip_x0
        steps = self.grid(schedule.num_timesteps, num_steps)
        self.timesteps = torch.tensor(steps, dtype=torch.long)  # decreasing: T-1 ... 0
        self._steps = steps
        abar = schedule.alphas_cumprod.detach().cpu().double()[self.timesteps].tolist()
        # Python floats: constant per step, so the loop needs no device tensors and never syncs.
        self.abar: list[float] = abar
        self.abar_prev: list[float] = abar[1:] + [1.0]

    def grid(self, num_timesteps: int, num_steps: int) -> list[int]:
        """The timesteps the network is called at, from T-1 down (default: down to 0, `respaced_timesteps`)."""
        return respaced_timesteps(num_timesteps, num_steps)

    def predict(self, denoise: DenoiseFn, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x0, ε) estimates at loop position i, with x0 optionally clipped to [-1, 1] and ε made consistent."""
        t = torch.full((x.shape[0],), self._steps[i], dtype=torch.long, device=x.device)
        out = denoise(x, t).to(x.dtype)
        a, s = math.sqrt(self.abar[i]), math.sqrt(1 - self.abar[i])
        x0, eps = output_to_x0_eps(x, out, a, s, self.prediction)
        if not self.clip_x0:
            return x0, eps
        x0 = x0.clamp(-1, 1)
        # Recompute ε from (the clipped) x0 so both estimates describe the same x_t.
        return x0, (x - a * x0) / s

    def start(self) -> None:
        """A new run begins: reset per-run state (a multistep sampler's history)."""

    @abstractmethod
    def step(self, x: Tensor, x0: Tensor, eps: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        """One reverse step from loop position i to i+1 (i.e. from τ_i to the next smaller timestep)."""

    @torch.no_grad()
    def __call__(
        self,
        denoise: DenoiseFn,
        noise: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Integrate from pure noise x_{T-1} = `noise` to x0 (in [-1, 1] when `clip_x0`)."""
        x = noise
        self.start()
        for i in tqdm(range(self.num_steps), disable=not progress, desc=type(self).__name__):
            x0, eps = self.predict(denoise, x, i)
            x = self.step(x, x0, eps, i, generator)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, prediction={self.prediction!r}, clip_x0={self.clip_x0})"


class DDPMSampler(Sampler):
    """Ancestral sampling with the posterior q(x_{t'} | x_t, x0) of the respaced chain.

    Uses the small, "β-tilde" posterior variance β̃ = β' (1 − ᾱ'_prev) / (1 − ᾱ') as in ADM / MDM
    with fixed variances. The last step (to t = 0's predecessor, ᾱ'_prev = 1) has β̃ = 0 and returns x0.
    """

    def __init__(
        self,
        schedule: CosineSchedule,
        num_steps: int = 250,
        prediction: Prediction = "v",
        clip_x0: bool = True,
    ) -> None:
        super().__init__(schedule, num_steps, prediction, clip_x0)

    def step(self, x: Tensor, x0: Tensor, eps: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        abar, abar_prev = self.abar[i], self.abar_prev[i]
        beta = 1 - abar / abar_prev  # β' of the respaced chain
        coef_x0 = beta * math.sqrt(abar_prev) / (1 - abar)
        coef_xt = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
        mean = coef_x0 * x0 + coef_xt * x
        var = beta * (1 - abar_prev) / (1 - abar)
        if var == 0.0:  # final step: deterministic (Python float, not a tensor branch)
            return mean
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + math.sqrt(var) * z


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 − ᾱ_prev − σ²) ε + σ z.

    σ = η sqrt((1 − ᾱ_prev)/(1 − ᾱ)) sqrt(1 − ᾱ/ᾱ_prev); η = 0 is deterministic given the noise,
    η = 1 matches the DDPM posterior variance.
    """

    def __init__(
        self,
        schedule: CosineSchedule,
        num_steps: int = 50,
        eta: float = 0.0,
        prediction: Prediction = "v",
        clip_x0: bool = True,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(schedule, num_steps, prediction, clip_x0)
        self.eta = eta

    def step(self, x: Tensor, x0: Tensor, eps: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        abar, abar_prev = self.abar[i], self.abar_prev[i]
        sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if sigma == 0.0:
            return x
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + sigma * z

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", eta={self.eta})"


def quadratic_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """`num_steps` timesteps from T-1 down to 0, spaced quadratically in t: t_k = (T−1)(k/(K−1))², rounded,
    then nudged apart where rounding would repeat one (DDIM's spacing for CIFAR-10: dense near the data)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return [num_timesteps - 1]
    steps = [round((num_timesteps - 1) * (k / (num_steps - 1)) ** 2) for k in range(num_steps)]  # rising from 0
    for k in range(1, num_steps):
        steps[k] = max(steps[k], steps[k - 1] + 1)
    steps[-1] = num_timesteps - 1
    for k in reversed(range(num_steps - 1)):  # the nudges may have pushed the top past T-1
        steps[k] = min(steps[k], steps[k + 1] - 1)
    return steps[::-1]


Spacing = Literal["quadratic", "time"]


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2): the probability-flow ODE solved in
    its data-prediction form, second order from the x0 estimates of the last two steps. With
    λ = log(α/σ), h_i = λ_{i+1} − λ_i and r_i = h_{i−1} / h_i:

        D_i     = x0_i                                           first step (first order: DDIM, η = 0)
        D_i     = (1 + 1/(2 r_i)) x0_i − 1/(2 r_i) x0_{i−1}     later steps
        x_{i+1} = (σ_{i+1} / σ_i) x_i − α_{i+1} (e^{−h_i} − 1) D_i

    D_i = x0_i + (x0_i − x0_{i−1}) / (2 r_i) is the reference code's "midpoint" form
    (`multistep_dpm_solver_second_order_update` in LuChengTHU/dpm-solver and in diffusers'
    `DPMSolverMultistepScheduler`, algorithm "dpmsolver++"). The last step, from the last timestep to
    clean data (σ = 0, λ = ∞), is first order: it returns that timestep's x0.

    Where the K network calls fall (`spacing`):
    - ``"quadratic"`` (default): quadratically in t from T−1 down to t = 0 (`quadratic_timesteps`), so
      the steps are dense where the noise is faint, r stays within 0.8–1.7 after the first step (K = 25),
      and the last call, like DDPM's, is at t = 0 (σ = 0.012), whose x0 is returned. Even steps in λ,
      the DPM-Solver paper's other choice for small images, spend ten of 25 steps on t ≥ 990 of
      the cosine schedule, whose λ plunges over its last steps.
    - ``"time"``: evenly in t as if there were K + 1 calls, the last dropped (t ≈ T/K), and one jump
      from there to σ = 0 (diffusers' default: `timestep_spacing="linspace"`, `final_sigmas_type="zero"`).
      On shapes at 25 steps the last call is then at σ = 0.075, whose one-shot x0 keeps a visible grain
      of noise in flat regions (docs/results.md, issue 19).
    x0 is clipped as in the other samplers (`clip_x0`), which the data-prediction form tolerates.
    Deterministic given the noise; the generator is not used.
    """

    def __init__(
        self,
        schedule: CosineSchedule,
        num_steps: int = 25,
        prediction: Prediction = "v",
        clip_x0: bool = True,
        spacing: Spacing = "quadratic",
    ) -> None:
        if spacing not in ("quadratic", "time"):
            raise ValueError(f"spacing must be 'quadratic' or 'time', got {spacing!r}")
        self.spacing = spacing
        super().__init__(schedule, num_steps, prediction, clip_x0)
        self.lam: list[float] = [0.5 * math.log(a / (1 - a)) for a in self.abar]  # λ_i; λ of clean data is ∞
        self._previous: tuple[Tensor, float] | None = None  # (x0, h) of the last step

    def grid(self, num_timesteps: int, num_steps: int) -> list[int]:
        if self.spacing == "quadratic":
            return quadratic_timesteps(num_timesteps, num_steps)
        return respaced_timesteps(num_timesteps, min(num_steps + 1, num_timesteps))[:num_steps]

    def start(self) -> None:
        self._previous = None

    def step(self, x: Tensor, x0: Tensor, eps: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        if i == self.num_steps - 1:  # to σ = 0: the first-order update is x0
            return x0
        abar_next = self.abar_prev[i]
        h = self.lam[i + 1] - self.lam[i]
        d = x0
        if self._previous is not None:
            previous, h_previous = self._previous
            half_inv_r = h / (2 * h_previous)  # 1 / (2 r_i)
            d = (1 + half_inv_r) * x0 - half_inv_r * previous
        self._previous = (x0, h)
        sigma_ratio = math.sqrt((1 - abar_next) / (1 - self.abar[i]))  # σ_{i+1} / σ_i
        return self.update(x, d, h, math.sqrt(abar_next), sigma_ratio, generator)

    def update(
        self, x: Tensor, d: Tensor, h: float, alpha_next: float, sigma_ratio: float, generator: torch.Generator | None
    ) -> Tensor:
        """x_{i+1} from x_i and the data estimate D_i: the probability-flow ODE's exact step for constant D."""
        return sigma_ratio * x - alpha_next * math.expm1(-h) * d

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", spacing={self.spacing!r})"


class DPMSolverPP2MSDESampler(DPMSolverPP2MSampler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, App. B; diffusers' "sde-dpmsolver++"): the
    same multistep data estimate D_i, on the reverse SDE, which puts fresh noise back at every step:

        x_{i+1} = (σ_{i+1} / σ_i) e^{−h_i} x_i + α_{i+1} (1 − e^{−2h_i}) D_i + σ_{i+1} sqrt(1 − e^{−2h_i}) z

    Its first-order step (D_i = x0_i) is exactly DDPM's ancestral step between the same two timesteps
    (the posterior mean and variance β̃). Fresh noise corrects what the network's errors leave in x,
    which an ODE solver carries to the end: on a CPU shapes model the ODE, even DDIM at 250 steps, had
    twice DDPM 250's FID, and this sampler at 25 steps came within 1.5 of it (docs/results.md,
    "DPM-Solver++ on shapes"). Random given the generator.
    """

    def update(
        self, x: Tensor, d: Tensor, h: float, alpha_next: float, sigma_ratio: float, generator: torch.Generator | None
    ) -> Tensor:
        kept = -math.expm1(-2 * h)  # 1 − e^{−2h}
        sigma_next = math.sqrt(1 - alpha_next**2)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return sigma_ratio * math.exp(-h) * x + alpha_next * kept * d + sigma_next * math.sqrt(kept) * z


SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler, "ddim": DDIMSampler, "dpmpp_2m": DPMSolverPP2MSampler, "dpmpp_2m_sde": DPMSolverPP2MSDESampler,
}


def build_sampler(name: SamplerName, schedule: CosineSchedule, num_steps: int, **kwargs: object) -> Sampler:
    """Construct a sampler by name; `kwargs` go to its constructor (e.g. eta, prediction, clip_x0)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= schedule.num_timesteps:
        raise ValueError(
            f"num_steps must be an int in 1..{schedule.num_timesteps} for sampler {name!r}, got {num_steps!r}"
        )
    return SAMPLERS[name](schedule, num_steps=num_steps, **kwargs)  # type: ignore[arg-type]
