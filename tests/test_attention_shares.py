"""Cross-attention shares (kaleido/metrics/attention.py): the recomputed attention is the one the layer
applies, the shares of null, c and z sum to one, and a model without z puts nothing on z."""

from __future__ import annotations

import pytest
import torch

import kaleido
from kaleido.metrics.attention import _attention_probabilities, cross_attention_shares
from kaleido.nn.attention import MultiHeadAttention
from tests.conftest import tiny_model_kwargs
from tests.test_models import batch_of


def test_recomputed_probabilities_give_the_layer_output() -> None:
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, num_heads=4, context_dim=8)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    mask = torch.tensor([[True] * 7, [True, True, True, False, False, False, False]])
    probs = _attention_probabilities(layer, x, context, mask)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5)) and (probs[1, ..., 3:] == 0).all()
    values = layer.to_kv(context).view(2, 7, 2, 4, 4)[:, :, 1].transpose(1, 2)
    rebuilt = layer.proj((probs @ values).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(rebuilt, layer(x, context=context, mask=mask), atol=1e-6)


def test_shares_sum_to_one_and_the_baseline_has_no_latent(text_data, baseline_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()).train()
    shares = cross_attention_shares(model, batch_of(text_data), timesteps=(100, 900))
    assert list(shares) == [100, 900] and model.training  # the model's mode is restored
    blocks = sum(name.endswith("cross_attn") for name, _ in model.unet.named_modules())
    for step in shares.values():
        assert step.null + step.condition + step.latent == pytest.approx(1.0, abs=1e-5)
        assert len(step.layers) == blocks == 4 and all(sum(v) == pytest.approx(1.0, abs=1e-5) for v in step.layers.values())
        assert step.latent > 0.2  # an untrained model attends about evenly: z holds most of the tokens

    baseline = kaleido.DiffusionModel(tokenizer=baseline_data.tokenizer, **tiny_model_kwargs())
    only_c = cross_attention_shares(baseline, batch_of(baseline_data), timesteps=(500,))[500]
    assert only_c.latent == 0.0 and only_c.null + only_c.condition == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="timesteps must be non-empty"):
        cross_attention_shares(baseline, batch_of(baseline_data), timesteps=(5000,))
