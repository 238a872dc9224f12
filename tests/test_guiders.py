"""Guiders against hand computations on small tensors, their registry and errors, and plain CFG through
`generate` bit for bit the code it replaced."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

import kaleido
from kaleido.__main__ import main
from kaleido.diffusion.guiders import APG, CADS, CFG, IntervalCFG, Level, build_guider, conditioned, guide
from kaleido.diffusion.samplers import build_sampler
from kaleido.diffusion.schedule import CosineSchedule
from kaleido.modules.settings import SamplingSettings
from tests.conftest import tiny_model_kwargs

T = 1000


@pytest.fixture(scope="module")
def schedule() -> CosineSchedule:
    return CosineSchedule(T)


def col(*values: float) -> Tensor:
    """One sample [1, N, 1, 1] (float64) holding `values`."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- combine, by hand


def test_cfg_by_hand(schedule: CosineSchedule) -> None:
    c, u = col(3.0, 4.0), col(1.0, 1.0)
    level = Level(torch.zeros_like(c), torch.tensor([500]), schedule)
    assert CFG().combine(c, u, 3.0, level).flatten().tolist() == [7.0, 10.0]  # 1 + 3·2, 1 + 3·3


def test_interval_guides_only_inside_its_noise_levels(schedule: CosineSchedule) -> None:
    t = torch.tensor([100, 400, 700, 900])
    abar = schedule.alphas_cumprod[t]
    sigma = ((1 - abar) / abar).sqrt().tolist()  # EDM's σ: about 0.16, 0.75, 2.3, 6.9
    guider = IntervalCFG(sigma_lo=sigma[0], sigma_hi=sigma[2])  # (σ_100, σ_700]: the ends decide
    c, u = torch.full((4, 1, 1, 1), 2.0, dtype=torch.float64), torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    out = guider.combine(c, u, 4.0, Level(torch.zeros_like(c), t, schedule)).flatten().tolist()
    assert out == [2.0, 8.0, 8.0, 2.0]  # lo is outside, hi inside; 0 + 4 · 2 inside
    assert IntervalCFG(0.0, math.inf).combine(c, u, 4.0, Level(c, t, schedule)).flatten().tolist() == [8.0] * 4


def test_apg_by_hand_on_x0(schedule: CosineSchedule) -> None:
    """x0-prediction, so the x0 estimates are the outputs: ΔD = (2, 3) against D_c = (3, 4)."""
    c, u = col(3.0, 4.0), col(1.0, 1.0)
    level = Level(torch.zeros_like(c), torch.tensor([500]), schedule, "x0")
    # ∥ = ⟨(2, 3), (3, 4)⟩ / 25 · (3, 4) = 0.72 · (3, 4) = (2.16, 2.88);  ⊥ = (−0.16, 0.12)
    plain = APG(eta=0.0, norm_threshold=0.0, momentum=0.0)
    plain.start(None)
    torch.testing.assert_close(plain.combine(c, u, 3.0, level), col(3 - 0.32, 4 + 0.24))  # D_c + 2 ⊥
    half = APG(eta=0.5, norm_threshold=0.0, momentum=0.0)
    half.start(None)
    torch.testing.assert_close(half.combine(c, u, 3.0, level), col(3 + 2 * (-0.16 + 1.08), 4 + 2 * (0.12 + 1.44)))
    # Cap r = 1: ΔD / ‖ΔD‖ = (2, 3) / √13, then the same split (the projection is linear).
    capped = APG(eta=0.0, norm_threshold=1.0, momentum=0.0)
    capped.start(None)
    k = 1 / math.sqrt(13)
    torch.testing.assert_close(capped.combine(c, u, 3.0, level), col(3 - 0.32 * k, 4 + 0.24 * k))
    # r above the norm: no cap.
    loose = APG(eta=0.0, norm_threshold=10.0, momentum=0.0)
    loose.start(None)
    torch.testing.assert_close(loose.combine(c, u, 3.0, level), col(3 - 0.32, 4 + 0.24))


def test_apg_momentum_by_hand_and_reset(schedule: CosineSchedule) -> None:
    """η = 1, no cap: APG is CFG on x0 with ΔD_k = (c_k − u_k) + β ΔD_{k−1}."""
    level = Level(torch.zeros(1, 2, 1, 1, dtype=torch.float64), torch.tensor([500]), schedule, "x0")
    guider = APG(eta=1.0, norm_threshold=0.0, momentum=-0.5)
    guider.start(None)
    first = guider.combine(col(3.0, 4.0), col(1.0, 1.0), 2.0, level)
    second = guider.combine(col(1.0, 2.0), col(1.0, 0.0), 2.0, level)
    torch.testing.assert_close(first, col(5.0, 7.0))  # ΔD = (2, 3)
    torch.testing.assert_close(second, col(1 + (0 - 1.0), 2 + (2 - 1.5)))  # ΔD = (0, 2) − 0.5 (2, 3)
    guider.start(None)  # a new run forgets the history
    torch.testing.assert_close(guider.combine(col(1.0, 2.0), col(1.0, 0.0), 2.0, level), col(1.0, 4.0))


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_apg_without_its_changes_is_cfg_in_any_parameterisation(schedule: CosineSchedule, prediction: str) -> None:
    """η = 1, r = 0, β = 0: x0 → output and back is exact up to rounding, so APG equals CFG."""
    g = torch.Generator().manual_seed(0)
    x, c, u = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    level = Level(x, torch.tensor([10, 500, 990]), schedule, prediction)  # type: ignore[arg-type]
    guider = APG(eta=1.0, norm_threshold=0.0, momentum=0.0)
    guider.start(None)
    torch.testing.assert_close(guider.combine(c, u, 5.0, level), CFG().combine(c, u, 5.0, level))


def test_cads_schedule_by_hand(schedule: CosineSchedule) -> None:
    cads = CADS(tau1=0.6, tau2=0.9)
    t = torch.tensor([0, 499, 599, 749, 899, 999])  # u = (t + 1) / T: 0.001, 0.5, 0.6, 0.75, 0.9, 1
    gamma = cads.gamma(Level(torch.zeros(6, 1, 1, 1), t, schedule).time)
    torch.testing.assert_close(gamma, torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64))


def test_cads_condition_by_hand(schedule: CosineSchedule) -> None:
    """One row, 3 tokens (the last padding) of 2 channels, at u = 0.75 (γ = 1/2), s = 0.25, ψ = 0.8."""
    y = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [9.0, 9.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    cads = CADS(noise_scale=0.25, psi=0.8)
    cads.start(torch.Generator().manual_seed(7))
    out = cads.condition(y, mask, (3,), Level(torch.zeros(1, 1, 1, 1), torch.tensor([749]), schedule))
    n = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    noisy = math.sqrt(0.5) * y + 0.25 * math.sqrt(0.5) * n
    real_y, real_noisy = [1.0, 2.0, 3.0, 5.0], noisy[0, :2].flatten().tolist()  # the real tokens only
    mean_y, mean_n = sum(real_y) / 4, sum(real_noisy) / 4
    std_y = math.sqrt(sum((v - mean_y) ** 2 for v in real_y) / 4)
    std_n = math.sqrt(sum((v - mean_n) ** 2 for v in real_noisy) / 4)
    rescaled = (noisy - mean_n) / std_n * std_y + mean_y
    torch.testing.assert_close(out, 0.8 * rescaled + 0.2 * noisy)


def test_cads_keeps_each_segments_moments_and_leaves_late_steps_clean(schedule: CosineSchedule) -> None:
    """Kaleido's conditioning is c then z: each part is noised and keeps its own mean and std."""
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.randn(2, 3, 4, generator=g) * 5 + 2, torch.randn(2, 2, 4, generator=g) * 0.1 - 1], dim=1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    cads = CADS(noise_scale=1.0)
    cads.start(torch.Generator().manual_seed(0))
    early = cads.condition(y, mask, (3, 2), Level(torch.zeros(2, 1, 1, 1), torch.tensor([999, 999]), schedule))
    for part in (slice(0, 3), slice(3, 5)):
        assert not torch.allclose(early[:, part], y[:, part], atol=1e-2)
        for row in range(2):
            torch.testing.assert_close(early[row, part].mean(), y[row, part].mean(), atol=1e-5, rtol=0)
            torch.testing.assert_close(early[row, part].std(unbiased=False), y[row, part].std(unbiased=False), rtol=1e-5, atol=0)
    late = cads.condition(y, mask, (3, 2), Level(torch.zeros(2, 1, 1, 1), torch.tensor([10, 10]), schedule))
    torch.testing.assert_close(late, y, rtol=1e-5, atol=1e-5)


def test_cads_noise_reaches_the_network_only_through_the_conditioning(schedule: CosineSchedule) -> None:
    seen: list[Tensor] = []

    def net(x: Tensor, t: Tensor, states: Tensor, mask: Tensor, uncond: Tensor) -> Tensor:
        seen.append(states)
        return x

    # Its own seed: states drawn like the noise (seed 0) would rescale back to themselves.
    states, mask = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(7)), torch.ones(2, 5, dtype=torch.bool)
    cads = CADS()
    cads.start(torch.Generator().manual_seed(0))
    denoise = guide(conditioned(net, states, mask, cads, schedule, (3, 2)), cads, 2.0, schedule)
    denoise(torch.zeros(2, 1, 2, 2), torch.tensor([999, 999]))
    assert seen[0].shape == (4, 5, 4) and torch.equal(seen[0][:2], seen[0][2:])  # repeated for the 2B rows
    assert not torch.allclose(seen[0][:2], states, atol=0.1)


def test_defaults_are_the_published_settings() -> None:
    """Each default is a setting its paper published (docs/sampling.md, "Sources checked")."""
    # Kynkäänniemi et al. 2024, Table 1: EDM2-S on ImageNet-512, FID-optimal interval (w = 2.1).
    assert IntervalCFG().settings() == {"sigma_lo": 0.28, "sigma_hi": 2.90}
    # Sadat et al. 2025, Table 10, Stable Diffusion XL row (η = 0, r = 15, β = −0.5; diffusers PR #9626).
    assert APG().settings() == {"eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5}
    # Sadat et al. 2024, Stable Diffusion text-to-image setting (τ1, τ2, s, ψ).
    assert CADS().settings() == {"tau1": 0.6, "tau2": 0.9, "noise_scale": 0.25, "psi": 1.0}
    assert CFG().settings() == {}


# ----------------------------------------------------------------------------- registry and errors


def test_built_from_names_class_paths_and_dicts() -> None:
    assert build_guider(None) == CFG() and build_guider("cfg") == CFG()
    assert build_guider("kaleido.diffusion.guiders.APG") == APG()
    apg = build_guider({"class_path": "apg", "init_args": {"eta": 0.5}})
    assert apg == APG(eta=0.5) and apg.label == "apg_eta0.5"
    path = "kaleido.diffusion.guiders.apg.APG"
    assert apg.spec() == {"class_path": path, "init_args": {"eta": 0.5, "norm_threshold": 15.0, "momentum": -0.5}}
    assert build_guider(apg.spec()) == apg
    assert build_guider({"class_path": "interval"}).label == "interval"
    assert SamplingSettings().guider == "cfg"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo", r"^unknown guider 'foo'; expected one of apg, cads, cfg, interval or the class path of a "),
        ("kaleido.diffusion.samplers.DDPMSampler", r"^unknown guider 'kaleido.diffusion.samplers.DDPMSampler'"),
        ({"class_path": "apg", "init_args": {"r": 1}}, r"^guider 'apg' takes no \['r'\]; accepted: \['eta', 'norm_threshold', 'momentum'\]$"),
        ({"class_path": "interval", "init_args": {"sigma_lo": 6, "sigma_hi": 1}}, r"^interval guidance needs 0 <= sigma_lo <= sigma_hi .*got sigma_lo=6, sigma_hi=1$"),
        ({"class_path": "cads", "init_args": {"tau1": 0.9, "tau2": 0.6}}, r"^CADS needs 0 <= tau1 < tau2 <= 1 .*got tau1=0.9, tau2=0.6$"),
        ({"class_path": "apg", "init_args": {"norm_threshold": -1}}, r"^APG needs .*norm_threshold=-1"),
        ({"name": "apg"}, r"^a guider is a name or "),
    ],
)
def test_bad_guiders_say_what_and_what_is_accepted(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_guider(spec)  # type: ignore[arg-type]


def test_the_guider_in_a_training_config(capsys: pytest.CaptureFixture[str]) -> None:
    """LightningCLI takes a name or a full class path (it resolves class paths itself)."""
    config = str(Path(__file__).parent / "configs/tiny_kaleido.yaml")
    spec = '{"class_path": "kaleido.diffusion.guiders.CADS", "init_args": {"psi": 0.5}}'
    for value in ("cads", spec):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", config, "--model.init_args.sampling.guider", value, "--print_config"])
        assert exit_info.value.code in (0, None)
        assert "guider: cads" in capsys.readouterr().out or value == spec
    with pytest.raises(SystemExit, match=r"^error: unknown guider 'foo'; expected one of apg, cads, cfg, interval"):
        main(["fit", "--config", config, "--model.init_args.sampling.guider", "foo", "--trainer.fast_dev_run", "true"])


def test_bad_guider_on_the_command_line_is_one_line() -> None:
    with pytest.raises(SystemExit, match=r"^error: unknown guider 'foo'; expected one of apg, cads, cfg, interval"):
        main(["sample", "--ckpt_path", "x.ckpt", "--condition", "a circle", "--guider", "foo"])
    with pytest.raises(SystemExit, match=r"^error: interval guidance needs 0 <= sigma_lo <= sigma_hi"):
        main(["evaluate", "--ckpt_path", "x.ckpt", "--guiders",
              '[cfg, {"class_path": "interval", "init_args": {"sigma_lo": 3, "sigma_hi": 1}}]'])  # fmt: skip
    with pytest.raises(SystemExit, match=r"^error: --guiders names 'apg' twice"):
        main(["evaluate", "--ckpt_path", "x.ckpt", "--guiders", "[apg, kaleido.diffusion.guiders.APG]"])


# ----------------------------------------------------------------------------- through generate


@pytest.fixture(scope="module")
def models(text_data, baseline_data) -> dict[str, kaleido.Kaleido]:  # type: ignore[no-untyped-def]
    """Tiny models whose (zero-initialised) output layers are made non-zero, so that guidance matters."""
    found = {}
    for name, cls, data in (("kaleido", kaleido.Kaleido, text_data), ("baseline", kaleido.DiffusionModel, baseline_data)):
        torch.manual_seed(0)
        model = cls(tokenizer=data.tokenizer, **tiny_model_kwargs())
        for p in model.denoiser.parameters():
            if p.dim() > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.05)
        found[name] = model.eval()
    return found


def legacy_generate(model, conditions: list[str], scale: float, sampler: str, steps: int, seed: int) -> Tensor:  # type: ignore[no-untyped-def]
    """`generate` for one batch as it was before guiders: `classifier_free_guidance` and `conditioned`
    of kaleido/diffusion/guidance.py at commit 6bbb334, verbatim in substance."""
    chunk_seed = seed * 1_000_003
    cond, _ = model.sampling_conditioning(conditions, None, chunk_seed)
    generator = torch.Generator().manual_seed(chunk_seed)
    noise = torch.randn((len(conditions), 3, model.image_size, model.image_size), generator=generator)

    def model_fn(x: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        reps = x.shape[0] // cond.states.shape[0]
        c, m = (cond.states, cond.mask) if reps == 1 else (cond.states.repeat(reps, 1, 1), cond.mask.repeat(reps, 1))
        return model.denoiser(x, t, c, m, uncond)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0:
            return model_fn(x, t, torch.zeros(x.shape[0], dtype=torch.bool))
        b = x.shape[0]
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.arange(2 * b) >= b)
        c, u = out[:b].to(x.dtype), out[b:].to(x.dtype)
        return u + scale * (c - u)

    run = build_sampler(sampler, model.schedule, steps, prediction=model.diffusion_settings.prediction)  # type: ignore[arg-type]
    return run(denoise, noise, generator=generator)


@pytest.mark.parametrize("name", ["kaleido", "baseline"])
@pytest.mark.parametrize(("scale", "sampler"), [(0.0, "ddpm"), (1.0, "ddim"), (3.0, "ddpm"), (3.0, "ddim")])
def test_plain_cfg_is_bit_identical_to_before(models, name: str, scale: float, sampler: str) -> None:  # type: ignore[no-untyped-def]
    model, conditions = models[name], ["a circle", "a square", "a circle"]
    with torch.no_grad():
        expected = legacy_generate(model, conditions, scale, sampler, 4, seed=2)
    for guider in (None, "cfg", CFG()):
        out = model.generate(conditions, cfg_scale=scale, sampler=sampler, num_steps=4, seed=2, guider=guider)
        assert torch.equal(out.images, expected)


def test_every_guider_samples_seeded_and_differs_where_it_should(models) -> None:  # type: ignore[no-untyped-def]
    model = models["kaleido"]

    def images(guider: object, scale: float = 4.0, sampler: str = "ddim") -> Tensor:
        return model.generate(["a circle"] * 2, cfg_scale=scale, sampler=sampler, num_steps=4, seed=1, guider=guider).images

    cfg = images("cfg")
    for spec in ("interval", "apg", "cads", {"class_path": "apg", "init_args": {"momentum": -0.75}}):
        out = images(spec)
        assert out.shape == cfg.shape and torch.isfinite(out).all()
        assert torch.equal(out, images(spec))  # seeded: the same again (APG's momentum starts afresh)
        assert not torch.equal(out, cfg), spec
    assert torch.equal(images({"class_path": "interval", "init_args": {"sigma_lo": 0, "sigma_hi": math.inf}}), cfg)
    assert not torch.equal(images("cads", 1.0), images("cfg", 1.0))  # CADS acts without guidance too
    assert torch.equal(images("apg", 1.0), images("cfg", 1.0))  # at γ = 1 the others are the conditional model
    assert torch.isfinite(images("cads", 4.0, "dpmpp_2m")).all()
    sde = images("cads", 4.0, "dpmpp_2m_sde")  # the SDE's step noise comes from the seeded generator too
    assert torch.isfinite(sde).all() and torch.equal(sde, images("cads", 4.0, "dpmpp_2m_sde"))
    assert not torch.equal(sde, images("cads", 4.0, "dpmpp_2m"))


def test_the_models_sampling_guider_is_the_default(text_data) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**tiny_model_kwargs(), "sampling": SamplingSettings(sampler="ddim", num_steps=3, guider="cads")}
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **kwargs)
    assert model.hparams["sampling"]["guider"] == "cads"  # plain data in the checkpoint
    for p in model.denoiser.parameters():
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    default, cads, cfg = (model.generate(["a circle"], seed=0, guider=g).images for g in (None, "cads", "cfg"))
    assert torch.equal(default, cads) and not torch.equal(default, cfg)
