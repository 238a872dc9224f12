"""Schedule algebra, samplers driven by exact (closed-form) denoisers, and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kaleido.diffusion.guidance import classifier_free_guidance, conditioned
from kaleido.diffusion.samplers import DDIMSampler, DDPMSampler, build_sampler, respaced_timesteps
from kaleido.diffusion.schedule import CosineSchedule

T = 1000


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def schedule() -> CosineSchedule:
    return CosineSchedule(T)


# ----------------------------------------------------------------------------- schedule


def test_alphas_cumprod_decreasing_in_unit_interval(schedule: CosineSchedule) -> None:
    abar = schedule.alphas_cumprod
    assert abar.shape == (T,) and abar.dtype == torch.float64
    assert (abar > 0).all() and (abar < 1).all()
    assert (abar[1:] < abar[:-1]).all()
    # Cosine shape: about half the signal variance left at mid-schedule, almost none at the end.
    assert 0.4 < abar[T // 2].item() < 0.6 and abar[-1].item() < 1e-6
    a, s = schedule.alpha_sigma(torch.tensor([0, 500, T - 1]), torch.float64)
    assert a.shape == s.shape == (3, 1, 1, 1)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=0, atol=1e-12)


def test_schedule_keeps_float64_under_half_precision_cast(schedule: CosineSchedule) -> None:
    cast = CosineSchedule(T).to(torch.bfloat16)
    assert cast.alphas_cumprod.dtype == torch.float64
    assert torch.equal(cast.alphas_cumprod, schedule.alphas_cumprod)
    assert "alphas_cumprod" not in cast.state_dict()  # derived from the constructor args, not checkpointed


@pytest.mark.parametrize("shift", [0.5, 2.0, 4.0])
def test_shifted_schedule_divides_the_snr_by_shift_squared(schedule: CosineSchedule, shift: float) -> None:
    shifted = CosineSchedule(T, shift=shift)
    t = torch.arange(T)
    ratio = schedule.snr(t) / shifted.snr(t)
    torch.testing.assert_close(ratio, torch.full_like(ratio, shift**2), rtol=1e-5, atol=0)  # 1e-5: rounding of ᾱ ~ 1e-9 at the last step
    assert (shifted.alphas_cumprod[1:] < shifted.alphas_cumprod[:-1]).all()
    # A dtype cast rebuilds the table with its shift, not the plain cosine one.
    assert torch.equal(shifted.to(torch.bfloat16).alphas_cumprod, shifted.alphas_cumprod)
    assert torch.equal(CosineSchedule(T, shift=1.0).betas, schedule.betas)
    with pytest.raises(ValueError, match="shift must be > 0"):
        CosineSchedule(T, shift=0.0)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_parameterisations_invert_exactly(schedule: CosineSchedule, prediction: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (16,), generator=g)
    t[:2] = torch.tensor([0, T - 1])  # both ends of the schedule
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t, prediction)  # type: ignore[arg-type]
    x0_hat, eps_hat = schedule.predict_x0_eps(x_t, t, target, prediction)  # type: ignore[arg-type]
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_min_snr_weighting_is_the_same_x0_loss_for_every_parameterisation(schedule: CosineSchedule, prediction: str) -> None:
    # A network output that implies the estimate x0_hat (from x_t): its weighted loss is min(SNR, γ)·‖x0_hat − x0‖².
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(64, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.arange(64) * (T // 64) + 3
    x_t = schedule.add_noise(x0, noise, t)
    a, s = schedule.alpha_sigma(t, torch.float64)
    eps_hat = (x_t - a * x0_hat) / s
    output = schedule.target(x0_hat, eps_hat, t, prediction)  # type: ignore[arg-type]
    target = schedule.target(x0, noise, t, prediction)  # type: ignore[arg-type]
    per_sample = (output - target).square().flatten(1).mean(1)
    weighted = schedule.min_snr_weight(t, prediction, gamma=5.0).double() * per_sample  # type: ignore[arg-type]
    expected = schedule.snr(t).clamp(max=5.0) * (x0_hat - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-9)


def test_v_target_definition(schedule: CosineSchedule) -> None:
    x0, noise, t = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2), torch.tensor([0, 10, 500, 999])
    a, s = schedule.alpha_sigma(t)
    torch.testing.assert_close(schedule.v_target(x0, noise, t), a * noise - s * x0)
    with pytest.raises(ValueError, match="prediction"):
        schedule.predict_x0_eps(x0, t, noise, "score")  # type: ignore[arg-type]


def test_sample_timesteps_uniform_and_seeded(schedule: CosineSchedule) -> None:
    t = schedule.sample_timesteps(50_000, "cpu", torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= T - 1
    assert abs(t.double().mean().item() - (T - 1) / 2) < 5  # std of the mean ≈ 1.3
    assert torch.equal(t, schedule.sample_timesteps(50_000, "cpu", torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------- respacing


@pytest.mark.parametrize("num_steps", [2, 3, 50, 250, 999, 1000])
def test_respaced_timesteps(num_steps: int) -> None:
    steps = torch.tensor(respaced_timesteps(T, num_steps))
    assert len(steps) == num_steps
    assert steps[0] == T - 1 and steps[-1] == 0
    assert (steps[1:] < steps[:-1]).all()
    assert torch.equal(DDPMSampler(CosineSchedule(T), num_steps).timesteps, steps)


def test_build_sampler_validation(schedule: CosineSchedule) -> None:
    assert isinstance(build_sampler("ddpm", schedule, 250), DDPMSampler)
    ddim = build_sampler("ddim", schedule, 1, eta=0.5)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.5 and ddim.timesteps.tolist() == [T - 1]
    for bad in (0, T + 1, -3):
        with pytest.raises(ValueError, match="num_steps"):
            build_sampler("ddpm", schedule, bad)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("euler", schedule, 10)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- exact denoisers


def as_output(schedule: CosineSchedule, x: Tensor, t: Tensor, x0: Tensor, prediction: str) -> Tensor:
    """Express an x0 estimate at x_t as the network output of the given parameterisation."""
    a, s = schedule.alpha_sigma(t, x.dtype)
    eps = (x - a * x0) / s
    return {"v": a * eps - s * x0, "eps": eps, "x0": x0}[prediction]


def gaussian_denoiser(schedule: CosineSchedule, mu: float, sd: float, prediction: str = "v"):
    """Optimal output for data N(mu, sd²): E[x0 | x_t] = mu + α sd² / (α² sd² + σ²) · (x_t − α mu)."""

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        a, s = schedule.alpha_sigma(t, x.dtype)
        x0 = mu + a * sd**2 / (a**2 * sd**2 + s**2) * (x - a * mu)
        return as_output(schedule, x, t, x0, prediction)

    return denoise


def mixture_denoiser(schedule: CosineSchedule, points: tuple[float, ...], weights: tuple[float, ...]):
    """Optimal v for data Σ w_k δ(x − p_k): posterior-weighted average of the points."""
    p = torch.tensor(points, dtype=torch.float64)
    logw = torch.tensor(weights, dtype=torch.float64).log()

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        a, s = schedule.alpha_sigma(t, x.dtype)
        logits = logw - (x[..., None] - a[..., None] * p) ** 2 / (2 * s[..., None] ** 2)
        x0 = (logits.softmax(-1) * p).sum(-1)
        return as_output(schedule, x, t, x0, "v")

    return denoise


SAMPLERS = {
    "ddpm250": lambda sch, **kw: DDPMSampler(sch, 250, **kw),
    "ddim50": lambda sch, **kw: DDIMSampler(sch, 50, **kw),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_data_recovered(schedule: CosineSchedule, name: str) -> None:
    mu, sd = 0.3, 0.5
    sampler = SAMPLERS[name](schedule, clip_x0=False)  # N(0.3, 0.5²) leaves [-1, 1] 8% of the time
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 1, 1, 1, generator=g, dtype=torch.float64)
    x = sampler(gaussian_denoiser(schedule, mu, sd), noise, generator=g)
    assert abs(x.mean().item() - mu) < 0.02, x.mean().item()
    assert abs(x.std().item() - sd) < 0.03, x.std().item()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_data_recovered_under_a_shifted_schedule(name: str) -> None:
    shifted = CosineSchedule(T, shift=2.0)
    sampler = SAMPLERS[name](shifted, clip_x0=False)
    g = torch.Generator().manual_seed(3)
    x = sampler(gaussian_denoiser(shifted, -0.2, 0.4), torch.randn(20_000, 1, 1, 1, generator=g, dtype=torch.float64), generator=g)
    assert abs(x.mean().item() + 0.2) < 0.02 and abs(x.std().item() - 0.4) < 0.03, (x.mean().item(), x.std().item())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_two_point_mixture_recovered(schedule: CosineSchedule, name: str) -> None:
    points, weights = (-0.6, 0.8), (0.3, 0.7)
    sampler = SAMPLERS[name](schedule)  # clip on: x0 estimates lie in [-0.6, 0.8] anyway
    g = torch.Generator().manual_seed(1)
    x = sampler(mixture_denoiser(schedule, points, weights), torch.randn(20_000, 1, 1, 1, generator=g), generator=g)
    near_low, near_high = (x - points[0]).abs() < 0.02, (x - points[1]).abs() < 0.02
    assert (near_low | near_high).float().mean().item() > 0.99
    assert abs(near_high.float().mean().item() - weights[1]) < 0.02  # binomial std ≈ 0.003


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_point_mass_recovered_for_every_parameterisation(schedule: CosineSchedule, name: str, prediction: str) -> None:
    target = torch.linspace(-0.9, 0.9, 2 * 3 * 8 * 8, dtype=torch.float64).view(2, 3, 8, 8)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        return as_output(schedule, x, t, target, prediction)

    sampler = SAMPLERS[name](schedule, prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x = sampler(denoise, torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), generator=g)
    torch.testing.assert_close(x, target, rtol=0, atol=1e-6)


def test_ddim_eta0_deterministic_and_seeding(schedule: CosineSchedule) -> None:
    denoise = gaussian_denoiser(schedule, 0.0, 0.4)
    noise = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    ddim = DDIMSampler(schedule, 20)
    a = ddim(denoise, noise, generator=torch.Generator().manual_seed(0))
    b = ddim(denoise, noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a, ddim(denoise, noise))
    for stochastic in (DDPMSampler(schedule, 20), DDIMSampler(schedule, 20, eta=1.0)):
        a = stochastic(denoise, noise, generator=torch.Generator().manual_seed(0))
        b = stochastic(denoise, noise, generator=torch.Generator().manual_seed(0))
        c = stochastic(denoise, noise, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sampler_calls_model_with_original_timesteps(schedule: CosineSchedule) -> None:
    seen: list[Tensor] = []

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    sampler = DDPMSampler(schedule, 10)
    out = sampler(denoise, torch.randn(3, 1, 2, 2) * 5)
    assert torch.equal(torch.stack([t[0] for t in seen]), sampler.timesteps)
    assert all(t.dtype == torch.long and t.shape == (3,) for t in seen)
    assert out.abs().max() <= 1  # clipped x0 returned


# ----------------------------------------------------------------------------- guidance


class FakeModel:
    """Records calls; conditional rows output x + t, unconditional rows output x − 7."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __call__(self, x: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        self.calls.append((x, t, uncond))
        return torch.where(uncond[:, None, None, None], x - 7, x + t[:, None, None, None])


def test_cfg_scale_one_is_single_conditional_pass() -> None:
    model = FakeModel()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([5, 6, 7])
    out = classifier_free_guidance(model, 1.0)(x, t)
    assert len(model.calls) == 1
    cx, ct, cu = model.calls[0]
    assert cx.shape[0] == 3 and ct.shape == (3,) and cu.dtype == torch.bool and not cu.any()
    torch.testing.assert_close(out, x + t[:, None, None, None].float())


@pytest.mark.parametrize("scale", [0.0, 3.5])
def test_cfg_single_batched_pass_and_combination(scale: float) -> None:
    model = FakeModel()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([5, 6, 7])
    out = classifier_free_guidance(model, scale)(x, t)
    assert len(model.calls) == 1
    cx, ct, cu = model.calls[0]
    assert cx.shape[0] == 6 and torch.equal(cx[:3], x) and torch.equal(cx[3:], x) and torch.equal(ct, t.repeat(2))
    assert cu.tolist() == [False] * 3 + [True] * 3
    c, u = x + t[:, None, None, None], x - 7
    torch.testing.assert_close(out, u + scale * (c - u))


def test_conditioned_repeats_condition_for_guided_batch() -> None:
    seen = {}

    def net(x: Tensor, t: Tensor, cond: Tensor, mask: Tensor, uncond: Tensor) -> Tensor:
        seen.update(cond=cond, mask=mask)
        return x * cond.sum(dim=(1, 2))[:, None, None, None]

    cond, mask = torch.randn(2, 5, 3), torch.rand(2, 5) > 0.5
    guided = classifier_free_guidance(conditioned(net, cond, mask), 2.0)
    guided(torch.ones(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    assert torch.equal(seen["cond"], torch.cat([cond, cond])) and torch.equal(seen["mask"], torch.cat([mask, mask]))
    with pytest.raises(ValueError, match="multiple"):
        conditioned(net, cond, mask)(torch.ones(3, 1, 2, 2), torch.zeros(3), torch.zeros(3, dtype=torch.bool))

