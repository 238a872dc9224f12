"""What the baseline and Kaleido share: a pixel-space denoiser (UNet, DiT, ...) over a conditioning sequence,
the v-prediction loss with (c, z) dropped together, Adam with warm-up, CFG sampling, and a
checkpoint that carries its config and tokenizer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from kaleido.checkpoint_io import CHECKPOINT_KEY
from kaleido.diffusion.guiders import Guider, GuiderSpec, build_guider, guided_denoiser
from kaleido.diffusion.samplers import build_sampler
from kaleido.diffusion.schedule import CosineSchedule
from kaleido.modules.common import (
    GradientClipping,
    adam_with_warmup,
    checkpoint_record,
    lay_out_like_parameters,
    log_options,
)
from kaleido.modules.settings import (
    Compile,
    DiffusionSettings,
    OptimizerSettings,
    SamplingSettings,
    T5Settings,
    UNetSettings,
    compile_mode,
    from_dict,
    to_dict,
)
from kaleido.nn.denoiser import Denoiser, DenoiserFactory, build_denoiser, downsample_to, rename_keys
from kaleido.tokenizer import KaleidoTokenizer


@dataclass
class Conditioning:
    states: Tensor  # [B, L, D] the sequence the denoiser cross-attends to
    mask: Tensor  # [B, L] bool, True = real token
    losses: dict[str, Tensor] = field(default_factory=dict)  # weighted auxiliary losses (e.g. the prior's)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # logged, not optimised
    segments: tuple[int, ...] | None = None  # lengths of the parts joined along L (Kaleido: c, z); None: one


@dataclass
class Generation:
    images: Tensor  # [N, 3, H, W] in [-1, 1], on the CPU
    conditions: list[str]
    latent_texts: list[str] | None  # the editable z each image was drawn from (None for the baseline)


def _rename_legacy_keys(module: torch.nn.Module, state_dict: dict, prefix: str, *args: object) -> None:  # noqa: ARG001
    rename_keys(state_dict, prefix, {"unet.": "denoiser."})


class ConditionalDiffusion(GradientClipping, LightningModule, ABC):
    """Base class. Subclasses say how a batch becomes a conditioning sequence (``condition``)."""

    uses_latents: ClassVar[bool] = False

    def __init__(
        self,
        tokenizer: KaleidoTokenizer | None,
        image_size: int,
        t5: T5Settings | dict | None,
        unet: UNetSettings | dict | None,
        denoiser: DenoiserFactory | dict | None,
        diffusion: DiffusionSettings | dict | None,
        sampling: SamplingSettings | dict | None,
        optimizer: OptimizerSettings | dict | None,
        compile: Compile,
        extra_hparams: dict[str, Any],
    ) -> None:
        super().__init__()
        if tokenizer is None:
            raise ValueError(
                f"{type(self).__name__} needs the tokenizer built by the data module: the CLI links it "
                "(data → model); in Python pass tokenizer=datamodule.tokenizer or use kaleido.load(ckpt)"
            )
        names = tokenizer.latent_names
        if self.uses_latents and not names:
            raise ValueError("Kaleido needs at least one latent type in data.latents; the model without z is DiffusionModel")
        if not self.uses_latents and names:
            raise ValueError(f"DiffusionModel (the baseline) takes no latents, but the data yields {names}; use kaleido.Kaleido")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.t5_settings = from_dict(T5Settings, t5)
        if unet is not None and denoiser is not None:
            raise ValueError(
                "give the denoiser once: `unet:` (the UNet's sizes) or `denoiser:` (any backbone by class_path, "
                "e.g. kaleido.nn.dit.DiT), not both"
            )
        # `unet:` is the UNet by its sizes (every config and checkpoint before issue 17); `denoiser:` any backbone.
        self.denoiser_choice = denoiser if denoiser is not None else {
            "class_path": "kaleido.nn.unet.UNet", "init_args": {"in_channels": 3, **to_dict(from_dict(UNetSettings, unet))}
        }
        self._extra_hparams = extra_hparams
        self.diffusion_settings = from_dict(DiffusionSettings, diffusion)
        self.sampling = from_dict(SamplingSettings, sampling)
        self.optimizer_settings = from_dict(OptimizerSettings, optimizer)
        compile_mode(compile)  # a mode torch.compile does not know fails here, in one line
        self.compile_training = compile
        self.schedule = CosineSchedule(
            self.diffusion_settings.num_timesteps, shift=self.diffusion_settings.schedule_shift
        )
        # Checkpoints written before issue 17 name the denoiser `unet`.
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def hparams_dict(self) -> dict[str, Any]:
        """Constructor arguments as plain data (what a checkpoint stores and ``kaleido.load`` replays);
        the denoiser as its spec, ``{"class_path", "init_args"}``, whichever way it was given."""
        return {
            "image_size": self.image_size,
            "t5": to_dict(self.t5_settings),
            "unet": None,
            "denoiser": self.denoiser.spec(),
            "diffusion": to_dict(self.diffusion_settings),
            "sampling": to_dict(self.sampling),
            "optimizer": to_dict(self.optimizer_settings),
            "compile": self.compile_training,
        }

    def add_denoiser(self, cond_dim: int) -> None:
        """Build the denoiser for conditioning states of width ``cond_dim``: the last step of a subclass's
        ``__init__``. The hyperparameters are saved here, once the denoiser's spec is known (a factory
        from the config tells its class and arguments only by building)."""
        self.denoiser: Denoiser = build_denoiser(self.denoiser_choice, cond_dim=cond_dim, image_size=self.image_size)
        self.denoiser.bind_diffusion(self.schedule, self.diffusion_settings.prediction)
        self.save_hyperparameters({**self.hparams_dict(), **self._extra_hparams}, logger=True)

    def network(self, name: str, compiled: Compile, method: str | None = None) -> Callable[..., Any]:
        """The submodule ``name`` (e.g. ``"denoiser"``), or its ``torch.compile`` wrapper (static shapes);
        with ``method``, that method of it (e.g. the denoiser's ``training_outputs``), compiled the same way.
        Wrappers are built on first use and kept out of the module tree: parameter names, checkpoints
        and the EMA's copy of the model stay as without compiling, and a wrapper always runs the
        current (e.g. averaged) weights."""
        module = self.get_submodule(name)
        target = module if method is None else getattr(module, method)
        mode = compile_mode(compiled)
        if mode is None:
            return target
        cache = self.__dict__.setdefault("_compiled", {})
        key = (name if method is None else f"{name}.{method}", mode)
        if key not in cache:
            cache[key] = torch.compile(target, dynamic=False, mode=mode)
        return cache[key]

    def training_network(self, name: str, method: str | None = None) -> Callable[..., Any]:
        """Compiled (``compile: true``) in training steps only: a training step has one shape
        (``pad_to_limits``, ``drop_last``), while validation changes batch and length and would
        recompile, a minute each, for little gain. Sampling compiles on request (``sampling.compile``)."""
        return self.network(name, self.compile_training if self.training else False, method)

    @property
    def conditioning_limit(self) -> int:
        """The longest conditioning sequence the tokenizer lets through (condition, then z)."""
        tok = self.tokenizer
        return tok.max_condition_length + (tok.max_latent_length if self.uses_latents else 0)

    # -- conditioning ---------------------------------------------------------------------------
    @abstractmethod
    def condition(self, batch: dict[str, Any]) -> Conditioning:
        """Token ids of a batch → the denoiser's conditioning sequence (+ auxiliary losses)."""

    # -- training ---------------------------------------------------------------------------------
    def diffusion_loss_terms(
        self, images: Tensor, cond: Conditioning, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """MSE on the chosen target at uniform t (optionally Min-SNR weighted); each row's whole
        conditioning dropped w.p. p_uncond. Every output of the denoiser's ``training_outputs`` is scored
        against the target average-pooled to its side: returns the weighted sum and each side's MSE."""
        batch = images.shape[0]
        t = self.schedule.sample_timesteps(batch, images.device, generator)
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
        uncond = torch.rand(batch, device=images.device, generator=generator) < self.diffusion_settings.p_uncond
        x_t = self.schedule.add_noise(images, noise, t)
        outputs = self.training_network("denoiser", "training_outputs")(x_t, t, cond.states, cond.mask, uncond)
        target = self.schedule.target(images, noise, t, self.diffusion_settings.prediction)
        sides = [out.prediction.shape[-1] for out in outputs]
        if len(set(sides)) != len(sides):
            raise ValueError(f"the denoiser's training_outputs must give one output per resolution, got sides {sides}")
        terms = {side: self._mse(out.prediction, downsample_to(target, side), t) for side, out in zip(sides, outputs, strict=True)}
        loss = sum((out.weight * terms[side] for side, out in zip(sides, outputs, strict=True)), torch.zeros((), device=images.device))
        return loss, terms

    def diffusion_loss(self, images: Tensor, cond: Conditioning, generator: torch.Generator | None = None) -> Tensor:
        """The diffusion loss alone (``diffusion_loss_terms``' weighted sum)."""
        return self.diffusion_loss_terms(images, cond, generator)[0]

    def _mse(self, output: Tensor, target: Tensor, t: Tensor) -> Tensor:
        settings = self.diffusion_settings
        if settings.loss_weighting == "uniform":
            return F.mse_loss(output.float(), target.float())
        per_sample = (output.float() - target.float()).square().flatten(1).mean(1)
        return (self.schedule.min_snr_weight(t, settings.prediction, settings.min_snr_gamma) * per_sample).mean()

    def _step(self, batch: dict[str, Any], stage: str, generator: torch.Generator | None = None) -> Tensor:
        cond = self.condition(batch)
        loss_diff, terms = self.diffusion_loss_terms(batch["image"], cond, generator)
        loss = loss_diff + sum(cond.losses.values(), torch.zeros((), device=loss_diff.device))
        options = log_options(stage, batch["image"].shape[0])
        self.log(f"{stage}/loss", loss, prog_bar=True, **options)
        self.log(f"{stage}/loss_diff", loss_diff, **options)
        if len(terms) > 1:  # a multi-resolution denoiser: each side's (unweighted) MSE
            for side, value in terms.items():
                self.log(f"{stage}/loss_diff_{side}px", value, **options)
        for name, value in {**cond.losses, **cond.metrics}.items():
            self.log(f"{stage}/{name}", value, **options)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: ARG002
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # Fixed noise per batch so validation losses compare across epochs.
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        return self._step(batch, "val", generator)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        return self._step(batch, "test", generator)

    def configure_optimizers(self) -> dict[str, Any]:
        return adam_with_warmup(self.parameters(), self.optimizer_settings)

    def on_train_start(self) -> None:
        # After a resume restored the optimiser: its moments in the layout of the parameters, whichever
        # `channels_last` the checkpoint was written with.
        for optimizer in self.trainer.optimizers:
            lay_out_like_parameters(optimizer)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_record(self, self.tokenizer)

    # -- sampling ---------------------------------------------------------------------------------
    def encode_conditions(self, conditions: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer.encode_conditions(conditions)
        return ids.to(self.device), mask.to(self.device)

    def sample_images(
        self, cond: Conditioning, cfg_scale: float, sampler: str, num_steps: int, generator: torch.Generator,
        compile: Compile = False, progress: bool = False, guider: Guider | None = None,
    ) -> Tensor:
        """x ~ sampler(denoiser, cond, γ), guided by ``guider`` (default plain CFG). The guider's own noise
        (CADS) comes from a generator seeded apart, so the image noise is the same for every guider."""
        shape = (cond.states.shape[0], 3, self.image_size, self.image_size)
        noise = torch.randn(shape, device=self.device, generator=generator)
        states, mask, segments = cond.states, cond.mask, cond.segments or (cond.states.shape[1],)
        if compile:  # one conditioning length for every batch: the compiled graph is reused, not rebuilt
            extra = max(0, self.conditioning_limit - states.shape[1])
            states, mask = F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)
            segments = (*segments[:-1], segments[-1] + extra)  # padding joins the last part (masked out)
        own = torch.Generator(self.device).manual_seed(generator.initial_seed() + 2)  # + 1 draws z
        denoise = guided_denoiser(
            self.network("denoiser", compile), states, mask, guider or build_guider(None), cfg_scale,
            self.schedule, self.diffusion_settings.prediction, own, segments,
        )
        run = build_sampler(sampler, self.schedule, num_steps, prediction=self.diffusion_settings.prediction)  # type: ignore[arg-type]
        return run(denoise, noise, generator=generator, progress=progress)

    @torch.no_grad()
    def generate(
        self,
        conditions: Sequence[str],
        *,
        latents: Sequence[str | None] | None = None,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        compile: Compile | None = None,
        guider: GuiderSpec | Guider | None = None,
    ) -> Generation:
        """Sample one image per condition. ``latents`` (Kaleido only): an editable z per condition that
        replaces the sampled one (``None`` entries are sampled). The diffusion noise depends only on
        ``seed`` and the position, so an edited z regenerates from the same noise. ``compile``
        (default ``sampling.compile``) runs the denoiser through ``torch.compile``: worth it for long
        sweeps (2.8× the eager forward at batch 4,096 on an H100, after ~30 s of compiling); every new
        batch size compiles again, so keep the number of conditions a multiple of ``batch_size``.
        ``progress`` shows a bar over the sampler's steps for each batch. ``guider`` (default
        ``sampling.guider``, plain CFG): a guider, its name or ``{"class_path", "init_args"}``
        (docs/sampling.md)."""
        conditions = list(conditions)
        if latents is not None and len(latents) != len(conditions):
            raise ValueError(f"got {len(latents)} latents for {len(conditions)} conditions; give one per condition")
        settings = self.sampling
        guide = build_guider(settings.guider if guider is None else guider)
        images, texts = [], []
        was_training = self.training
        self.eval()
        try:
            chunks = range(0, len(conditions), batch_size)
            for start in chunks:
                part = conditions[start : start + batch_size]
                part_latents = None if latents is None else list(latents[start : start + batch_size])
                chunk_seed = seed * 1_000_003 + start
                cond, latent_texts = self.sampling_conditioning(part, part_latents, chunk_seed)
                generator = torch.Generator(self.device).manual_seed(chunk_seed)
                x = self.sample_images(
                    cond,
                    settings.cfg_scale if cfg_scale is None else cfg_scale,
                    sampler or settings.sampler,
                    num_steps or settings.num_steps,
                    generator,
                    settings.compile if compile is None else compile,
                    progress,
                    guide,
                )
                images.append(x.float().cpu())
                texts += latent_texts or []
        finally:
            self.train(was_training)
        return Generation(torch.cat(images), conditions, texts if self.uses_latents else None)

    @abstractmethod
    def sampling_conditioning(
        self, conditions: list[str], latents: list[str | None] | None, seed: int
    ) -> tuple[Conditioning, list[str] | None]:
        """The conditioning for sampling (Kaleido draws z here) and the latent texts used."""

    def num_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in module.parameters()) for name, module in self.named_children()}


