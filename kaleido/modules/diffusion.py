"""The baseline: the diffusion model conditioned on the condition ``c`` alone (no latent ``z``)."""

from __future__ import annotations

from typing import Any

from kaleido.modules.base import ConditionalDiffusion, Conditioning
from kaleido.modules.settings import (
    Compile,
    DiffusionSettings,
    OptimizerSettings,
    SamplingSettings,
    T5Settings,
    UNetSettings,
)
from kaleido.nn.denoiser import DenoiserFactory
from kaleido.nn.prior import build_condition_encoder
from kaleido.tokenizer import KaleidoTokenizer


class DiffusionModel(ConditionalDiffusion):
    """The denoiser (UNet, DiT, ...) cross-attending to the T5 encoder states of ``c``.

    The encoder has the architecture of Kaleido's prior encoder (``t5``; decoder fields unused), so
    the baseline and Kaleido differ only by ``z``.

    Args:
        tokenizer: built by the data module (linked by the CLI).
        image_size: image side in pixels (linked from the data module).
        t5: size of the condition encoder, or a local pretrained checkpoint.
        unet: the sizes of the default denoiser, the UNet (``kaleido.nn.unet.UNet``).
        denoiser: any denoiser backbone by ``class_path`` (e.g. ``kaleido.nn.dit.DiT``), instead of ``unet``.
        diffusion: schedule, parameterisation and condition-drop probability.
        sampling: defaults for ``generate`` and the validation sample grids.
        optimizer: Adam and warm-up.
        freeze_condition_encoder: keep the encoder fixed (the paper freezes a pretrained T5-XL).
        compile: ``torch.compile`` the denoiser and the condition encoder for training steps; true, or a
            ``torch.compile`` mode by name (``reduce-overhead``: replayed as CUDA graphs).
    """

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
        freeze_condition_encoder: bool = False,
        compile: Compile = False,
    ) -> None:
        super().__init__(
            tokenizer, image_size, t5, unet, denoiser, diffusion, sampling, optimizer, compile,
            extra_hparams={"freeze_condition_encoder": freeze_condition_encoder},
        )
        tok = self.tokenizer
        self.condition_encoder = build_condition_encoder(self.t5_settings, tok.vocab_size, tok.pad_id, tok.eos_id)
        self.condition_encoder.requires_grad_(not freeze_condition_encoder)
        self.add_denoiser(self.condition_encoder.config.d_model)

    def encode(self, ids: Any, mask: Any) -> Conditioning:
        states = self.training_network("condition_encoder")(input_ids=ids, attention_mask=mask).last_hidden_state
        return Conditioning(states, mask)

    def condition(self, batch: dict[str, Any]) -> Conditioning:
        return self.encode(batch["condition_ids"], batch["condition_mask"])

    def sampling_conditioning(
        self, conditions: list[str], latents: list[str | None] | None, seed: int  # noqa: ARG002
    ) -> tuple[Conditioning, None]:
        if latents is not None and any(z is not None for z in latents):
            raise ValueError("the baseline DiffusionModel has no latent z; latents can only be given to a Kaleido model")
        return self.encode(*self.encode_conditions(conditions)), None
