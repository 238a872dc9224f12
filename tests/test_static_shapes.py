"""Static batch shapes (``pad_to_limits``) and the compiled training path (``compile: true``)."""

import copy

import pytest
import torch

import kaleido
from kaleido.data.collate import Collate
from kaleido.tokenizer import SequenceTooLongError
from tests.conftest import tiny_datamodule, tiny_model_kwargs


def items_of(data, n=4):  # type: ignore[no-untyped-def]
    dataset = data.dataset("train")
    return [dataset[i] for i in range(n)]


def test_padding_to_the_limits_gives_one_shape_and_keeps_every_token(text_data) -> None:  # type: ignore[no-untyped-def]
    tok = text_data.tokenizer
    items = items_of(text_data)
    loose, static = Collate(tok)(items), Collate(tok, pad_to_limits=True)(items)
    assert static["condition_ids"].shape == (4, tok.max_condition_length)
    assert static["latent_ids"].shape == (4, tok.max_latent_length)
    for key in ("condition", "latent"):
        ids, mask = loose[f"{key}_ids"], loose[f"{key}_mask"]
        width = ids.shape[1]
        assert torch.equal(static[f"{key}_ids"][:, :width], ids)
        assert torch.equal(static[f"{key}_mask"][:, :width], mask)
        assert not static[f"{key}_mask"][:, width:].any()


def test_padding_refuses_a_sequence_longer_than_the_length(text_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SequenceTooLongError, match="padded length 2"):
        text_data.tokenizer.pad([[5, 6, 7]], length=2)


def test_the_loss_does_not_depend_on_padding(text_data, single_thread) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()).eval()
    items = items_of(text_data)
    losses = []
    for static in (False, True):
        batch = Collate(text_data.tokenizer, pad_to_limits=static)(items)
        cond = model.condition(batch)
        diffusion = model.diffusion_loss(batch["image"], cond, torch.Generator().manual_seed(0))
        losses.append(torch.stack([diffusion, cond.metrics["nll"]]))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)


def test_the_data_module_passes_pad_to_limits_to_its_loaders() -> None:
    data = tiny_datamodule(pad_to_limits=True)
    batch = next(iter(data.train_dataloader()))
    assert batch["latent_ids"].shape[1] == data.tokenizer.max_latent_length


def test_only_training_steps_use_the_compiled_denoiser(text_data, monkeypatch, single_thread) -> None:  # type: ignore[no-untyped-def]
    calls = {"compile": 0, "compiled_forward": 0}

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper; counts its use
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls["compiled_forward"] += 1
            return self.module(*args, **kwargs)

        def __len__(self) -> int:  # as torch.compile's wrapper of a T5Stack: `wrapper or default` must not be used
            raise TypeError("T5Stack does not support len()")

    def fake_compile(module, dynamic=None, mode=None):  # type: ignore[no-untyped-def]
        calls["compile"] += 1
        assert dynamic is False and mode == "default"  # one static shape: never compile a dynamic-shape graph
        return Compiled(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    plain = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, compile=True, **tiny_model_kwargs())
    assert calls["compile"] == 0  # built on first use: the EMA's deepcopy of the module sees no wrapper
    copy.deepcopy(model)
    batch = Collate(text_data.tokenizer, pad_to_limits=True)(items_of(text_data))
    model.train()
    model.diffusion_loss(batch["image"], model.condition(batch)).backward()
    model.diffusion_loss(batch["image"], model.condition(batch))
    # The UNet, the prior's encoder and the prior (its decoder, given the encoder states), each once.
    assert calls == {"compile": 3, "compiled_forward": 6}
    model.generate(["a circle"], num_steps=2)
    model.eval()
    model.diffusion_loss(batch["image"], model.condition(batch))
    assert calls["compiled_forward"] == 6  # sampling and validation stay eager
    assert model.state_dict().keys() == plain.state_dict().keys()


def test_compiled_sampling_pads_the_conditioning_and_matches_eager(text_data, monkeypatch, single_thread) -> None:  # type: ignore[no-untyped-def]
    seen_lengths: list[int] = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper; records the shapes it sees
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x, t, cond, cond_mask, uncond):  # type: ignore[no-untyped-def]
            seen_lengths.append(cond.shape[1])
            return self.module(x, t, cond, cond_mask, uncond)

    monkeypatch.setattr(torch, "compile", lambda module, dynamic=None, mode=None: Compiled(module))
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()).eval()
    conditions = ["a circle", "a square"]
    eager = model.generate(conditions, num_steps=3, cfg_scale=3.0, seed=1)
    assert not seen_lengths
    compiled = model.generate(conditions, num_steps=3, cfg_scale=3.0, seed=1, compile=True)
    # Padding to the tokenizer's limits gives the compiled graph one shape and changes no pixel.
    assert set(seen_lengths) == {model.conditioning_limit}
    assert compiled.latent_texts == eager.latent_texts
    torch.testing.assert_close(compiled.images, eager.images, atol=1e-5, rtol=0)
    model.sampling.compile = True  # the checkpointed default is used when generate is not told
    model.generate(["a triangle"], num_steps=2, seed=2)
    assert len(seen_lengths) == 3 + 2  # one batched (conditional + unconditional) call per step


def test_compile_takes_a_torch_compile_mode_by_name(text_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``compile: reduce-overhead`` (CUDA graphs) reaches torch.compile; each mode is its own wrapper; an
    unknown mode fails in one line when the model is built."""
    from kaleido.modules.settings import compile_mode

    modes: list[str | None] = []
    monkeypatch.setattr(torch, "compile", lambda module, dynamic=None, mode=None: modes.append(mode) or module)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, compile="reduce-overhead", **tiny_model_kwargs())
    model.train()
    model.training_network("denoiser")
    model.network("denoiser", "reduce-overhead")  # cached: not compiled again
    model.network("denoiser", True)
    model.network("denoiser", False)
    assert modes == ["reduce-overhead", "default"]
    assert [compile_mode(c) for c in (False, True, "max-autotune")] == [None, "default", "max-autotune"]
    with pytest.raises(ValueError, match="compile must be true, false or one of .*'reduce-overhead'.*got 'fast'"):
        kaleido.Kaleido(tokenizer=text_data.tokenizer, compile="fast", **tiny_model_kwargs())
