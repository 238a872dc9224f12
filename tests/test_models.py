import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

import kaleido
from kaleido.checkpoint_io import from_dict
from kaleido.diffusion.schedule import CosineSchedule
from kaleido.latents import LatentParseError
from kaleido.modules.base import ConditionalDiffusion
from kaleido.modules.settings import DiffusionSettings, SamplingSettings
from kaleido.nn.denoiser import Denoiser
from kaleido.nn.prior import build_condition_encoder
from kaleido.tokenizer import SequenceTooLongError
from tests.conftest import TINY_T5, tiny_model_kwargs

LATENT = "a large red circle in the center, on a black background"


def batch_of(data, split="train"):  # type: ignore[no-untyped-def]
    return next(iter(data._loader(split, shuffle=False)))


@pytest.fixture()
def model(text_data) -> kaleido.Kaleido:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())


def test_models_refuse_the_wrong_data(text_data, baseline_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="needs the tokenizer"):
        kaleido.Kaleido(**tiny_model_kwargs())
    with pytest.raises(ValueError, match="at least one latent type"):
        kaleido.Kaleido(tokenizer=baseline_data.tokenizer, **tiny_model_kwargs())
    with pytest.raises(ValueError, match="takes no latents"):
        kaleido.DiffusionModel(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    with pytest.raises(ValueError, match="p_uncond"):
        DiffusionSettings(p_uncond=1.0)


@pytest.mark.parametrize("detach", [False, True])
def test_diffusion_loss_reaches_the_decoder_unless_detached(text_data, detach: bool) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(
        tokenizer=text_data.tokenizer, ar_loss_weight=0.0, detach_latent_states=detach, **tiny_model_kwargs()
    )
    for p in model.denoiser.parameters():  # zero-initialised layers would block every gradient at step 0
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    batch = batch_of(text_data)
    cond = model.condition(batch)
    model.diffusion_loss(batch["image"], cond).backward()
    decoder_grad = sum(p.grad.abs().sum() for p in model.prior.t5.decoder.block.parameters() if p.grad is not None)
    assert (decoder_grad == 0) == detach
    encoder_grad = sum(p.grad.abs().sum() for p in model.prior.t5.encoder.parameters() if p.grad is not None)
    assert encoder_grad > 0  # the condition's encoder states are always part of the conditioning


def test_joint_loss_is_diffusion_plus_weighted_nll(text_data) -> None:  # type: ignore[no-untyped-def]
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, ar_loss_weight=0.5, **tiny_model_kwargs())
    cond = model.condition(batch_of(text_data))
    assert torch.allclose(cond.losses["loss_ar"], 0.5 * cond.metrics["nll"])
    states_len = batch_of(text_data)["condition_ids"].shape[1] + batch_of(text_data)["latent_ids"].shape[1]
    assert cond.states.shape[1] == cond.mask.shape[1] == states_len


def test_condition_and_latent_are_dropped_together(text_data) -> None:  # type: ignore[no-untyped-def]
    model = kaleido.Kaleido(
        tokenizer=text_data.tokenizer, diffusion=DiffusionSettings(p_uncond=0.5), **tiny_model_kwargs()
    )
    seen = {}

    class Spy(Denoiser):  # a denoiser, so training asks its (default) training_outputs
        def forward(self, x, t, cond, cond_mask, uncond):  # type: ignore[no-untyped-def]
            seen.update(cond=cond, mask=cond_mask, uncond=uncond)
            return torch.zeros_like(x)

    model.denoiser = Spy()
    batch = batch_of(text_data)
    images = batch["image"].repeat(64, 1, 1, 1)
    cond = model.condition(batch)
    cond.states, cond.mask = cond.states.repeat(64, 1, 1), cond.mask.repeat(64, 1)
    model.diffusion_loss(images, cond, torch.Generator().manual_seed(0))
    # One flag per row covers the whole sequence (c and z): the UNet masks every real token of that row.
    assert seen["uncond"].shape == (images.shape[0],)
    assert 0.35 < seen["uncond"].float().mean() < 0.65
    assert seen["cond"].shape[1] == cond.states.shape[1]


def test_greedy_sampling_with_kv_cache_matches_teacher_forcing(model) -> None:  # type: ignore[no-untyped-def]
    tok = model.tokenizer
    ids, mask = tok.encode_conditions(["a circle", "a square"])
    encoded = model.prior.encode(ids, mask)
    prompt = torch.full((2, 1), tok.tag_ids["text"])
    sampled = model.prior.sample(encoded, mask, prompt, max_length=12, top_k=1)
    # Re-run the decoder on the greedy output without a cache: each token must be the argmax.
    out = model.prior.teacher_force(encoded, mask, sampled, torch.ones_like(sampled, dtype=torch.bool))
    predicted = out.logits.argmax(-1)
    first_eos = [(row == tok.eos_id).nonzero()[0, 0].item() if (row == tok.eos_id).any() else len(row) for row in sampled]
    for row, end in enumerate(first_eos):
        assert torch.equal(predicted[row, 1 : end + 1], sampled[row, 1 : end + 1])


def test_teacher_forcing_is_t5_s_own_forward_in_one_graph(model) -> None:  # type: ignore[no-untyped-def]
    # The decoder and the LM head called directly give T5's logits and last decoder states, and the
    # decoder compiles without a graph break (output_hidden_states=True broke it: transformers' hooks).
    from transformers.modeling_outputs import BaseModelOutput

    tok = model.tokenizer
    ids, mask = tok.encode_conditions(["a circle", "a square"])
    latent = torch.randint(4, tok.vocab_size, (2, 9))
    latent_mask = torch.ones_like(latent, dtype=torch.bool)
    latent_mask[1, 6:] = False
    encoded = model.prior.encode(ids, mask)
    out = model.prior.teacher_force(encoded, mask, latent, latent_mask)
    reference = model.prior.t5(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask, output_hidden_states=True,
        decoder_input_ids=torch.nn.functional.pad(latent[:, :-1], (1, 0), value=model.prior.pad_id),
        decoder_attention_mask=torch.nn.functional.pad(latent_mask[:, :-1], (1, 0), value=True),
    )
    torch.testing.assert_close(out.logits, reference.logits)
    torch.testing.assert_close(out.hidden, reference.decoder_hidden_states[-1])
    explained = torch._dynamo.explain(model.prior.t5.decoder)(
        input_ids=latent, attention_mask=latent_mask, encoder_hidden_states=encoded, encoder_attention_mask=mask, use_cache=False
    )
    assert explained.graph_break_count == 0, explained.break_reasons


def test_sampling_settings_are_validated(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="temperature"):
        model.prior.sample(torch.zeros(1, 2, 32), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.long), 4, temperature=0)


def test_generate_uses_a_given_latent_and_fixed_noise(model) -> None:  # type: ignore[no-untyped-def]
    out = model.generate(["a circle", "a circle"], latents=[LATENT, None], seed=3)
    assert out.images.shape == (2, 3, 16, 16) and out.images.abs().max() <= 1
    assert out.latent_texts[0] == LATENT and out.latent_texts[1] != LATENT
    again = model.generate(["a circle", "a circle"], latents=[LATENT, None], seed=3)
    assert torch.equal(out.images, again.images) and out.latent_texts == again.latent_texts
    # The untrained denoiser predicts zero, so images depend on the noise alone: an edited z keeps it.
    edited = model.generate(["a circle", "a circle"], latents=[LATENT.replace("red", "blue"), LATENT], seed=3)
    assert torch.equal(out.images, edited.images)
    assert not torch.equal(out.images, model.generate(["a circle"] * 2, seed=4).images)


def test_generate_progress_reaches_the_sampler(model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kaleido.diffusion.samplers import Sampler

    seen: list[bool] = []
    call = Sampler.__call__
    monkeypatch.setattr(Sampler, "__call__", lambda self, *a, **kw: (seen.append(kw["progress"]), call(self, *a, **kw))[1])
    model.generate(["a circle"], num_steps=2)
    model.generate(["a circle"] * 3, num_steps=2, batch_size=2, progress=True)
    assert seen == [False, True, True]  # one sampler run per batch


def test_generate_rejects_bad_input(model, baseline_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LatentParseError, match="expected a colour .* at position 8"):
        model.generate(["a circle"], latents=["a large magenta circle"])
    with pytest.raises(SequenceTooLongError, match="max_condition_length"):
        model.generate(["a circle " * 40])
    with pytest.raises(ValueError, match="one per condition"):
        model.generate(["a circle"], latents=[LATENT, LATENT])
    baseline = kaleido.DiffusionModel(tokenizer=baseline_data.tokenizer, **tiny_model_kwargs())
    with pytest.raises(ValueError, match="no latent"):
        baseline.generate(["a circle"], latents=[LATENT])
    assert baseline.generate(["a circle"]).latent_texts is None


def _fit(model, data, tmp_path, steps: int = 2):  # type: ignore[no-untyped-def]
    trainer = Trainer(
        max_steps=steps, limit_val_batches=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_load_gives_the_averaged_or_the_trained_weights(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kaleido.callbacks import EMA, ModelCheckpoint

    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs())
    trainer = Trainer(
        max_steps=3, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[EMA(decay=0.5), ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=100)],
    )
    trainer.fit(model, datamodule=text_data)
    stored = torch.load(tmp_path / "last.ckpt", weights_only=True)
    averaged = kaleido.load(tmp_path / "last.ckpt").state_dict()
    trained = kaleido.load(tmp_path / "last.ckpt", weights="trained").state_dict()
    name = "denoiser.input_conv.weight"
    assert torch.equal(averaged[name], stored["state_dict"][name])
    assert torch.equal(trained[name], stored["current_model_state"][name])
    assert not torch.equal(averaged[name], trained[name])
    assert [kaleido.load(tmp_path / "last.ckpt", weights=w).loaded_weights for w in ("averaged", "trained")] == ["averaged", "trained"]
    with pytest.raises(ValueError, match="weights must be 'averaged' or 'trained', got 'ema'"):
        kaleido.load(tmp_path / "last.ckpt", weights="ema")  # type: ignore[arg-type]

    # `sample` picks the weights too, and says which it used. Three steps barely move the images, so
    # the trained weights' output bias is shifted: with the same seed their images must then differ.
    from kaleido.sample import sample

    bias = [k for k in stored["current_model_state"] if k.startswith("denoiser.out.") and k.endswith("bias")][-1]  # the last conv's
    stored["current_model_state"][bias] = stored["current_model_state"][bias] + 0.5
    torch.save(stored, tmp_path / "shifted.ckpt")
    images = {}
    for weights in ("averaged", "trained"):
        out = sample(tmp_path / "shifted.ckpt", "a circle", num_samples=2, seed=0, sampler="ddim", num_steps=2,
                     output=tmp_path / weights, weights=weights)  # type: ignore[arg-type]
        records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert {r["weights"] for r in records} == {weights}
        images[weights] = np.asarray(Image.open(out / records[0]["image"]))
    assert not np.array_equal(images["averaged"], images["trained"])

    # Trained without EMA, a checkpoint holds only the trained weights: asked for the average, `load`
    # gives those, and the samples say so rather than "averaged".
    plain = {k: v for k, v in stored.items() if k != "current_model_state"}
    plain["state_dict"] = stored["current_model_state"]
    torch.save(plain, tmp_path / "plain.ckpt")
    assert kaleido.load(tmp_path / "plain.ckpt").loaded_weights == "trained"
    out = sample(tmp_path / "plain.ckpt", "a circle", num_samples=2, seed=0, sampler="ddim", num_steps=2, output=tmp_path / "plain")
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["weights"] for r in records} == {"trained"}
    assert np.array_equal(np.asarray(Image.open(out / records[0]["image"])), images["trained"])


def test_checkpoint_round_trip_and_wrong_types(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(tokenizer=text_data.tokenizer, sampling=SamplingSettings(sampler="ddim", num_steps=2), **{
        k: v for k, v in tiny_model_kwargs().items() if k != "sampling"
    })
    path = _fit(model, text_data, tmp_path)
    loaded = kaleido.load(path)
    assert isinstance(loaded, kaleido.Kaleido) and not loaded.training
    assert loaded.tokenizer.state_dict() == model.tokenizer.state_dict()
    a = model.generate(["a circle"], latents=[LATENT], seed=1).images
    b = loaded.generate(["a circle"], latents=[LATENT], seed=1).images
    assert torch.allclose(a, b, atol=1e-6)

    prior = kaleido.LatentPrior(tokenizer=text_data.tokenizer, t5=TINY_T5)
    prior_path = _fit(prior, text_data, tmp_path / "prior")
    with pytest.raises(TypeError, match="holds a LatentPrior checkpoint; expected one of: ConditionalDiffusion"):
        kaleido.load(prior_path, expected=ConditionalDiffusion)
    assert isinstance(prior.sample(["a circle"])[0], str)
    # Two-stage training: Kaleido's prior starts from the trained LatentPrior.
    staged = kaleido.Kaleido(tokenizer=text_data.tokenizer, init_prior_from=str(prior_path), **tiny_model_kwargs())
    loaded_prior = kaleido.load(prior_path)
    for (name, p), q in zip(staged.prior.named_parameters(), loaded_prior.prior.parameters()):
        assert torch.equal(p, q), name
    assert staged.hparams["init_prior_from"] is None  # the weights travel in its checkpoint, not the path

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a kaleido checkpoint"):
        kaleido.load(foreign)
    with pytest.raises(FileNotFoundError):
        kaleido.load(tmp_path / "missing.ckpt")


def test_prior_starts_from_local_pretrained_weights(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pretrained T5 is a local folder (save_pretrained layout); nothing is downloaded."""
    from dataclasses import replace

    from transformers import T5ForConditionalGeneration

    tok = text_data.tokenizer
    source = T5ForConditionalGeneration(TINY_T5.t5_config(tok.vocab_size - 5, tok.pad_id, tok.eos_id))
    source.save_pretrained(tmp_path / "t5")
    kwargs = tiny_model_kwargs()
    kwargs["t5"] = replace(TINY_T5, pretrained_model_name_or_path=str(tmp_path / "t5"))
    model = kaleido.Kaleido(tokenizer=tok, **kwargs)
    # The vocabulary grows to hold the latent tokens (as in the paper); the rest are the saved weights.
    assert model.prior.t5.config.vocab_size == tok.vocab_size
    assert torch.equal(model.prior.t5.encoder.block[0].layer[0].SelfAttention.q.weight, source.encoder.block[0].layer[0].SelfAttention.q.weight)
    encoder = build_condition_encoder(kwargs["t5"], tok.vocab_size, tok.pad_id, tok.eos_id)  # the baseline's
    assert torch.equal(encoder.encoder.block[0].layer[0].SelfAttention.q.weight, source.encoder.block[0].layer[0].SelfAttention.q.weight)
    with pytest.raises(OSError):
        kaleido.Kaleido(tokenizer=tok, **{**kwargs, "t5": replace(TINY_T5, pretrained_model_name_or_path=str(tmp_path / "missing"))})


def test_schedule_shift_reaches_the_model_and_its_checkpoint(text_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = kaleido.Kaleido(
        tokenizer=text_data.tokenizer, diffusion=DiffusionSettings(schedule_shift=2.0), **tiny_model_kwargs()
    )
    t = torch.arange(0, 1000, 111)
    torch.testing.assert_close(CosineSchedule(1000).snr(t) / model.schedule.snr(t), torch.full((len(t),), 4.0, dtype=torch.float64), rtol=1e-5, atol=0)
    loaded = kaleido.load(_fit(model, text_data, tmp_path))
    assert loaded.schedule.shift == 2.0 and torch.equal(loaded.schedule.alphas_cumprod, model.schedule.alphas_cumprod)
    # Settings saved before the shift existed read as the plain cosine schedule.
    assert from_dict(DiffusionSettings, {"num_timesteps": 1000, "prediction": "v"}).schedule_shift == 1.0
    with pytest.raises(ValueError, match="schedule_shift must be > 0"):
        DiffusionSettings(schedule_shift=-1.0)


def test_min_snr_weighting_changes_the_loss_and_is_validated(text_data) -> None:  # type: ignore[no-untyped-def]
    batch = batch_of(text_data)
    losses = {}
    for weighting in ("uniform", "min_snr"):
        torch.manual_seed(0)
        model = kaleido.Kaleido(
            tokenizer=text_data.tokenizer, diffusion=DiffusionSettings(loss_weighting=weighting), **tiny_model_kwargs()
        )
        cond = model.condition(batch)
        losses[weighting] = model.diffusion_loss(batch["image"], cond, torch.Generator().manual_seed(0))
    assert 0 < losses["min_snr"] < losses["uniform"]  # v-loss weights min(SNR, 5) / (SNR + 1) are all < 1
    with pytest.raises(ValueError, match="loss_weighting"):
        DiffusionSettings(loss_weighting="snr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_snr_gamma"):
        DiffusionSettings(min_snr_gamma=0.0)
