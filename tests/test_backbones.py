"""Denoiser backbones chosen by config (kaleido/nn/denoiser.py): every backbone's output shape (UNet, DiT,
nested UNet), the null-token path, the DiT's adaLN-Zero start, a tiny DiT model through training, kaleido.load and
sampling, and checkpoints written before the denoiser became pluggable."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import kaleido
from kaleido.metrics.attention import cross_attention_shares
from kaleido.nn.denoiser import Denoiser, build_denoiser
from kaleido.nn.dit import DiT
from kaleido.nn.unet import UNet
from tests.conftest import TINY_UNET, tiny_model_kwargs
from tests.test_models import LATENT, _fit, batch_of
from tests.test_unet import inputs as unet_inputs
from tests.test_unet import perturbed

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = Path(__file__).parent / "configs"
COND_DIM, SIZE = 24, 16
TINY_DIT = {"size": "S", "patch_size": 4, "depth": 2, "hidden": 32, "heads": 2, "cond_layers": 1}
BACKBONES: dict[str, dict[str, Any]] = {
    "unet": {"class_path": "kaleido.nn.unet.UNet", "init_args": asdict(TINY_UNET)},
    "dit_p4": {"class_path": "kaleido.nn.dit.DiT", "init_args": TINY_DIT},
    "dit_p2_qk_learned": {"class_path": "kaleido.nn.dit.DiT", "init_args": {**TINY_DIT, "patch_size": 2, "qk_norm": True, "pos_embed": "learned"}},
    "nested_unet": {  # one outer level at 16² around the tiny UNet at 8² (tests/test_nested_unet.py has the rest)
        "class_path": "kaleido.nn.nested_unet.NestedUNet",
        "init_args": {"inner": asdict(TINY_UNET), "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1},
    },
}


def tiny(name: str) -> Denoiser:
    torch.manual_seed(0)
    return build_denoiser(BACKBONES[name], cond_dim=COND_DIM, image_size=SIZE).eval()


def inputs(b: int = 3, length: int = 6) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return unet_inputs(b, SIZE, length)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_output_shape_zero_start_and_spec_round_trip(name: str) -> None:
    net = tiny(name)
    x, t, cond, mask = inputs()
    assert net(x, t, cond, mask).shape == x.shape
    assert torch.count_nonzero(net(x, t, cond, mask)) == 0  # zero-initialised output: predicts the mean target
    rebuilt = build_denoiser(net.spec(), cond_dim=COND_DIM, image_size=SIZE)
    assert type(rebuilt) is type(net) and rebuilt.spec() == net.spec()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_dropped_rows_ignore_their_conditioning(name: str) -> None:
    net = perturbed(tiny(name))
    x, t, cond, mask = inputs()
    uncond = torch.tensor([True, False, True])
    other = torch.randn_like(cond) * 3
    with torch.no_grad():
        a, b = net(x, t, cond, mask, uncond), net(x, t, other, ~mask, uncond)
    assert torch.allclose(a[uncond], b[uncond], atol=1e-5)  # only the null token is left to a dropped row
    assert not torch.allclose(a[~uncond], b[~uncond], atol=1e-3)
    with torch.no_grad():  # dropped = every conditioning token masked: the same learned null conditioning
        assert torch.allclose(net(x, t, cond, torch.zeros_like(mask))[uncond], a[uncond], atol=1e-5)


def test_a_fresh_dit_block_is_the_identity() -> None:
    net = tiny("dit_p2_qk_learned")
    x, t, cond, mask = inputs()
    context, context_mask, pooled = net.encode_condition(cond, mask)
    tokens = torch.randn(3, (SIZE // 2) ** 2, 32)
    for block in net.blocks:
        assert torch.equal(block(tokens, pooled, context, context_mask), tokens)  # adaLN-Zero gates and cross-attention output at 0
    (net(x, t, cond, mask) - x).square().mean().backward()  # the zero-initialised output layer learns first
    assert net.final_layer.linear.weight.grad.abs().sum() > 0


def test_dit_sizes_and_bad_input_say_what_is_accepted() -> None:
    assert [(n.depth, n.hidden, n.heads) for n in (DiT(size=s, patch_size=8, cond_dim=8, image_size=16) for s in "SB")] == [
        (12, 384, 6), (12, 768, 12),
    ]
    with pytest.raises(ValueError, match="image_size 30 is not divisible by patch_size 4"):
        DiT(patch_size=4, cond_dim=8, image_size=30)
    with pytest.raises(ValueError, match="size 'XL' is not a preset; accepted: S, B, L"):
        DiT(size="XL", cond_dim=8, image_size=16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden 30 must be divisible by heads"):
        DiT(hidden=30, heads=4, cond_dim=8, image_size=16)
    with pytest.raises(ValueError, match="image_size 30 is not divisible by 4, the UNet's downsampling"):
        UNet(channel_mult=(1, 2, 2), cond_dim=8, image_size=30)
    net = tiny("dit_p4")
    with pytest.raises(ValueError, match=r"built for 16×16 images .* got 32×32"):
        net(torch.zeros(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, 2, COND_DIM), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="given by the model"):
        build_denoiser({"class_path": "kaleido.nn.dit.DiT", "init_args": {"image_size": 16}}, cond_dim=8, image_size=16)
    with pytest.raises(TypeError, match="not a subclass of kaleido.nn.denoiser.Denoiser"):
        build_denoiser({"class_path": "torch.nn.Linear"}, cond_dim=8, image_size=16)


def test_a_tiny_dit_model_trains_saves_loads_and_samples(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**tiny_model_kwargs(), "unet": None, "denoiser": BACKBONES["dit_p4"]}
    with pytest.raises(ValueError, match="give the denoiser once"):
        kaleido.Kaleido(tokenizer=text_data.tokenizer, **{**kwargs, "unet": TINY_UNET})
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **kwargs)
    path = _fit(model, text_data, tmp_path)
    stored = torch.load(path, weights_only=True)
    assert stored["hyper_parameters"]["denoiser"] == model.denoiser.spec()
    loaded = kaleido.load(path)
    assert isinstance(loaded.denoiser, DiT) and loaded.denoiser.spec() == model.denoiser.spec()
    a = model.generate(["a circle"], latents=[LATENT], seed=1).images
    b = loaded.generate(["a circle"], latents=[LATENT], seed=1).images
    assert a.shape == (1, 3, 16, 16) and torch.allclose(a, b, atol=1e-6)
    shares = cross_attention_shares(loaded, batch_of(text_data), timesteps=(500,))[500]  # the diagnostic reads any backbone
    assert len(shares.layers) == 2 and shares.null + shares.condition + shares.latent == pytest.approx(1.0, abs=1e-5)


def _as_before_issue_17(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as the code before issue 17 wrote it: the UNet under ``unet.`` and
    ``hyper_parameters`` with the ``unet`` settings and no ``denoiser``."""

    def old(key: str) -> str:
        return "unet." + key.removeprefix("denoiser.") if key.startswith("denoiser.") else key

    out = dict(checkpoint)
    for key in ("state_dict", "current_model_state"):
        out[key] = {old(k): v for k, v in checkpoint[key].items()}
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "denoiser"}
    out["hyper_parameters"] = {**hparams, "unet": asdict(TINY_UNET)}
    return out


def test_a_unet_checkpoint_written_before_issue_17_loads(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lightning.pytorch import Trainer

    from kaleido.callbacks import EMA

    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    trainer = Trainer(max_steps=2, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[EMA(decay=0.5)])
    trainer.fit(model, datamodule=text_data)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    new = torch.load(tmp_path / "new.ckpt", weights_only=True)
    old = _as_before_issue_17(new)
    assert "unet.cond_proj.weight" in old["state_dict"] and not any(k.startswith("denoiser.") for k in old["state_dict"])
    torch.save(old, tmp_path / "old.ckpt")
    for weights, key in (("averaged", "state_dict"), ("trained", "current_model_state")):
        loaded = kaleido.load(tmp_path / "old.ckpt", weights=weights)
        assert isinstance(loaded.denoiser, UNet) and loaded.denoiser.init_args() == {"in_channels": 3, **asdict(TINY_UNET)}
        for name, value in loaded.state_dict().items():
            assert torch.equal(value, new[key][name]), name
    # Resuming an old run goes through the same load_state_dict: strict, every key found.
    model.load_state_dict(old["state_dict"])


def test_one_yaml_block_switches_the_backbone() -> None:
    """Through the CLI, `denoiser:` (class_path + init_args, checked by jsonargparse) builds the DiT, and
    the checkpoint's hyperparameters hold its spec; `unet:` beside it is refused."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from kaleido.cli import KaleidoCLI

    dit = ["--model.init_args.denoiser", "kaleido.nn.dit.DiT", "--model.init_args.denoiser.init_args.depth", "2",
           "--model.init_args.denoiser.init_args.hidden", "32", "--model.init_args.denoiser.init_args.heads", "2"]

    def cli(*args: str) -> KaleidoCLI:
        return KaleidoCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                          run=False, save_config_callback=None, args=["--config", str(CONFIGS / "tiny_kaleido.yaml"), *args])

    model = cli("--model.init_args.unet", "null", *dit).model
    assert isinstance(model.denoiser, DiT) and model.hparams["unet"] is None
    assert model.hparams["denoiser"] == {"class_path": "kaleido.nn.dit.DiT", "init_args": {**model.denoiser.init_args(), "depth": 2, "hidden": 32}}
    with pytest.raises(ValueError, match="give the denoiser once"):
        cli(*dit)
