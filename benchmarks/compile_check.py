"""Does ``compile: true`` (training) and ``generate(compile=True)`` (sampling) change anything for a
config? One training step's loss and gradients and a few samples, eager against compiled, from the
same weights, batch and seeds; prints the largest differences and the compile times.

    python benchmarks/compile_check.py --config_path configs/shapes/kaleido_text_gpu.yaml
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from jsonargparse import CLI
from lightning.pytorch import LightningDataModule, LightningModule

from kaleido.cli import KaleidoCLI


def main(config_path: Path, batch_size: int = 64, num_samples: int = 8, sampling_steps: int = 10) -> dict:
    cli = KaleidoCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     args=["--config", str(config_path), "--data.init_args.pad_to_limits", "true",
                           "--data.init_args.batch_size", str(batch_size), "--data.init_args.num_workers", "0"],
                     save_config_callback=None)  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager = cli.model.to(device).train()
    compiled = copy.deepcopy(eager)
    eager.compile_training, compiled.compile_training = False, True
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(iter(cli.datamodule.train_dataloader())).items()}
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    losses, seconds = {}, {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        with autocast:
            loss = model.diffusion_loss(batch["image"], model.condition(batch), torch.Generator(device).manual_seed(0))
        loss.backward()
        losses[name], seconds[f"{name}_training_step"] = loss.item(), time.perf_counter() - start
    gradient_diff = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(eager.parameters(), compiled.parameters()) if a.grad is not None
    )
    conditions = ["a circle", "a square"] * (num_samples // 2)
    samples = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        with autocast:
            samples[name] = model.eval().generate(conditions, num_steps=sampling_steps, seed=0, compile=name == "compiled")
        seconds[f"{name}_sampling"] = time.perf_counter() - start
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "loss": losses,
        "max_gradient_difference": gradient_diff,
        "max_image_difference": (samples["eager"].images - samples["compiled"].images).abs().max().item(),
        "same_latents": samples["eager"].latent_texts == samples["compiled"].latent_texts,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    CLI(main, as_positional=False)
