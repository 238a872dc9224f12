"""Speed without other numbers (issue 18): norms that hand the next layer bf16 under autocast, and the UNet's
channels-last layout. Each is checked against the plain computation it replaces."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from kaleido.nn.denoiser import build_denoiser
from kaleido.nn.norms import GroupNorm, LayerNorm
from kaleido.nn.unet import UNet
from tests.conftest import TINY_UNET
from tests.test_backbones import BACKBONES, COND_DIM, SIZE, inputs
from tests.test_unet import perturbed

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(kind: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours, plain = (GroupNorm(4, 16), nn.GroupNorm(4, 16)) if kind == "group" else (LayerNorm(16), nn.LayerNorm(16))
    nn.init.normal_(ours.weight)
    nn.init.normal_(ours.bias)
    plain.load_state_dict(ours.state_dict())  # the same parameters under the same names
    return ours, plain


@pytest.mark.parametrize("kind", ["group", "layer"])
def test_a_norm_returns_bf16_under_autocast_and_is_nn_s_norm_outside(kind: str) -> None:
    ours, plain = _pair(kind)
    x = torch.randn(3, 16, 5, 5) * 4 + 2 if kind == "group" else torch.randn(3, 7, 16) * 4 + 2
    assert torch.equal(ours(x), plain(x))  # no autocast: exactly nn's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, reference = ours(x), plain(x)
    assert reference.dtype == torch.float32 and y.dtype == torch.bfloat16  # autocast's own norm returns float32
    assert torch.equal(y, reference.to(torch.bfloat16))  # a float32 input: normalised in float32, only the output rounded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.to(torch.bfloat16))  # a bf16 input (a convolution's output): the bf16 kernel, float32 statistics
    assert (y.float() - reference).abs().max() <= reference.abs().max() * 2**-6  # the input's and the output's rounding
    y.float().square().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32 and ours.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["group", "layer"])
def test_a_float32_input_far_from_zero_is_rounded_only_at_the_output(kind: str) -> None:
    # Rounding a float32 input to bf16 before subtracting its mean would cost precision as |mean| / std grows.
    ours, plain = _pair(kind)
    x = (torch.randn(3, 16, 5, 5) if kind == "group" else torch.randn(3, 7, 16)) + 200.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ours(x), plain(x).to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["group", "layer"])
def test_under_fp16_autocast_a_norm_is_nn_s_norm(kind: str) -> None:
    # float16 tops out at 65504: autocast's float32 norm is what keeps a large activation finite.
    ours, plain = _pair(kind)
    x = (torch.randn(3, 16, 5, 5) if kind == "group" else torch.randn(3, 7, 16)) * 1e5
    with torch.autocast("cpu", dtype=torch.float16):
        y, reference = ours(x), plain(x)
    assert y.dtype == reference.dtype and torch.equal(y, reference) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_under_autocast_no_norm_hands_float32_to_the_next_layer(name: str) -> None:
    # A float32 norm output makes everything up to the next matmul float32 element-wise work, then a cast.
    net = build_denoiser(BACKBONES[name], cond_dim=COND_DIM, image_size=SIZE)
    dtypes: dict[str, torch.dtype] = {}
    for module_name, module in net.named_modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm):
            module.register_forward_hook(lambda m, args, out, key=module_name: dtypes.__setitem__(key, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(*inputs())
    assert dtypes and set(dtypes.values()) == {torch.bfloat16}, {k: v for k, v in dtypes.items() if v != torch.bfloat16}


@pytest.mark.parametrize("name", ["unet", "nested_unet"])
def test_channels_last_changes_the_layout_not_the_output(name: str) -> None:
    spec = BACKBONES[name]
    settings = spec["init_args"]
    wide = {**settings, "inner": {**settings["inner"], "channels_last": True}} if name == "nested_unet" else {**settings, "channels_last": True}
    torch.manual_seed(0)
    plain = perturbed(build_denoiser(spec, cond_dim=COND_DIM, image_size=SIZE).eval())
    nhwc = build_denoiser({**spec, "init_args": wide}, cond_dim=COND_DIM, image_size=SIZE).eval()
    nhwc.load_state_dict(plain.state_dict())  # a checkpoint of either layout loads into the other
    convs = [m.weight for m in nhwc.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous() for w in convs if w.shape[-1] > 1)  # a 1×1 kernel is both layouts at once
    x, t, cond, mask = inputs()
    out = nhwc(x, t, cond, mask)
    assert out.is_contiguous()  # what the loss and the samplers get is laid out as before
    torch.testing.assert_close(out, plain(x, t, cond, mask), rtol=1e-4, atol=1e-5)
    stored = nhwc.spec()["init_args"]
    assert (stored["inner"] if name == "nested_unet" else stored)["channels_last"] is True  # a checkpoint keeps the layout
    for output in nhwc.training_outputs(x, t, cond, mask):
        assert output.prediction.is_contiguous()


def test_a_channels_last_unet_trains_its_weights_in_their_layout() -> None:
    torch.manual_seed(0)
    net = perturbed(UNet(**asdict(replace(TINY_UNET, channels_last=True)), cond_dim=COND_DIM, image_size=SIZE))  # no zero output head
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, t, cond, mask = inputs()
    before = net.input_conv.weight.detach().clone()
    net(x, t, cond, mask).square().mean().backward()
    assert net.input_conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    optimizer.step()
    assert not torch.equal(net.input_conv.weight, before)
    assert net.input_conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("before", [False, True])
def test_a_run_resumed_with_the_other_layout_updates_as_foreach_adam_does(before: bool, text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The checkpoint's Adam moments keep the layout they were saved in. Foreach Adam reads them by index
    # whatever their layout; fused Adam needs its parameters' layout (on the CPU it misread them: 0.03 off
    # after two steps at lr 1e-2). Resumed in the other layout, both must give the same weights.
    from lightning.pytorch import Trainer

    import kaleido
    from kaleido.modules.settings import OptimizerSettings
    from tests.conftest import tiny_model_kwargs

    def model(channels_last: bool, fused: bool) -> kaleido.Kaleido:
        torch.manual_seed(0)
        settings = {**tiny_model_kwargs(), "unet": replace(TINY_UNET, channels_last=channels_last)}
        return kaleido.Kaleido(tokenizer=text_data.tokenizer, optimizer=OptimizerSettings(lr=1e-2, warmup_steps=1, fused=fused), **settings)

    def fit(module: kaleido.Kaleido, steps: int, ckpt_path: str | None = None) -> Trainer:
        trainer = Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
        torch.manual_seed(1)
        trainer.fit(module, datamodule=text_data, ckpt_path=ckpt_path)
        return trainer

    fit(model(before, fused=True), 2).save_checkpoint(tmp_path / "two.ckpt")
    fused, foreach = model(not before, fused=True), model(not before, fused=False)
    trainer = fit(fused, 4, str(tmp_path / "two.ckpt"))
    fit(foreach, 4, str(tmp_path / "two.ckpt"))
    conv = fused.denoiser.input_conv.weight
    assert trainer.optimizers[0].state[conv]["exp_avg"].stride() == conv.stride()
    for (name, a), b in zip(fused.state_dict().items(), foreach.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
