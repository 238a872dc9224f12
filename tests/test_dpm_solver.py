"""DPM-Solver++(2M) for the v-prediction cosine schedule, against closed forms: data N(μ, s²) has the exact
denoiser E[x0 | x_t] and an affine probability-flow ODE, so both the sampled moments and the exact ODE
endpoint of every starting point are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from kaleido.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    DPMSolverPP2MSDESampler,
    build_sampler,
    quadratic_timesteps,
)
from kaleido.diffusion.schedule import CosineSchedule
from tests.test_diffusion_math import as_output, gaussian_denoiser

T = 1000
MU, SD = 0.3, 0.5


@pytest.fixture(scope="module")
def schedule() -> CosineSchedule:
    return CosineSchedule(T)


def test_built_by_name_and_bad_steps_say_what(schedule: CosineSchedule) -> None:
    sampler = build_sampler("dpmpp_2m", schedule, 20)
    assert isinstance(sampler, DPMSolverPP2MSampler) and sampler.num_steps == 20 and "DPMSolverPP2M" in repr(sampler)
    for bad in (0, -1, T + 1):
        with pytest.raises(ValueError, match=rf"^num_steps must be an int in 1..{T} for sampler 'dpmpp_2m', got {bad}$"):
            build_sampler("dpmpp_2m", schedule, bad)
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; expected one of \['ddim', 'ddpm', 'dpmpp_2m', 'dpmpp_2m_sde'\]"):
        build_sampler("dpm", schedule, 20)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_steps", [1, 5, 20])
def test_each_first_order_step_is_ddim(schedule: CosineSchedule, num_steps: int) -> None:
    """Without history (the first step, and every step after `start`), the update is DDIM with η = 0."""
    dpm, ddim = DPMSolverPP2MSampler(schedule, num_steps), DDIMSampler(schedule, num_steps)
    ddim.abar, ddim.abar_prev = dpm.abar, dpm.abar_prev  # DDIM on the same grid (DPM-Solver++ ends at t ≈ T/K)
    g = torch.Generator().manual_seed(0)
    for i in range(num_steps):
        x, x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64)
        a, s = math.sqrt(dpm.abar[i]), math.sqrt(1 - dpm.abar[i])
        eps = (x - a * x0) / s
        dpm.start()
        torch.testing.assert_close(dpm.step(x, x0, eps, i, None), ddim.step(x, x0, eps, i, None), rtol=1e-12, atol=1e-12)


def test_second_order_step_by_hand(schedule: CosineSchedule) -> None:
    """Alg. 2's multistep update, written out with the λ of the respaced steps."""
    dpm = DPMSolverPP2MSampler(schedule, 10)
    x, x0_a, x0_b = (torch.full((1,), v, dtype=torch.float64) for v in (0.7, 0.2, -0.1))
    dpm.start()
    x1 = dpm.step(x, x0_a, x0_a, 0, None)  # eps is unused by this sampler
    x2 = dpm.step(x1, x0_b, x0_b, 1, None)
    abar = schedule.alphas_cumprod.double()[dpm.timesteps].tolist()
    lam = [0.5 * math.log(a / (1 - a)) for a in abar]
    h0, h1 = lam[1] - lam[0], lam[2] - lam[1]
    r = h0 / h1
    d = (1 + 1 / (2 * r)) * -0.1 - 1 / (2 * r) * 0.2
    expected = math.sqrt((1 - abar[2]) / (1 - abar[1])) * x1.item() - math.sqrt(abar[2]) * (math.exp(-h1) - 1) * d
    assert x2.item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_moments_at_20_steps(schedule: CosineSchedule) -> None:
    """N(0.3, 0.5²) from 20,000 draws: mean within 0.01 and std within 0.01 of the truth (the Monte-Carlo
    error alone is 0.0035 and 0.0025)."""
    sampler = DPMSolverPP2MSampler(schedule, 20, clip_x0=False)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 1, 1, 1, generator=g, dtype=torch.float64)
    x = sampler(gaussian_denoiser(schedule, MU, SD), noise, generator=g)
    assert abs(x.mean().item() - MU) < 0.01, x.mean().item()
    assert abs(x.std().item() - SD) < 0.01, x.std().item()


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_point_mass_recovered_for_every_parameterisation(schedule: CosineSchedule, prediction: str) -> None:
    target = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    sampler = DPMSolverPP2MSampler(schedule, 20, prediction=prediction)  # type: ignore[arg-type]
    x = sampler(lambda x, t: as_output(schedule, x, t, target, prediction), torch.randn(2, 3, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(x, target, rtol=0, atol=1e-6)


def _ode_error(schedule: CosineSchedule, sampler_cls: type, num_steps: int, noise: Tensor, **kwargs: str) -> float:
    """Largest distance to the exact probability-flow solution: the ODE keeps (x − α μ) / sqrt(α² s² + σ²)
    fixed, so x at the sampler's last timestep is known in closed form, and its exact denoising, which
    the sampler's last step returns, is the reference."""
    sampler = sampler_cls(schedule, num_steps, clip_x0=False, **kwargs)
    denoise = gaussian_denoiser(schedule, MU, SD)
    abar = schedule.alphas_cumprod.double()
    first, last = abar[T - 1], abar[sampler.timesteps[-1]]
    z = (noise - first.sqrt() * MU) / (first * SD**2 + 1 - first).sqrt()
    x_last = last.sqrt() * MU + (last * SD**2 + 1 - last).sqrt() * z
    t = sampler.timesteps[-1].repeat(noise.shape[0])
    a, s = schedule.alpha_sigma(t, torch.float64)
    exact = a * x_last - s * denoise(x_last, t)  # x0 from the exact v
    return (sampler(denoise, noise) - exact).abs().max().item()


def test_order_of_convergence(schedule: CosineSchedule) -> None:
    """DDIM is first order: halving the step size halves the error. DPM-Solver++(2M) is second order: the
    observed order log2(e_K / e_2K) rises towards 2 as the steps shrink (the steps are even in t, so the
    first step spans λ from −9.9 to −2.4 at K = 20 and the asymptotic regime comes late); its error is a
    fifth of DDIM's or less at every step count. (Both on grids even in t: the quadratic grid's integer
    rounding makes its steps uneven from one K to the next, so its errors do not fall smoothly.)"""
    noise = torch.linspace(-3, 3, 61, dtype=torch.float64).view(-1, 1, 1, 1)
    steps = (10, 20, 40, 80, 160, 320)
    ddim = [_ode_error(schedule, DDIMSampler, k, noise) for k in steps]
    dpm = [_ode_error(schedule, DPMSolverPP2MSampler, k, noise, spacing="time") for k in steps]
    ddim_orders = [math.log2(a / b) for a, b in zip(ddim, ddim[1:])]
    dpm_orders = [math.log2(a / b) for a, b in zip(dpm, dpm[1:])]
    assert all(0.9 < p < 1.1 for p in ddim_orders), (ddim, ddim_orders)
    assert dpm_orders[2] < dpm_orders[3] < dpm_orders[4] and dpm_orders[4] > 1.7, (dpm, dpm_orders)  # 1.45, 1.66, 1.77
    assert all(b < a / 5 for a, b in zip(ddim, dpm)), (ddim, dpm)


def test_20_steps_land_near_the_exact_ode_endpoint(schedule: CosineSchedule) -> None:
    """Against the exact endpoint μ + s z of the flow from each noise (z its standardised value): within
    0.01 at 20 steps (0.006), where DDIM at 20 steps is off by 0.11."""
    noise = torch.linspace(-3, 3, 61, dtype=torch.float64).view(-1, 1, 1, 1)
    first = schedule.alphas_cumprod.double()[T - 1]
    endpoint = MU + SD * (noise - first.sqrt() * MU) / (first * SD**2 + 1 - first).sqrt()
    denoise = gaussian_denoiser(schedule, MU, SD)
    error = {name: (cls(schedule, 20, clip_x0=False)(denoise, noise) - endpoint).abs().max().item()
             for name, cls in (("dpm", DPMSolverPP2MSampler), ("ddim", DDIMSampler))}  # fmt: skip
    assert error["dpm"] < 0.01 and error["ddim"] > 0.1, error


def test_quadratic_timesteps_run_from_the_top_to_zero() -> None:
    assert quadratic_timesteps(T, 25)[:3] == [999, 917, 839] and quadratic_timesteps(T, 25)[-4:] == [16, 7, 2, 0]
    for k in (1, 2, 25, 250, 999, T):
        steps = quadratic_timesteps(T, k)
        assert len(steps) == k and steps[0] == T - 1 and (k == 1 or steps[-1] == 0)
        assert all(a > b for a, b in zip(steps, steps[1:])), k  # rounding never repeats a step
    assert quadratic_timesteps(T, T) == list(range(T - 1, -1, -1))
    with pytest.raises(ValueError, match=r"^num_steps must be in 1..1000, got 0$"):
        quadratic_timesteps(T, 0)
    with pytest.raises(ValueError, match=r"^spacing must be 'quadratic' or 'time', got 'karras'$"):
        DPMSolverPP2MSampler(CosineSchedule(T), 25, spacing="karras")  # type: ignore[arg-type]


def _endpoint_error(schedule: CosineSchedule, sampler: DPMSolverPP2MSampler, sd: float) -> float:
    """Largest distance to the exact endpoint μ + sd z of the probability-flow ODE from each noise."""
    noise = torch.linspace(-3, 3, 61, dtype=torch.float64).view(-1, 1, 1, 1)
    first = schedule.alphas_cumprod.double()[T - 1]
    endpoint = MU + sd * (noise - first.sqrt() * MU) / (first * sd**2 + 1 - first).sqrt()
    return (sampler(gaussian_denoiser(schedule, MU, sd), noise) - endpoint).abs().max().item()


def test_quadratic_spacing_keeps_fine_structure_the_time_spacing_loses(schedule: CosineSchedule) -> None:
    """Data of spread 0.05, finer than σ = 0.075 of the time spacing's last call at 25 steps: its final
    jump returns that call's x0, the posterior mean, which shrinks the spread (error 0.068). Ending at
    t = 0, the quadratic spacing lands within 0.004 of the exact endpoint; both are close for spread 0.5."""
    time, quadratic = (DPMSolverPP2MSampler(schedule, 25, clip_x0=False, spacing=s) for s in ("time", "quadratic"))  # type: ignore[arg-type]
    assert time.timesteps[-1].item() == 40 and quadratic.timesteps[-1].item() == 0
    assert _endpoint_error(schedule, time, 0.05) > 0.05
    assert _endpoint_error(schedule, quadratic, 0.05) < 0.004
    assert _endpoint_error(schedule, time, SD) < 0.004 and _endpoint_error(schedule, quadratic, SD) < 0.004


@pytest.mark.parametrize("spacing", ["quadratic", "time"])
def test_sde_first_order_step_is_ddpm(schedule: CosineSchedule, spacing: str) -> None:
    """Without history, SDE-DPM-Solver++'s step is DDPM's ancestral step between the same timesteps, noise included."""
    sde, ddpm = DPMSolverPP2MSDESampler(schedule, 25, spacing=spacing), DDPMSampler(schedule, 25)  # type: ignore[arg-type]
    ddpm.abar, ddpm.abar_prev = sde.abar, sde.abar_prev
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        x, x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64)
        sde.start()
        ours = sde.step(x, x0, x0, i, torch.Generator().manual_seed(i))
        torch.testing.assert_close(ours, ddpm.step(x, x0, x0, i, torch.Generator().manual_seed(i)), rtol=1e-10, atol=1e-10)


def test_sde_second_order_step_by_hand(schedule: CosineSchedule) -> None:
    sde = DPMSolverPP2MSDESampler(schedule, 10)
    x, x0_a, x0_b = (torch.full((1,), v, dtype=torch.float64) for v in (0.7, 0.2, -0.1))
    sde.start()
    x1 = sde.step(x, x0_a, x0_a, 0, torch.Generator().manual_seed(0))
    x2 = sde.step(x1, x0_b, x0_b, 1, torch.Generator().manual_seed(1))
    z = torch.randn((1,), generator=torch.Generator().manual_seed(1), dtype=torch.float64).item()
    abar = schedule.alphas_cumprod.double()[sde.timesteps].tolist()
    lam = [0.5 * math.log(a / (1 - a)) for a in abar]
    h0, h1 = lam[1] - lam[0], lam[2] - lam[1]
    d = -0.1 + (h1 / (2 * h0)) * (-0.1 - 0.2)
    sigma1, sigma2, alpha2 = math.sqrt(1 - abar[1]), math.sqrt(1 - abar[2]), math.sqrt(abar[2])
    expected = sigma2 / sigma1 * math.exp(-h1) * x1.item() + alpha2 * (1 - math.exp(-2 * h1)) * d + sigma2 * math.sqrt(1 - math.exp(-2 * h1)) * z
    assert x2.item() == pytest.approx(expected, rel=1e-12)


def test_sde_gaussian_moments(schedule: CosineSchedule) -> None:
    """N(0.3, 0.5²) from 20,000 draws, by name (Monte-Carlo error of the std: 0.0025): the std within 0.02
    at 25 steps (0.511) and 0.01 at 50, where DDPM at 25 steps is off by 0.06 (0.441)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 1, 1, 1, generator=g, dtype=torch.float64)
    denoise = gaussian_denoiser(schedule, MU, SD)
    sampler = build_sampler("dpmpp_2m_sde", schedule, 25, clip_x0=False)
    assert isinstance(sampler, DPMSolverPP2MSDESampler) and "spacing='quadratic'" in repr(sampler)
    draws = {k: build_sampler(name, schedule, n, clip_x0=False)(denoise, noise, generator=torch.Generator().manual_seed(1))
             for k, (name, n) in {"sde25": ("dpmpp_2m_sde", 25), "sde50": ("dpmpp_2m_sde", 50), "ddpm25": ("ddpm", 25)}.items()}  # fmt: skip
    assert all(abs(x.mean().item() - MU) < 0.01 for x in draws.values())
    assert abs(draws["sde25"].std().item() - SD) < 0.02 and abs(draws["sde50"].std().item() - SD) < 0.01
    assert abs(draws["ddpm25"].std().item() - SD) > 0.05
