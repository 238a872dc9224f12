"""The VQ image tokenizer (quantiser maths, network, LightningModule through the CLI) and the
``visual_token`` latent type built on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import kaleido
from kaleido.__main__ import main
from kaleido.latents import LatentParseError, build_latent_type
from kaleido.latents.visual_token import VisualTokenLatent
from kaleido.modules.vq import VQTokenizer, perplexity
from kaleido.nn.vqvae import VQVAE, VectorQuantizer, VQSettings, load_vqvae
from kaleido.shapes.datamodule import ShapesDataModule
from kaleido.shapes.scenes import ShapesConfig
from kaleido.tokenizer import KaleidoTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "configs" / "tiny_vq.yaml"
# Must match tests/configs/tiny_vq.yaml.
TINY_VQ = VQSettings(codebook_size=32, code_dim=8, downsample=4, channels=8, max_channels=16, num_res_blocks=1, dead_code_steps=10)
TINY_SHAPES = ShapesConfig(resolution=16, max_objects=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny convolutions gain nothing from a second thread, and OpenMP's spinning slows them by an
    # order of magnitude when the other core is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quantizer_with(codebook: torch.Tensor, dead_code_steps: int = 100) -> VectorQuantizer:
    """A quantiser holding ``codebook``, every code live (as if trained) with unit mass."""
    q = VectorQuantizer(codebook.shape[0], codebook.shape[1], decay=0.9, dead_code_steps=dead_code_steps)
    q.codebook.copy_(codebook)
    q.embed_sum.copy_(codebook)
    q.cluster_size.fill_(1.0)
    q.unused_steps.zero_()
    return q


# -- quantiser maths ------------------------------------------------------------------------------
def test_the_nearest_code_is_chosen() -> None:
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    q = quantizer_with(codebook).eval()
    points = torch.tensor([[9.0, 1.0], [1.0, 8.0], [-6.0, -7.0], [0.5, -0.5], [4.0, 1.0]])
    z_e = points[:, :, None, None]  # five 1×1 "images" with 2 channels
    z_q, codes, commitment = q(z_e)
    assert codes.flatten().tolist() == [1, 2, 3, 0, 0]
    assert torch.equal(z_q[:, :, 0, 0], codebook[[1, 2, 3, 0, 0]])
    assert commitment.item() == pytest.approx(0.25 * F.mse_loss(points, codebook[[1, 2, 3, 0, 0]]).item())
    assert torch.equal(q.codebook, codebook), "eval mode must not update the codebook"


def test_ema_moves_each_code_toward_its_assigned_vectors() -> None:
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    q = quantizer_with(codebook).train()
    target = torch.tensor([2.0, 1.0])
    z_e = (target + 0.01 * torch.randn(64, 2))[:, :, None, None]  # all nearest to code 0
    before = (q.codebook[0] - target).norm().item()
    q(z_e)
    after = (q.codebook[0] - target).norm().item()
    assert after < before
    # One EMA step of decay 0.9 from mass 1: (0.9·e + 0.1·Σz) / (0.9 + 0.1·n), Laplace smoothing aside.
    expected = (0.9 * codebook[0] + 0.1 * z_e.flatten(1).sum(0)) / (0.9 + 0.1 * 64)
    assert torch.allclose(q.codebook[0], expected, atol=1e-3)
    assert torch.allclose(q.codebook[1:], codebook[1:], atol=1e-3), "codes with no vectors stay put"
    for _ in range(100):
        q(z_e)
    assert torch.allclose(q.codebook[0], z_e.flatten(1).mean(0), atol=1e-3), "EMA converges to the cluster mean"


def test_dead_codes_are_restarted_from_the_batch() -> None:
    codebook = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]])
    q = quantizer_with(codebook, dead_code_steps=3).train()
    z_e = torch.randn(32, 2)[:, :, None, None]  # near code 0: codes 1-3 go unused
    for step in range(1, 3):
        q(z_e)
        assert q.unused_steps.tolist() == [0, step, step, step]
        assert torch.allclose(q.codebook[1:], codebook[1:], atol=1e-2), "not dead yet"
    q(z_e)
    rows = z_e.flatten(1)
    for code in q.codebook[1:]:
        assert (rows - code).norm(dim=1).min() < 1e-5, "a restarted code is one of the batch's encoder outputs"
    assert q.unused_steps.tolist() == [0, 0, 0, 0]


def test_a_fresh_quantiser_seeds_its_codebook_from_the_first_batch() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4).train()
    z_e = (5.0 + torch.randn(64, 4))[:, :, None, None]  # ~10 away from the N(0, 1) initial codes
    q(z_e)
    rows = z_e.flatten(1)
    # Unused codes became batch vectors; used ones, the mean of their vectors: all inside the data cloud.
    assert ((q.codebook - rows.mean(0)).norm(dim=1) < 6.5).all()
    assert (torch.cdist(q.codebook, rows).min(dim=1).values < 1e-5).sum() >= 8, "most codes restarted from the batch"


def test_straight_through_gradient_reaches_the_encoder() -> None:
    q = quantizer_with(torch.randn(8, 3)).eval()
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, _, _ = q(z_e)
    (z_q * torch.arange(3.0)[None, :, None, None]).sum().backward()
    assert torch.equal(z_e.grad, torch.arange(3.0)[None, :, None, None].expand(2, 3, 2, 2))

    torch.manual_seed(0)
    net = VQVAE(16, TINY_VQ)
    _, losses, _ = net(torch.rand(2, 3, 16, 16) * 2 - 1)
    losses["recon"].backward()  # the reconstruction loss alone, through the quantiser
    first_conv = net.encoder.net[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_perplexity_counts_effective_codes() -> None:
    assert perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0, 0.0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([7.0, 0.0])).item() == pytest.approx(1.0)


# -- the network ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("image_size", "downsample", "num_tokens"), [(16, 4, 16), (32, 8, 16), (16, 2, 64)])
def test_vqvae_shapes(image_size: int, downsample: int, num_tokens: int) -> None:
    settings_ = VQSettings(codebook_size=32, code_dim=8, downsample=downsample, channels=8, max_channels=16)
    net = VQVAE(image_size, settings_)
    images = torch.rand(3, 3, image_size, image_size) * 2 - 1
    reconstruction, losses, codes = net(images)
    assert reconstruction.shape == images.shape and set(losses) == {"recon", "commitment"}
    assert codes.shape == (3, num_tokens) and codes.dtype == torch.long and net.num_tokens == num_tokens
    net.eval()
    encoded = net.encode(images)
    assert encoded.shape == (3, num_tokens) and 0 <= encoded.min() and encoded.max() < 32
    decoded = net.decode(encoded)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    with pytest.raises(ValueError, match=rf"\[B, 3, {image_size}, {image_size}\]"):
        net.encode(torch.zeros(1, 3, image_size + downsample, image_size + downsample))
    with pytest.raises(ValueError, match="codes must lie in"):
        net.decode(torch.full((1, num_tokens), 32))


def test_l1_reconstruction_loss() -> None:
    net = VQVAE(16, VQSettings(codebook_size=8, code_dim=4, downsample=4, channels=8, recon_loss="l1"))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    reconstruction, losses, _ = net(images)
    assert losses["recon"].item() == pytest.approx(F.l1_loss(reconstruction, images).item(), rel=1e-5)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="power of two"):
        VQSettings(downsample=6)
    with pytest.raises(ValueError, match="not a multiple"):
        VQVAE(20, VQSettings(downsample=8))


# -- the LightningModule through the CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fit tests/configs/tiny_vq.yaml (50 steps) through the CLI; the last checkpoint."""
    root = tmp_path_factory.mktemp("vq")
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    main(["fit", "--config", str(TINY_CONFIG), "--trainer.default_root_dir", str(root)])
    checkpoints = sorted(root.rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    return checkpoints[-1]


def fixed_batch() -> torch.Tensor:
    data = ShapesDataModule(latents=[], shapes=TINY_SHAPES, num_train=16, num_val=16, batch_size=16)
    return torch.stack([data.dataset("val")[i]["image"] for i in range(16)])


def recon_mse(net: VQVAE, images: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(net.decode(net.encode(images)), images).item()


def test_training_lowers_reconstruction_error_and_logs(trained: Path) -> None:
    model = kaleido.load(trained)
    assert isinstance(model, VQTokenizer) and not model.training
    images = fixed_batch()
    torch.manual_seed(0)
    initial = VQTokenizer(image_size=16, vq=TINY_VQ).vq.eval()  # the same settings, before any step
    before, after = recon_mse(initial, images), recon_mse(model.vq, images)
    print(f"recon MSE on a fixed batch: {before:.4f} at init, {after:.4f} after 50 steps")
    assert after < 0.5 * before

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained.parents[1])).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/recon_mse", "val/recon_mse", "val/codebook_usage", "val/perplexity"} <= scalars
    assert "val/reconstructions" in events.Tags()["images"]
    usage = events.Scalars("val/codebook_usage")[-1].value
    ppl = events.Scalars("val/perplexity")[-1].value
    print(f"val codebook usage {usage:.2f}, perplexity {ppl:.1f} of {TINY_VQ.codebook_size} codes")
    assert usage > 0.25, "dead-code restarts keep a good part of the codebook in use"


def test_checkpoint_rebuilds_the_same_network(trained: Path) -> None:
    model = kaleido.load(trained, expected=VQTokenizer)
    net = load_vqvae(trained)  # the bare network, as the extractor loads it
    images = fixed_batch()[:4]
    assert torch.equal(model.encode(images), net.encode(images))
    assert model.hparams["vq"]["codebook_size"] == 32 and model.tokenizer is not None
    bogus = torch.load(trained, weights_only=True)
    bogus["hyper_parameters"] = {"t5": {}}  # what a LatentPrior checkpoint holds
    torch.save(bogus, trained.parent / "bogus.ckpt")
    with pytest.raises(ValueError, match="not a VQTokenizer"):
        load_vqvae(trained.parent / "bogus.ckpt")


def test_a_checkpoint_without_tokenizer_still_gives_its_network(tmp_path: Path) -> None:
    model = VQTokenizer(image_size=16, vq=TINY_VQ)  # built in Python, no data module
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)  # what Lightning calls before writing
    torch.save(checkpoint, tmp_path / "vq.ckpt")
    assert checkpoint["kaleido"]["tokenizer"] is None
    net = load_vqvae(tmp_path / "vq.ckpt")
    images = fixed_batch()[:2]
    assert torch.equal(net.encode(images), model.vq.eval().encode(images))


# -- the latent type --------------------------------------------------------------------------------
LATENT = VisualTokenLatent(codebook_size=64, num_tokens=16)
codes_strategy = st.tuples(*[st.integers(0, 63)] * 16)


@settings(max_examples=100, deadline=None)
@given(codes_strategy)
def test_format_parse_round_trip(codes: tuple[int, ...]) -> None:
    text = LATENT.format(codes)
    assert LATENT.parse(text) == codes
    assert LATENT.format(LATENT.parse(text)) == text
    # Hand-written variants parse to the same codes: bare numbers, spaces around '#'.
    assert LATENT.parse(" # ".join(map(str, codes))) == codes


@pytest.fixture(scope="module")
def shared_tokenizer() -> KaleidoTokenizer:
    corpus = ["a circle", "a red square at the top"] * 10 + [LATENT.format(tuple(range(i, i + 16))) for i in range(48)]
    return KaleidoTokenizer.train(corpus, [LATENT], vocab_size=512)


@settings(max_examples=60, deadline=None)
@given(codes=codes_strategy)
def test_round_trip_through_the_shared_tokenizer(shared_tokenizer: KaleidoTokenizer, codes: tuple[int, ...]) -> None:
    tok = shared_tokenizer
    texts = tok.format_latents({"visual_token": codes})
    ids = tok.encode_latent_texts(texts)
    # One id per code and per '#': every code is one atomic special token.
    assert len(ids) == 1 + (2 * 16 - 1) + 1
    assert ids[1::2][:16] == [tok.tokenizer.token_to_id(f"<v{c}>") for c in codes]
    assert tok.decode_latent_texts(ids) == texts
    assert LATENT.parse(tok.decode_latent_texts(ids)["visual_token"]) == codes


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 0, "code 0"),
        ("<v1>#<vx>#<v3>", 5, "code 1"),
        ("<v1>#<v99>#<v3>", 7, "below the codebook size 64"),
        ("<v1>;<v2>", 4, "'#' between codes"),
        ("<v1>#<v2>#", 10, "code 2"),
        ("<v1>#<v2>#<v3>", 14, "16 codes"),
    ],
)
def test_parse_errors_name_the_position(text: str, position: int, message: str) -> None:
    with pytest.raises(LatentParseError, match=message) as info:
        LATENT.parse(text)
    assert info.value.position == position


def test_latent_type_is_registered_and_rebuilds_from_its_spec() -> None:
    assert isinstance(build_latent_type("visual_token"), VisualTokenLatent)
    assert build_latent_type(LATENT.spec()) == LATENT
    assert len(LATENT.special_tokens()) == 64 and LATENT.special_tokens()[:2] == ["<v0>", "<v1>"]
    with pytest.raises(ValueError, match="16 codes"):
        LATENT.format((1, 2, 3))
    with pytest.raises(ValueError, match="needs checkpoint="):
        LATENT.build_extractor()


# -- the extractor ----------------------------------------------------------------------------------
def test_extractor_gives_num_tokens_codes_per_image(trained: Path) -> None:
    latent = VisualTokenLatent(codebook_size=32, num_tokens=16, checkpoint=str(trained))
    extractor = latent.build_extractor()
    assert latent.build_extractor() is extractor, "loaded once per latent type"
    images = fixed_batch()[:5]
    codes = extractor(images, ["a circle"] * 5)
    assert len(codes) == 5 and all(len(c) == 16 and all(0 <= x < 32 for x in c) for c in codes)
    assert latent.parse(latent.format(codes[0])) == codes[0]
    assert latent.decode(codes[0]).shape == (3, 16, 16) and latent.decode(codes).shape == (5, 3, 16, 16)

    with pytest.raises(ValueError, match="codebook_size=32 and num_tokens=16"):
        VisualTokenLatent(codebook_size=8192, num_tokens=32, checkpoint=str(trained)).build_extractor()


def test_data_module_extracts_visual_tokens_end_to_end(trained: Path) -> None:
    latent = VisualTokenLatent(codebook_size=32, num_tokens=16, checkpoint=str(trained))
    data = ShapesDataModule(latents=[latent], shapes=TINY_SHAPES, num_train=8, num_val=4, batch_size=4)
    batch = next(iter(data.val_dataloader()))
    tok = data.tokenizer
    for ids, mask, text in zip(batch["latent_ids"], batch["latent_mask"], batch["latent_text"]):
        decoded = tok.decode_latent_texts(ids[mask].tolist())["visual_token"]
        assert decoded == text and len(latent.parse(text)) == 16


def test_a_collapsed_codebook_is_reported() -> None:
    from types import SimpleNamespace

    model = VQTokenizer(image_size=16, vq=TINY_VQ)
    model._trainer = SimpleNamespace(sanity_checking=False, global_step=300)  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="codebook has collapsed: 1 of 32 codes"):
        model._warn_if_collapsed(used=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model._warn_if_collapsed(used=2)  # a small but live codebook is not a collapse
