"""The autoregressive latent prior p(z | c): a T5-style encoder-decoder from ``transformers``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput


@dataclass
class T5Settings:
    """Size of the T5 encoder-decoder (random init), or a local pretrained checkpoint to start from."""

    d_model: int = 256
    d_ff: int = 1024
    num_layers: int = 4
    num_decoder_layers: int = 4
    num_heads: int = 4
    d_kv: int = 64
    dropout_rate: float = 0.0
    feed_forward_proj: str = "gated-gelu"
    pretrained_model_name_or_path: str | None = None

    def t5_config(self, vocab_size: int, pad_id: int, eos_id: int) -> T5Config:
        return T5Config(
            vocab_size=vocab_size,
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            d_kv=self.d_kv,
            dropout_rate=self.dropout_rate,
            feed_forward_proj=self.feed_forward_proj,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            decoder_start_token_id=pad_id,
        )


def _load_local(cls: type, path: str, vocab_size: int) -> nn.Module:
    model = cls.from_pretrained(path, local_files_only=True)
    if model.config.vocab_size < vocab_size:
        model.resize_token_embeddings(vocab_size)  # the paper enlarges the vocabulary for latent tokens
    return model


def build_condition_encoder(settings: T5Settings, vocab_size: int, pad_id: int, eos_id: int) -> T5EncoderModel:
    """The encoder alone, for the baseline: the same architecture as the prior's encoder."""
    if settings.pretrained_model_name_or_path:
        return _load_local(T5EncoderModel, settings.pretrained_model_name_or_path, vocab_size)
    return T5EncoderModel(settings.t5_config(vocab_size, pad_id, eos_id))


@dataclass
class PriorOutput:
    logits: Tensor  # [B, Lz, V], predicting latent_ids
    hidden: Tensor  # [B, Lz, D], the decoder's final-layer hidden states
    nll: Tensor  # [] mean token-level negative log-likelihood


class LatentPriorNet(nn.Module):
    """Encodes the condition and models the latent tokens autoregressively, cross-attending to it."""

    def __init__(self, settings: T5Settings, vocab_size: int, pad_id: int, eos_id: int) -> None:
        super().__init__()
        if settings.pretrained_model_name_or_path:
            self.t5 = _load_local(T5ForConditionalGeneration, settings.pretrained_model_name_or_path, vocab_size)
        else:
            self.t5 = T5ForConditionalGeneration(settings.t5_config(vocab_size, pad_id, eos_id))
        self.pad_id, self.eos_id = pad_id, eos_id

    @property
    def hidden_size(self) -> int:
        return self.t5.config.d_model

    def encode(self, condition_ids: Tensor, condition_mask: Tensor, encoder: nn.Module | None = None) -> Tensor:
        """The encoder states of ``c``; ``encoder`` stands in for ``t5.encoder`` (e.g. compiled)."""
        encoder = self.t5.get_encoder() if encoder is None else encoder  # not `or`: modules may define __len__
        return encoder(input_ids=condition_ids, attention_mask=condition_mask).last_hidden_state

    def teacher_force(
        self, encoded: Tensor, condition_mask: Tensor, latent_ids: Tensor, latent_mask: Tensor, decoder: nn.Module | None = None
    ) -> PriorOutput:
        """One decoder pass over the ground-truth (or given) ``z``: the logits and the hidden states.
        ``decoder`` stands in for ``t5.decoder`` (e.g. compiled).

        The decoder and the LM head are called as ``T5ForConditionalGeneration.forward`` calls them, not
        through it: the final hidden states would need ``output_hidden_states=True``, whose output hooks
        (transformers 5) break a compiled graph in two and sent part of the prior back to eager."""
        decoder_input = F.pad(latent_ids[:, :-1], (1, 0), value=self.pad_id)
        decoder_mask = F.pad(latent_mask[:, :-1], (1, 0), value=True)
        hidden = (self.t5.decoder if decoder is None else decoder)(
            input_ids=decoder_input,
            attention_mask=decoder_mask,
            encoder_hidden_states=encoded,
            encoder_attention_mask=condition_mask,
            use_cache=False,
        ).last_hidden_state
        logits = self.t5.lm_head(hidden * self.output_scale)
        targets = latent_ids.masked_fill(~latent_mask, -100)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return PriorOutput(logits=logits, hidden=hidden, nll=nll)

    @property
    def output_scale(self) -> float:
        """What T5 multiplies the decoder's output by before its LM head: d_model^-0.5 with tied embeddings
        (``scale_decoder_outputs`` in transformers 5, ``tie_word_embeddings`` before), else 1."""
        config = self.t5.config
        return config.d_model**-0.5 if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings) else 1.0

    @torch.no_grad()
    def sample(
        self,
        encoded: Tensor,
        condition_mask: Tensor,
        prompt_ids: Tensor,
        max_length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        """Ancestral sampling with a KV cache. ``prompt_ids`` [B, P] are forced first tokens (the first
        segment tag). Returns the latent ids [B, L] without the start token, padded after ``</s>``."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use a small value for near-greedy decoding), got {temperature}")
        start = torch.full_like(prompt_ids[:, :1], self.pad_id)
        generated = self.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
            attention_mask=condition_mask.long(),
            decoder_input_ids=torch.cat([start, prompt_ids], dim=1),
            do_sample=True,
            temperature=temperature,
            top_k=top_k or 0,
            top_p=top_p if top_p is not None else 1.0,
            max_new_tokens=max_length - prompt_ids.shape[1],
            use_cache=True,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        return generated[:, 1:]
