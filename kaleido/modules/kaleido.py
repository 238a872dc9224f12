"""Kaleido: the AR latent prior and the latent-augmented diffusion model, trained jointly.

    enc = E(c);  logits, h = D(z | enc);  cond = concat(enc, encoder(z, h))
    L = L_diff(x | cond) + η · CE(logits, z)
At sampling, z ~ D(· | E(c)) (or a user-given z), then x ~ sampler(denoiser, cond, γ) with CFG that
drops c and z together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kaleido.modules.base import ConditionalDiffusion, Conditioning
from kaleido.modules.common import sample_latent_ids
from kaleido.modules.settings import (
    Compile,
    DiffusionSettings,
    OptimizerSettings,
    SamplingSettings,
    T5Settings,
    UNetSettings,
)
from kaleido.nn.denoiser import DenoiserFactory
from kaleido.nn.latent_conditioner import LatentConditioner
from kaleido.nn.prior import LatentPriorNet
from kaleido.tokenizer import KaleidoTokenizer


class Kaleido(ConditionalDiffusion):
    """Latent-augmented diffusion with a T5 prior over discrete, human-readable latents.

    Args:
        tokenizer: built by the data module, with its latent types (linked by the CLI).
        image_size: image side in pixels (linked from the data module).
        t5: size of the prior (encoder-decoder), or a local pretrained checkpoint.
        unet: the sizes of the default denoiser, the UNet (``kaleido.nn.unet.UNet``).
        denoiser: any denoiser backbone by ``class_path`` (e.g. ``kaleido.nn.dit.DiT``), instead of ``unet``.
        diffusion: schedule, parameterisation and the probability of dropping (c, z) together.
        sampling: defaults for ``generate`` (sampler, steps, CFG, prior temperature / top-k / top-p).
        optimizer: Adam and warm-up.
        ar_loss_weight: η in ``L = L_diff + η L_AR`` (the paper leaves it open; see docs/choices.md).
        detach_latent_states: stop the diffusion loss at the decoder's hidden states (the paper lets it
            flow: end-to-end training).
        init_prior_from: a ``LatentPrior`` (or ``Kaleido``) checkpoint whose weights start the prior (two-stage
            training, or a nested UNet started from a trained model); the checkpoint stores null, its weights being in it.
        compile: ``torch.compile`` the denoiser and the prior for training steps (static shapes: ``fit``
            then sets ``data.pad_to_limits``); true, or a ``torch.compile`` mode by name
            (``reduce-overhead``: replayed as CUDA graphs).
    """

    uses_latents = True

    def __init__(
        self,
        tokenizer: KaleidoTokenizer | None = None,
        image_size: int = 32,
        t5: T5Settings | None = None,
        unet: UNetSettings | None = None,
        denoiser: DenoiserFactory | None = None,
        diffusion: DiffusionSettings | None = None,
        sampling: SamplingSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        ar_loss_weight: float = 1.0,
        detach_latent_states: bool = False,
        init_prior_from: str | None = None,
        compile: Compile = False,
    ) -> None:
        if ar_loss_weight < 0:
            raise ValueError(f"ar_loss_weight must be >= 0, got {ar_loss_weight}")
        super().__init__(
            tokenizer, image_size, t5, unet, denoiser, diffusion, sampling, optimizer, compile,
            extra_hparams={
                "ar_loss_weight": ar_loss_weight,
                "detach_latent_states": detach_latent_states,
                "init_prior_from": None,  # its weights are in this model's checkpoint: kaleido.load must not need the file
            },
        )
        self.ar_loss_weight = ar_loss_weight
        self.detach_latent_states = detach_latent_states
        tok = self.tokenizer
        self.prior = LatentPriorNet(self.t5_settings, tok.vocab_size, tok.pad_id, tok.eos_id)
        if init_prior_from:
            from kaleido.checkpoint import load_prior_weights

            load_prior_weights(self.prior, init_prior_from)
        width = self.prior.hidden_size
        self.latent_conditioner = LatentConditioner(tok.latent_types, tok.tag_ids, width)
        self.add_denoiser(width)

    def latent_conditioning(
        self,
        condition_ids: Tensor,
        condition_mask: Tensor,
        latent_ids: Tensor,
        latent_mask: Tensor,
        encoded: Tensor | None = None,
        latent_geometry: Tensor | None = None,
    ) -> Conditioning:
        """``latent_geometry`` [B, Lz, G + 1]: the tokenizer's per-token geometry features, needed
        when a latent type uses them (``fourier_frequencies > 0``), else ``None``."""
        if encoded is None:
            encoded = self.prior.encode(condition_ids, condition_mask, self.training_network("prior.t5.encoder"))
        out = self.prior.teacher_force(encoded, condition_mask, latent_ids, latent_mask, self.training_network("prior.t5.decoder"))
        hidden = out.hidden.detach() if self.detach_latent_states else out.hidden
        z_states = self.latent_conditioner(hidden, latent_ids, latent_mask, latent_geometry)
        return Conditioning(
            states=torch.cat([encoded, z_states], dim=1),
            mask=torch.cat([condition_mask, latent_mask], dim=1),
            losses={"loss_ar": self.ar_loss_weight * out.nll},
            metrics={"nll": out.nll.detach()},
            segments=(encoded.shape[1], z_states.shape[1]),
        )

    def condition(self, batch: dict[str, Any]) -> Conditioning:
        return self.latent_conditioning(
            batch["condition_ids"], batch["condition_mask"], batch["latent_ids"], batch["latent_mask"],
            latent_geometry=batch.get("latent_geometry"),
        )

    # -- sampling ---------------------------------------------------------------------------------
    def sampling_conditioning(
        self, conditions: list[str], latents: list[str | None] | None, seed: int
    ) -> tuple[Conditioning, list[str]]:
        tok = self.tokenizer
        condition_ids, condition_mask = self.encode_conditions(conditions)
        encoded = self.prior.encode(condition_ids, condition_mask)
        given = list(latents) if latents is not None else [None] * len(conditions)
        rows: list[list[int]] = [[] for _ in conditions]
        if any(text is None for text in given):  # z ~ p(z | c), on a forked RNG: the image noise is unaffected
            sampled_ids, sampled_mask = sample_latent_ids(self.prior, tok, encoded, condition_mask, self.sampling, seed + 1)
            rows = [ids[m].tolist() for ids, m in zip(sampled_ids.cpu(), sampled_mask.cpu())]
        for i, text in enumerate(given):
            if text is not None:  # a user-given z replaces the sampled one (and must parse)
                rows[i] = tok.encode_latent_texts(tok.split_latent_text(text))
        segments = [tok.decode_latent_texts(row) for row in rows]
        if tok.geometry_width:
            # Geometry features come from the text, as in training; re-encoding it also gives the canonical
            # ids training saw. A sampled z that does not parse gets flag 0 instead of an error.
            latent = tok.latent_batch(segments, sampled=[text is None for text in given])
        else:  # the paper's path: the sampled ids themselves
            latent = dict(zip(("latent_ids", "latent_mask"), tok.pad(rows)))
        latent = {key: value.to(self.device) for key, value in latent.items()}
        cond = self.latent_conditioning(
            condition_ids, condition_mask, latent["latent_ids"], latent["latent_mask"], encoded, latent.get("latent_geometry")
        )
        return cond, [tok.join_latent_texts(texts) for texts in segments]
