"""Where a training step's time goes, on the GPU: data loading, prior, denoiser, optimiser, EMA.

    python benchmarks/profile_step.py --config_path configs/shapes/kaleido_text_gpu.yaml --output DIR
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch
from jsonargparse import CLI
from lightning.pytorch import LightningDataModule, LightningModule
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from kaleido.cli import KaleidoCLI


def timed(fn, steps: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def training_step(model: LightningModule, batch: dict, opt: torch.optim.Optimizer) -> None:
    """Forward (bf16 autocast), backward and Adam: the step Lightning runs, without the loop around it."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cond = model.condition(batch)
        loss = model.diffusion_loss(batch["image"], cond) + sum(cond.losses.values())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def pad_length(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 (the sequence; ids, masks and [B, L, G] geometry features alike) to ``length``."""
    return torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, length - tensor.shape[1]))


def scaling(model: LightningModule, batches: list[dict], batch_sizes: list[int], compile: bool) -> dict[str, float]:
    """Seconds per training step (and images/s) at each batch size, eager, then compiled (UNet and prior)."""
    images = torch.cat([b["image"] for b in batches])
    results: dict[str, float] = {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for compiled in [False, True] if compile else [False]:
        model.compile_training = compiled  # the model's own path: compiled for training steps
        for size in batch_sizes:
            keys = [k for k in batches[0] if torch.is_tensor(batches[0][k]) and k != "image"]
            width = {k: max(b[k].shape[1] for b in batches) for k in keys}  # pad to one static length
            batch = {k: torch.cat([pad_length(b[k], width[k]) for b in batches])[:size].cuda() for k in keys}
            batch["image"] = images[:size].cuda()
            step = partial(training_step, model, batch, opt)

            tag = f"{'compiled' if compiled else 'eager'}_b{size}"
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            results[f"{tag}_first_step_s"] = time.perf_counter() - start
            results[f"{tag}_step_s"] = seconds = timed(step)
            results[f"{tag}_images_per_s"] = size / seconds
            print(tag, f"{seconds:.4f} s/step", f"{size / seconds:.0f} img/s", flush=True)
    return results


def main(
    config_path: Path,
    output: Path = Path("profile"),
    loader_batches: int = 40,
    batch_sizes: list[int] | None = None,
    compile: bool = False,
) -> None:
    """Profile one configuration; with ``batch_sizes`` only measure step time per batch size (and compiled)."""
    cli = KaleidoCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     run=False, args=["--config", str(config_path)], save_config_callback=None)
    model, data = cli.model.cuda(), cli.datamodule
    results: dict[str, float] = {}
    loader = iter(data.train_dataloader())
    start = time.perf_counter()
    batches = [next(loader) for _ in range(loader_batches)]
    results["loader_batches_per_s"] = loader_batches / (time.perf_counter() - start)
    if batch_sizes:
        results.update(scaling(model, batches, batch_sizes, compile))
        output.mkdir(parents=True, exist_ok=True)
        (output / "scaling.json").write_text(json.dumps(results, indent=2))
        return
    batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batches[-1].items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = partial(training_step, model, batch, opt)

    def prior_only() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cond = model.condition(batch)
            loss = cond.states.float().square().mean() + sum(cond.losses.values())
        loss.backward()

    def unet_only() -> None:
        cond = model.condition(batch)
        states = cond.states.detach()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.diffusion_loss(batch["image"], type(cond)(states, cond.mask))
        loss.backward()

    torch.backends.cudnn.benchmark = False
    results["step_s"] = timed(step)
    torch.backends.cudnn.benchmark = True
    results["step_s_cudnn_benchmark"] = timed(step)
    results["prior_fwd_bwd_s"] = timed(prior_only)
    results["unet_fwd_bwd_s"] = timed(unet_only)
    ema = AveragedModel(model, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
    results["ema_avg_fn_s"] = timed(lambda: ema.update_parameters(model))
    ema_multi = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    results["ema_multi_avg_fn_s"] = timed(lambda: ema_multi.update_parameters(model))
    model.to(memory_format=torch.channels_last)
    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    results["step_s_channels_last"] = timed(step)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    output.mkdir(parents=True, exist_ok=True)
    (output / "profile_table.txt").write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    (output / "profile.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    CLI(main, as_positional=False)
