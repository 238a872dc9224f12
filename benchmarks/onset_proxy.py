"""A CPU-sized look at when a Kaleido denoiser starts to read z: reduced shapes (24², 1–2 medium or
large objects on black), a tiny model, and text adherence (every object's colour and shape) to the
ground-truth latents of 48 validation scenes every ``probe_every`` steps, for each seed.

    python benchmarks/onset_proxy.py --seeds [0,1,2] --steps 900 --output onset.jsonl

``--model_args`` adds Kaleido arguments, e.g. ``'{"detach_latent_states": true}'``; its ``unet`` entry
changes fields of the proxy's denoiser, e.g. ``'{"unet": {"qk_norm": true}}'``, and its ``optimizer``
entry those of its optimiser (lr 2e-3, 50 warm-up steps), e.g. ``'{"optimizer": {"lr": 4e-3}}'``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import CLI
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

import kaleido
from kaleido.data.shapes import ShapesConfig, condition_text
from kaleido.latents import TextLatent
from kaleido.metrics.adherence import text_adherence
from kaleido.modules.settings import OptimizerSettings, SamplingSettings, T5Settings, UNetSettings


class AdherenceProbe(Callback):
    """Text adherence of samples drawn from given latents, every ``every`` optimiser steps."""

    def __init__(self, every: int, conditions: list[str], latents: list[str]) -> None:
        self.every, self.conditions, self.latents = every, conditions, latents
        self.curve: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every:
            return
        pl_module.eval()
        with torch.no_grad():
            out = pl_module.generate(self.conditions, latents=self.latents, seed=0)
        pl_module.train()
        self.curve.append((trainer.global_step, round(text_adherence(out.images, self.latents).objects, 3)))


def run(seed: int, steps: int, probe_every: int, model_args: dict[str, Any]) -> dict[str, Any]:
    shapes = ShapesConfig(resolution=24, max_objects=2, sizes=["medium", "large"], backgrounds=["black"])
    data = kaleido.ShapesDataModule(
        latents=[TextLatent(grammar="shapes")], shapes=shapes, num_train=8000, num_val=48, batch_size=32
    )
    scenes, extracted = data.shapes_split("val"), data.split_latents("val")
    text = data.latent_types[0]
    conditions = [condition_text(scenes.scene(i)) for i in range(48)]
    latents = [text.format(extracted(i, scenes.scene(i))["text"]) for i in range(48)]
    kaleido_args = {key: value for key, value in model_args.items() if key not in ("unet", "optimizer")}
    unet = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, cond_layers=1)
    unet.update(model_args.get("unet", {}))
    optimizer = {"lr": 2e-3, "warmup_steps": 50, **model_args.get("optimizer", {})}
    seed_everything(seed)  # the model's initialisation and the batch order; the data stays the same
    model = kaleido.Kaleido(
        tokenizer=data.tokenizer,
        image_size=24,
        t5=T5Settings(d_model=64, d_ff=128, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=32),
        unet=UNetSettings(**unet),
        optimizer=OptimizerSettings(**optimizer),
        sampling=SamplingSettings(sampler="ddim", num_steps=20, cfg_scale=3.0),
        **kaleido_args,
    )
    probe = AdherenceProbe(probe_every, conditions, latents)
    start = time.time()
    Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[probe],
    ).fit(model, datamodule=data)
    return {"seed": seed, "model_args": model_args, "curve": probe.curve, "seconds": round(time.time() - start)}


def main(
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (jsonargparse reads the default)
    steps: int = 900,
    probe_every: int = 100,
    model_args: str = "{}",
    output: Path | None = None,
) -> list[dict[str, Any]]:
    results = []
    for seed in seeds:
        results.append(run(seed, steps, probe_every, json.loads(model_args)))
        print(json.dumps(results[-1]), flush=True)
        if output is not None:
            output.write_text("".join(json.dumps(r) + "\n" for r in results))
    return results


if __name__ == "__main__":
    CLI(main, as_positional=False)
