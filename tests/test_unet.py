"""UNet: shapes, zero-init, gradient flow, and the masking contracts of the conditioning path."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch
from torch import Tensor, nn

from kaleido.diffusion.guidance import classifier_free_guidance, conditioned
from kaleido.nn.attention import MultiHeadAttention
from kaleido.nn.unet import UNet

COND_DIM = 24
M = TypeVar("M", bound=nn.Module)
ATOL = 1e-5


def small_unet(**overrides: object) -> UNet:
    kw: dict = dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2),
                    num_heads=2, cond_dim=COND_DIM, cond_layers=2)
    kw.update(overrides)
    torch.manual_seed(0)
    return UNet(**kw).eval()


def perturbed(model: M) -> M:
    """Nudge every parameter so zero-initialised branches (and the output) become active."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model() -> UNet:
    return perturbed(small_unet())


def inputs(b: int = 2, size: int = 32, length: int = 6, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    cond = torch.randn(b, length, COND_DIM, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, length // 2 :] = False  # row 0 is padded
    return x, t, cond, mask


@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_and_zero_init(size: int) -> None:
    net = small_unet()
    x, t, cond, mask = inputs(size=size)
    out = net(x, t, cond, mask)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    assert net.num_params == sum(p.numel() for p in net.parameters()) > 0
    assert perturbed(net)(x, t, cond, mask).abs().mean() > 1e-3


def test_gradient_reaches_every_parameter() -> None:
    net = perturbed(small_unet()).train()
    x, t, cond, mask = inputs(b=3)
    uncond = torch.tensor([False, False, True])  # mixed batch, as in p_uncond training
    net(x, t, cond, mask, uncond).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert any("cross_attn" in n for n, _ in net.named_parameters()) and "null_token" in dict(net.named_parameters())


def test_padding_invariance(model: UNet) -> None:
    x, t, cond, mask = inputs()
    ref = model(x, t, cond, mask)
    g = torch.Generator().manual_seed(5)
    # Overwrite the existing padded slots with garbage and append 4 more masked garbage tokens.
    garbage = torch.where(mask[..., None], cond, 100 * torch.randn(cond.shape, generator=g))
    longer = torch.cat([garbage, torch.randn(2, 4, COND_DIM, generator=g) * 100], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(x, t, longer, longer_mask), ref, rtol=0, atol=ATOL)
    longer[~longer_mask] = float("nan")  # even non-finite padding cannot leak
    torch.testing.assert_close(model(x, t, longer, longer_mask), ref, rtol=0, atol=ATOL)


def test_uncond_rows_ignore_condition(model: UNet) -> None:
    x, t, cond, mask = inputs()
    uncond = torch.ones(2, dtype=torch.bool)
    a = model(x, t, cond, mask, uncond)
    other = torch.randn(2, 9, COND_DIM, generator=torch.Generator().manual_seed(7))
    b = model(x, t, other, torch.rand(2, 9, generator=torch.Generator().manual_seed(8)) > 0.3, uncond)
    c = model(x, t, cond[:, :0], mask[:, :0])  # empty sequence: only the null token
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    torch.testing.assert_close(a, c, rtol=0, atol=ATOL)
    cond_out = model(x, t, cond, mask)
    assert (cond_out - a).abs().max() > 1e-3  # the condition does matter when kept


def test_rows_are_independent(model: UNet) -> None:
    x, t, cond, mask = inputs()
    uncond = torch.tensor([False, True])
    both = model(x, t, cond, mask, uncond)
    for i in range(2):
        alone = model(x[i : i + 1], t[i : i + 1], cond[i : i + 1], mask[i : i + 1], uncond[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], alone, rtol=0, atol=ATOL)


def test_timestep_is_continuous(model: UNet) -> None:
    x, t, cond, mask = inputs()
    out_long = model(x, t, cond, mask)
    torch.testing.assert_close(model(x, t.float(), cond, mask), out_long, rtol=0, atol=ATOL)
    assert (model(x, t.float() + 0.5, cond, mask) - out_long).abs().max() > 1e-5


def test_guidance_with_unet(model: UNet) -> None:
    x, t, cond, mask = inputs()
    fn = conditioned(model, cond, mask)
    uncond_out = model(x, t, cond, mask, torch.ones(2, dtype=torch.bool))
    cond_out = model(x, t, cond, mask)
    torch.testing.assert_close(classifier_free_guidance(fn, 0.0)(x, t), uncond_out, rtol=0, atol=ATOL)
    torch.testing.assert_close(classifier_free_guidance(fn, 1.0)(x, t), cond_out, rtol=0, atol=ATOL)
    expected = uncond_out + 3.0 * (cond_out - uncond_out)
    torch.testing.assert_close(classifier_free_guidance(fn, 3.0)(x, t), expected, rtol=0, atol=1e-4)


def test_bf16_autocast_runs(model: UNet) -> None:
    x, t, cond, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, cond, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_attention_key_padding_mask() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, context_dim=5)
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    full = attn(x, ctx, mask)
    torch.testing.assert_close(full[:1], attn(x[:1], ctx[:1, :2]), rtol=0, atol=1e-6)
    assert (attn(x, ctx)[0] - full[0]).abs().max() > 1e-4


def test_invalid_config_and_input() -> None:
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channel_mult=(1, 2), attention_levels=(2,))
    net = small_unet()
    x, t, cond, mask = inputs(size=30)
    with pytest.raises(ValueError, match="divisible"):
        net(x, t, cond, mask)
