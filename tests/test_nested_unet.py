"""The nested UNet (kaleido/nn/nested_unet.py): its two outputs, the multi-resolution loss, the zero start
around an inner UNet, dropped rows, starting the inner UNet from a checkpoint (and the errors for a wrong
one), and a nested model through training, ``kaleido.load`` and sampling. The backbone checks every
denoiser passes (shape, zero start, spec) are in tests/test_backbones.py."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

import kaleido
from kaleido.diffusion.schedule import CosineSchedule, x0_to_output
from kaleido.nn.denoiser import downsample_to
from kaleido.nn.nested_unet import NestedUNet
from kaleido.nn.unet import UNet
from tests.conftest import TINY_T5, TINY_UNET, tiny_model_kwargs
from tests.test_models import LATENT, batch_of
from tests.test_unet import inputs as unet_inputs
from tests.test_unet import perturbed

pytestmark = pytest.mark.usefixtures("single_thread")

COND_DIM, SIZE, INNER = 24, 16, 8
OUTER = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1}  # one outer level around the inner UNet at 8²
NESTED = {"class_path": "kaleido.nn.nested_unet.NestedUNet", "init_args": {"inner": asdict(TINY_UNET), **OUTER, "inner_input": "matched"}}


def nested(cond_dim: int = COND_DIM, **overrides: Any) -> NestedUNet:
    torch.manual_seed(0)
    return NestedUNet(inner=TINY_UNET, **{**OUTER, **overrides}, cond_dim=cond_dim, image_size=SIZE).eval()


def test_two_outputs_one_per_resolution() -> None:
    net = perturbed(nested(loss_weights=(1.0, 0.25)))
    x, t, cond, mask = unet_inputs(3, SIZE)
    full, low = net.training_outputs(x, t, cond, mask)
    assert (full.prediction.shape, full.weight) == (x.shape, 1.0)
    assert (low.prediction.shape, low.weight) == ((3, 3, INNER, INNER), 0.25)
    assert torch.equal(net(x, t, cond, mask), full.prediction)  # sampling runs the full-resolution output
    with pytest.raises(ValueError, match="image_size 18 is not divisible by 4: the outer levels halve it 1 times"):
        NestedUNet(inner=TINY_UNET, **OUTER, cond_dim=COND_DIM, image_size=18)
    with pytest.raises(ValueError, match="loss_weights must be"):
        nested(loss_weights=(0.0, 1.0))
    with pytest.raises(ValueError, match="inner_input must be 'matched' or 'pooled', got 'shifted'"):
        nested(inner_input="shifted")


@pytest.mark.parametrize("inner_input", ["matched", "pooled"])
def test_a_fresh_nested_unet_keeps_its_inner_unets_output(inner_input: str) -> None:
    """Zero adapters: an inner UNet loaded from a trained UNet gives that UNet's output on what it is given
    (matched: the pooled x_t rescaled, at t'; pooled: the pooled x_t at t)."""
    torch.manual_seed(1)
    unet = perturbed(UNet(**asdict(TINY_UNET), cond_dim=COND_DIM)).eval()
    net = nested(inner_input=inner_input)
    net.inner_unet.load_state_dict(unet.state_dict())
    x, t, cond, mask = unet_inputs(3, SIZE)
    uncond = torch.tensor([False, True, False])
    with torch.no_grad():
        full, low = net.training_outputs(x, t, cond, mask, uncond)
        view = net.inner_view(F.avg_pool2d(x, 2), t)
        alone = unet(view.x, view.t, cond, mask, uncond)
    assert torch.allclose(low.prediction, net.pooled_output(alone, view), atol=1e-5) and alone.abs().mean() > 1e-3
    assert (view.t is t) == (inner_input == "pooled")
    assert torch.count_nonzero(full.prediction) == 0  # the outer output head starts at zero


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_the_matched_inner_input_is_a_lone_unets_input_at_its_own_timestep(prediction: str) -> None:
    """Pooling x_t over r² pixels gives α x̄0 + (σ / r) ε̄; rescaled, it is α' x̄0 + σ' ε' with unit noise
    ε' = r ε̄ and SNR(t') = r² SNR(t) on the model's own schedule; and the inner output that predicts the
    pooled image exactly is scored as exactly the pooled target."""
    from kaleido.diffusion.schedule import CosineSchedule

    schedule, r = CosineSchedule(1000), 2
    net = nested(inner_input="matched")
    net.bind_diffusion(schedule, prediction)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, SIZE, SIZE, generator=g) * 2 - 1, torch.randn(4, 3, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 120, 500, 980])
    view = net.inner_view(F.avg_pool2d(schedule.add_noise(x0, noise, t), r), t)
    x_low, noise_unit = F.avg_pool2d(x0, r), r * F.avg_pool2d(noise, r)
    assert torch.allclose(view.x, view.alpha_inner * x_low + view.sigma_inner * noise_unit, atol=1e-5)
    snr, snr_inner = schedule.snr(t), (view.alpha_inner / view.sigma_inner).flatten().double() ** 2
    assert torch.allclose(snr_inner, r**2 * snr, rtol=1e-4)
    assert bool((view.t <= t).all()) and bool((view.t >= 0).all())  # less noise: an earlier step
    # t' lands between the steps whose ᾱ brackets the inner one; at t = 0 the inner SNR is beyond the
    # schedule's first step, and t' stays at 0
    between = schedule.alphas_cumprod[view.t.floor().long()], schedule.alphas_cumprod[view.t.ceil().long()]
    abar_inner = view.alpha_inner.flatten().double() ** 2
    assert view.t[0] == 0 and bool(((between[1] - 1e-6 <= abar_inner) & (abar_inner <= between[0] + 1e-6))[1:].all())
    exact = x0_to_output(view.x, x_low, view.alpha_inner, view.sigma_inner, prediction)  # type: ignore[arg-type]
    target = F.avg_pool2d(schedule.target(x0, noise, t, prediction), r)  # type: ignore[arg-type]
    assert torch.allclose(net.pooled_output(exact, view), target, atol=1e-3 if prediction == "eps" else 1e-4)


def test_dropped_rows_ignore_their_conditioning_at_both_resolutions() -> None:
    net = perturbed(nested())
    x, t, cond, mask = unet_inputs(3, SIZE)
    uncond = torch.tensor([True, False, True])
    with torch.no_grad():
        a = net.training_outputs(x, t, cond, mask, uncond)
        b = net.training_outputs(x, t, torch.randn_like(cond) * 3, ~mask, uncond)
    for one, other in zip(a, b, strict=True):
        assert torch.allclose(one.prediction[uncond], other.prediction[uncond], atol=1e-5)
        assert not torch.allclose(one.prediction[~uncond], other.prediction[~uncond], atol=1e-3)


def test_the_loss_is_the_weighted_sum_of_each_resolutions_mse(text_data) -> None:  # type: ignore[no-untyped-def]
    weights = (1.0, 0.25)
    denoiser = {**NESTED, "init_args": {**NESTED["init_args"], "loss_weights": weights}}
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "unet": None, "denoiser": denoiser})
    assert model.denoiser.__dict__["_diffusion"] == (model.schedule, "v")  # the model binds its own schedule
    perturbed(model.denoiser)
    batch = batch_of(text_data)
    images = batch["image"]
    with torch.no_grad():
        cond = model.condition(batch)
        loss, terms = model.diffusion_loss_terms(images, cond, torch.Generator().manual_seed(3))
        # By hand, with the same draws in the same order: t, noise, the dropped rows.
        g = torch.Generator().manual_seed(3)
        t = model.schedule.sample_timesteps(images.shape[0], images.device, g)
        noise = torch.randn(images.shape, generator=g)
        uncond = torch.rand(images.shape[0], generator=g) < model.diffusion_settings.p_uncond
        full, low = model.denoiser.training_outputs(model.schedule.add_noise(images, noise, t), t, cond.states, cond.mask, uncond)
        v = model.schedule.target(images, noise, t, "v")
        expected = {SIZE: F.mse_loss(full.prediction, v), INNER: F.mse_loss(low.prediction, F.avg_pool2d(v, 2))}
    assert terms.keys() == expected.keys() and all(torch.allclose(terms[k], expected[k]) for k in expected)
    assert torch.allclose(loss, weights[0] * expected[SIZE] + weights[1] * expected[INNER])
    assert torch.equal(downsample_to(v, SIZE), v)
    with pytest.raises(ValueError, match="cannot average-pool 16×16 to 6×6"):
        downsample_to(v, 6)


def _save_as_fit_does(model: kaleido.Kaleido, path: Path) -> Path:
    """The weights, hyperparameters and kaleido record a checkpoint of ``fit`` holds, without training."""
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_shifted_model_schedule_leaves_the_inner_unet_on_its_own() -> None:
    """With the model's SNR divided by r² (schedule_shift = the nest ratio) the pooled x_t has the plain
    schedule's SNR at t: the inner UNet, trained on the plain table, runs at t' = t. With another shift,
    t' is read off the inner table: SNR_inner(t') = r² SNR_model(t)."""
    r, t = 2, torch.tensor([0, 120, 500, 980])
    net = nested(inner_input="matched")
    pooled = torch.randn(4, 3, SIZE // r, SIZE // r)
    net.bind_diffusion(CosineSchedule(1000, shift=r), "v")
    torch.testing.assert_close(net.inner_view(pooled, t).t, t.float(), atol=1e-3, rtol=0)
    model_schedule, plain = CosineSchedule(1000, shift=3.0), CosineSchedule(1000)
    net.bind_diffusion(model_schedule, "v")
    view = net.inner_view(pooled, t)
    abar_inner = view.alpha_inner.flatten().double() ** 2
    torch.testing.assert_close(abar_inner / (1 - abar_inner), r**2 * model_schedule.snr(t), rtol=1e-3, atol=0)  # float32 α at SNR ~ 1e4
    lo, hi = plain.alphas_cumprod[view.t.floor().long()], plain.alphas_cumprod[view.t.ceil().long()]
    assert bool(((hi - 1e-6 <= abar_inner) & (abar_inner <= lo + 1e-6)).all())  # t' on the plain table


def test_the_inner_unet_starts_from_a_checkpoint_and_wrong_ones_fail_in_one_line(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    inner_model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "image_size": INNER})
    perturbed(inner_model.denoiser)
    path = _save_as_fit_does(inner_model, tmp_path / "inner.ckpt")
    # The user's path: the model's `denoiser:` block names the file; its checkpoint then stores null.
    denoiser = {**NESTED, "init_args": {**NESTED["init_args"], "inner_checkpoint": str(path)}}
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "unet": None, "denoiser": denoiser})
    for name, value in inner_model.denoiser.state_dict().items():
        assert torch.equal(model.denoiser.inner_unet.state_dict()[name], value), name
    assert model.hparams["denoiser"]["init_args"]["inner_checkpoint"] is None

    # An export of the inner run serves as well (how a trained inner model travels between machines),
    # bf16 included, and a nested UNet laid out channels-last takes it (the layout is not in the weights).
    from kaleido.export import export

    exported = export(path, tmp_path / "inner_bf16.ckpt", dtype="bfloat16")
    settings = {**asdict(TINY_UNET), "channels_last": True}
    nested_from_export = NestedUNet(**{"inner": settings, **OUTER, "inner_checkpoint": str(exported)}, cond_dim=TINY_T5.d_model, image_size=SIZE)
    for name, value in inner_model.denoiser.state_dict().items():
        assert torch.equal(nested_from_export.inner_unet.state_dict()[name], value.to(torch.bfloat16).to(value.dtype)), name
    from kaleido.checkpoint import load_prior_weights

    prior = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "image_size": INNER}).prior
    load_prior_weights(prior, exported)  # init_prior_from reads an export too
    assert torch.equal(prior.t5.shared.weight, inner_model.prior.t5.shared.weight.to(torch.bfloat16).float())

    cond_dim = TINY_T5.d_model
    dit = {"class_path": "kaleido.nn.dit.DiT", "init_args": {"patch_size": 4, "depth": 1, "hidden": 32, "heads": 2, "cond_layers": 1}}
    dit_path = _save_as_fit_does(
        kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "image_size": INNER, "unet": None, "denoiser": dit}),
        tmp_path / "dit.ckpt",
    )
    cases = [
        ({"inner_checkpoint": str(tmp_path / "gone.ckpt")}, cond_dim, "no checkpoint at .*gone.ckpt"),
        ({"inner_checkpoint": str(dit_path)}, cond_dim, "holds a kaleido.nn.dit.DiT denoiser; the nested UNet's inner model is a kaleido.nn.unet.UNet"),
        ({"inner_checkpoint": str(path), "inner": {**asdict(TINY_UNET), "base_channels": 8}}, cond_dim,
         "other settings than `inner`: base_channels 8 expected, 16 found"),
        ({"inner_checkpoint": str(path), "channel_mult": (1,)}, cond_dim, "was trained at 8²; this nested UNet's inner model runs at 16²"),
        ({"inner_checkpoint": str(path), "inner_schedule_shift": 2.0}, cond_dim,
         "trained with diffusion.schedule_shift 1; the nested UNet's inner_schedule_shift is 2: set it to 1"),
        ({"inner_schedule_shift": 0.0}, cond_dim, "inner_schedule_shift must be > 0"),
        ({"inner_checkpoint": str(path)}, COND_DIM, r"cond_proj.weight has shape \[64, 32\], expected \[64, 24\] \(the conditioning width"),
    ]
    for overrides, width, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            NestedUNet(**{"inner": TINY_UNET, **OUTER, **overrides}, cond_dim=width, image_size=SIZE)
        assert "\n" not in str(error.value)


def test_residual_on_inner_starts_the_full_output_at_the_inner_block_means() -> None:
    """With the output head at zero, the full-resolution prediction is the inner one repeated over each
    2 × 2 block: its block means are exactly what the inner loss scores, the rest is the outer head's."""
    net = nested(residual_on_inner=True)
    net.inner_unet.load_state_dict(perturbed(UNet(**asdict(TINY_UNET), cond_dim=COND_DIM)).state_dict())
    x, t, cond, mask = unet_inputs(3, SIZE)
    with torch.no_grad():
        full, low = net.training_outputs(x, t, cond, mask)
        assert low.prediction.abs().mean() > 1e-3
        assert torch.allclose(full.prediction, low.prediction.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)
        assert torch.allclose(downsample_to(full.prediction, INNER), low.prediction, atol=1e-6)
        assert torch.equal(net(x, t, cond, mask), full.prediction)
        plain = nested()
        plain.load_state_dict(net.state_dict())
        assert torch.count_nonzero(plain(x, t, cond, mask)) == 0  # the same weights without it: MDM's zero start
        trained_head = perturbed(net)  # a trained head adds its own output on top of the blocks
        full_after = trained_head(x, t, cond, mask)
        low_after = trained_head.training_outputs(x, t, cond, mask)[1].prediction
        head = trained_head.out(trained_head.features(x, t, cond, mask, None)[0])
    assert torch.allclose(full_after, head + F.interpolate(low_after, scale_factor=2, mode="nearest"), atol=1e-5)
    assert net.spec()["init_args"]["residual_on_inner"] is True


def test_a_frozen_inner_unet_gets_no_gradient() -> None:
    net = perturbed(nested(freeze_inner=True)).train()
    x, t, cond, mask = unet_inputs(3, SIZE)
    sum(out.prediction.square().mean() for out in net.training_outputs(x, t, cond, mask)).backward()
    assert all(p.grad is None for p in net.inner_unet.parameters())
    assert net.in_adapter.weight.grad.abs().sum() > 0 and net.input_conv.weight.grad.abs().sum() > 0  # the outer levels train


def test_a_tiny_nested_model_trains_logs_each_resolution_loads_and_samples(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**tiny_model_kwargs(), "unet": None, "denoiser": NESTED})
    trainer = Trainer(max_steps=2, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=text_data)
    assert {"train/loss_diff", f"train/loss_diff_{SIZE}px", f"train/loss_diff_{INNER}px"} <= trainer.callback_metrics.keys()
    path = tmp_path / "nested.ckpt"
    trainer.save_checkpoint(path)
    loaded = kaleido.load(path)
    assert isinstance(loaded.denoiser, NestedUNet) and loaded.denoiser.spec() == model.denoiser.spec()
    a = model.generate(["a circle"], latents=[LATENT], seed=1).images
    b = loaded.generate(["a circle"], latents=[LATENT], seed=1).images
    assert a.shape == (1, 3, SIZE, SIZE) and torch.allclose(a, b, atol=1e-6)
