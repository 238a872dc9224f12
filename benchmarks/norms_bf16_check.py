"""Does a short bf16-mixed run learn the same with kaleido's bf16-output norms as with PyTorch's float32-out
ones (docs/choices.md, "Norms under autocast")? The setting of tests/test_adherence_training.py (16², one
object on black, a tiny Kaleido, lr 3e-3) trained under ``precision: bf16-mixed``, then each colour × shape
latent given twice; the analytic parser reads back how often the colour and the shape follow z.

    python benchmarks/norms_bf16_check.py --norms kaleido --seed 0      # and --norms torch, seeds 0-2
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

import kaleido
import kaleido.nn.norms as norms
from kaleido.modules.settings import OptimizerSettings, SamplingSettings, T5Settings, UNetSettings
from kaleido.shapes import ShapesDataModule, ShapesTextLatent
from kaleido.shapes.parser import parse_image
from kaleido.shapes.scenes import COLORS, SHAPES, ShapesConfig


def torch_norms() -> None:
    """The behaviour before the change: under autocast, PyTorch's float32 norm with a float32 output."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return super(norms._Bf16Output, self).forward(x)  # type: ignore[misc]

    norms._Bf16Output.forward = forward  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", choices=("kaleido", "torch"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.norms == "torch":
        torch_norms()
    seed_everything(args.seed)
    shapes = ShapesConfig(resolution=16, max_objects=1, sizes=["large"], backgrounds=["black"])
    data = ShapesDataModule(latents=[ShapesTextLatent()], shapes=shapes, num_train=4000, batch_size=32)
    model = kaleido.Kaleido(
        tokenizer=data.tokenizer, image_size=16,
        t5=T5Settings(d_model=64, d_ff=128, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=32),
        unet=UNetSettings(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, cond_layers=1),
        optimizer=OptimizerSettings(lr=3e-3, warmup_steps=50),
        sampling=SamplingSettings(sampler="ddim", num_steps=20, cfg_scale=3.0),
    )
    start = time.time()
    Trainer(
        max_steps=args.steps, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    ).fit(model, datamodule=data)
    seconds = time.time() - start
    latents = [f"a large {color} {shape} in the center, on a black background" for color in COLORS for shape in SHAPES]
    colour = shape = 0
    for seed in (0, 1):
        out = model.generate([f"a {z.split()[3]}" for z in latents], latents=latents, seed=seed)
        for image, latent in zip(out.images, latents):
            objects = parse_image(image)
            colour += bool(objects) and objects[0].color == latent.split()[2]
            shape += bool(objects) and objects[0].shape == latent.split()[3]
    total = 2 * len(latents)
    print(f"{args.norms} norms, seed {args.seed}, {args.steps} steps ({seconds:.0f} s): "
          f"colour follows z in {colour / total:.0%}, shape in {shape / total:.0%} ({total} samples)")


if __name__ == "__main__":
    main()
