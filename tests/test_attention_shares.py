"""Cross-attention shares (kaleido/metrics/attention.py): the recomputed attention is the one the layer
applies, the shares of null, c and z sum to one, and a model without z puts nothing on z."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kaleido
from kaleido.metrics.attention import cross_attention_shares
from kaleido.nn.attention import MultiHeadAttention
from tests.conftest import tiny_model_kwargs
from tests.test_models import batch_of


@pytest.mark.parametrize("qk_norm", [False, True])
def test_weights_are_the_attention_the_layer_applies(qk_norm: bool) -> None:
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, num_heads=4, context_dim=8, qk_norm=qk_norm)
    if qk_norm:  # a learned scale away from 1, so that a missing norm would show
        torch.nn.init.uniform_(layer.q_norm.weight, 0.5, 2.0)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    mask = torch.tensor([[True] * 7, [True, True, True, False, False, False, False]])
    probs = layer.weights(x, context, mask)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5)) and (probs[1, ..., 3:] == 0).all()
    _, _, values = layer.heads(x, context)
    rebuilt = layer.proj((probs @ values).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(rebuilt, layer(x, context=context, mask=mask), atol=1e-6)


def test_qk_norm_adds_parameters_only_when_on(text_data) -> None:  # type: ignore[no-untyped-def]
    """Off by default, so checkpoints of earlier models keep their keys; on, every attention layer of
    the denoiser (self, cross and the conditioning transformer) normalises queries and keys."""
    plain = set(MultiHeadAttention(16, 4).state_dict())
    normed = set(MultiHeadAttention(16, 4, qk_norm=True).state_dict())
    assert normed - plain == {"q_norm.weight", "k_norm.weight"} and not plain - normed
    kwargs = tiny_model_kwargs()
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**kwargs, "unet": replace(kwargs["unet"], qk_norm=True)})
    attentions = [m for m in model.denoiser.modules() if isinstance(m, MultiHeadAttention)]
    norms = [m for m in model.denoiser.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * len(attentions) > 0


def test_shares_sum_to_one_and_the_baseline_has_no_latent(text_data, baseline_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()).train()
    shares = cross_attention_shares(model, batch_of(text_data), timesteps=(100, 900))
    assert list(shares) == [100, 900] and model.training  # the model's mode is restored
    blocks = sum(name.endswith("cross_attn") for name, _ in model.denoiser.named_modules())
    for step in shares.values():
        assert step.null + step.condition + step.latent == pytest.approx(1.0, abs=1e-5)
        assert len(step.layers) == blocks == 4 and all(sum(v) == pytest.approx(1.0, abs=1e-5) for v in step.layers.values())
        assert step.latent > 0.2  # an untrained model attends about evenly: z holds most of the tokens

    baseline = kaleido.DiffusionModel(tokenizer=baseline_data.tokenizer, **tiny_model_kwargs())
    only_c = cross_attention_shares(baseline, batch_of(baseline_data), timesteps=(500,))[500]
    assert only_c.latent == 0.0 and only_c.null + only_c.condition == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="timesteps must be non-empty"):
        cross_attention_shares(baseline, batch_of(baseline_data), timesteps=(5000,))
