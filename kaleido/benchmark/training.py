"""The benchmark's training measures (the method: :mod:`kaleido.benchmark`): the training step and its
parts, its FLOPs, the denoiser-only step, fit's optimiser step, and the report's training numbers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.flop_counter import flop_registry

from kaleido.benchmark.clock import Clock, seconds_per_call, sync
from kaleido.benchmark.profile import profile_steps
from kaleido.benchmark.roofline import TrafficMode
from kaleido.modules.base import ConditionalDiffusion, Conditioning

PARTS = ("loader", "conditioning", "denoiser", "optimizer")

# The counter has formulas for CUDA's fused attention only; the CPU's flash kernel gets CUDA's flash
# formulas, so a config counts the same FLOPs on both (the backward recomputes the scores: 2.5× the forward).
_ATTENTION = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _ATTENTION._scaled_dot_product_flash_attention_for_cpu: flop_registry[_ATTENTION._scaled_dot_product_flash_attention].__wrapped__,
    _ATTENTION._scaled_dot_product_flash_attention_for_cpu_backward: flop_registry[_ATTENTION._scaled_dot_product_flash_attention_backward].__wrapped__,
}


def training_parts(
    model: ConditionalDiffusion, batch: dict[str, Any], autocast: Callable[[], AbstractContextManager]
) -> Iterator[str]:
    """One training step's forward and backward, yielding the name of each part as it ends (the method in
    :mod:`kaleido.benchmark`: the backward split at the conditioning)."""
    with autocast():
        cond = model.condition(batch)
    yield "conditioning"
    states = cond.states.detach().requires_grad_(cond.states.requires_grad)
    with autocast():
        loss = model.diffusion_loss(batch["image"], Conditioning(states, cond.mask))
    loss.backward()
    yield "denoiser"
    roots = [(cond.states, states.grad)] if states.grad is not None else []
    roots += [(aux, None) for aux in cond.losses.values() if aux.requires_grad]
    if roots:
        torch.autograd.backward(*zip(*roots))
    yield "conditioning"


@contextmanager
def _eager(model: ConditionalDiffusion) -> Iterator[None]:
    """The model's training steps without their compiled wrappers, for work done once (a recompile would cost more)."""
    compiled, model.compile_training = model.compile_training, False
    try:
        yield
    finally:
        model.compile_training = compiled


def count_flops(
    model: ConditionalDiffusion, batch: dict[str, Any], autocast: Callable[[], AbstractContextManager],
) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
    """FLOPs of one step's forward and backward, by part, counted on the eager model (the counter cannot
    see inside compiled graphs); and every operator's (name, FLOPs, bytes moved), the roofline's input."""
    flops = dict.fromkeys(("conditioning", "denoiser"), 0)
    with _eager(model), TrafficMode(CPU_ATTENTION_FLOPS) as traffic:
        done = 0
        for part in training_parts(model, batch, autocast):
            flops[part] += sum(count for _, count, _ in traffic.calls[done:])
            done = len(traffic.calls)
    model.zero_grad(set_to_none=True)
    return flops, traffic.calls


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def measure_training(
    model: ConditionalDiffusion, loader: Any, optimizer_step: Callable[[], None], device: str,
    autocast: Callable[[], AbstractContextManager], steps: int, warmup: int, profile: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seconds per step, the first step apart (it compiles), each part's seconds per step, the device's peak
    memory over the timed steps, allocated and reserved (CUDA; None elsewhere); the last batch. Under CUDA
    graphs the allocated peak misses the graphs' own memory pool (allocated at capture, replayed without the
    allocator): read the reserved one.
    ``profile`` > 0: that many more steps under the profiler (:func:`profile_steps`), under ``"profile"``."""
    batches = _endless(loader)
    batch: dict[str, Any] = {}

    def step(clock: Clock) -> None:
        nonlocal batch
        batch = move_data_to_device(next(batches), device)  # non-blocking from pinned memory, as fit copies
        clock.mark("loader")
        for part in training_parts(model, batch, autocast):
            clock.mark(part)
        optimizer_step()
        clock.mark("optimizer")

    first = Clock(device)  # its loader part is the workers starting: kept out of the compile time
    first.mark("start")
    step(first)
    first_parts = first.seconds()
    for _ in range(warmup):
        step(Clock(device))
    clock = Clock(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    clock.mark("start")
    for _ in range(steps):
        step(clock)
    sync(device)
    elapsed = time.perf_counter() - start
    parts = clock.seconds()
    measured = {
        "step_s": elapsed / steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        "first_step_s": sum(first_parts.values()),
        "first_step_loader_s": first_parts["loader"],
        "part_s": {p: parts.get(p, 0.0) / steps for p in PARTS},
    }
    if profile:
        measured["profile"] = profile_steps(lambda: step(Clock(device)), profile, device)
    batches.close()  # stops the loader's workers
    return measured, batch


def measure_denoiser_only(
    model: ConditionalDiffusion, batch: dict[str, Any], optimizer_step: Callable[[], None], device: str,
    autocast: Callable[[], AbstractContextManager], steps: int, warmup: int,
) -> float:
    with _eager(model), torch.no_grad(), autocast():
        cond = model.condition(batch)
    states = cond.states.detach().requires_grad_()  # as in the full step, the denoiser also returns its gradient
    fixed = Conditioning(states, cond.mask)

    def step() -> None:
        with autocast():
            loss = model.diffusion_loss(batch["image"], fixed)
        loss.backward()
        optimizer_step()
        states.grad = None

    return seconds_per_call(step, device, steps, warmup)[1]


def fit_optimizer_step(model: ConditionalDiffusion, trainer: Any) -> Callable[[], None]:
    """The model's optimiser (``configure_optimizers``) stepped as the trainer steps it: clipping as the
    config's ``gradient_clip_val`` / ``_algorithm`` say, then ``step`` and ``zero_grad``."""
    optimizer = model.configure_optimizers()["optimizer"]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    clip_value = trainer.get("gradient_clip_val")
    clip = torch.nn.utils.clip_grad_value_ if trainer.get("gradient_clip_algorithm") == "value" else torch.nn.utils.clip_grad_norm_

    def step() -> None:
        if clip_value:
            clip(parameters, clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def rates(
    training: dict[str, Any], flops: dict[str, int], denoiser_only_s: float, batch_size: int, peak_tflops: float | None, compiled: bool,
    matmul_tflops: float | None = None,
) -> dict[str, Any]:
    """The training numbers of the report: images/s, FLOPs, MFU, shares; the denoiser-only step."""
    per_image = sum(flops.values()) / batch_size
    images_per_s = batch_size / training["step_s"]
    achieved = per_image * images_per_s / 1e12
    total = sum(training["part_s"].values())
    compute_s = total - training["part_s"]["loader"]  # the step as if the next batch were waiting
    return {
        "training": {
            "images_per_s": images_per_s,
            "step_s": training["step_s"],
            "first_step_s": training["first_step_s"],
            "first_step_loader_s": training["first_step_loader_s"],
            "peak_memory_gib": training.get("peak_memory_gib"),
            "peak_reserved_gib": training.get("peak_reserved_gib"),
            "compile_s": max(training["first_step_s"] - training["first_step_loader_s"] - compute_s, 0.0) if compiled else None,
            "flops_per_image": per_image,
            "flops_per_image_by_part": {part: count / batch_size for part, count in flops.items()},
            "achieved_tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None,
            "mfu_of_matmul": achieved / matmul_tflops if matmul_tflops else None,
            "shares": {part: seconds / total for part, seconds in training["part_s"].items()},
            "part_s": training["part_s"],
            "profile": training.get("profile"),
        },
        "denoiser_only": {
            "step_s": denoiser_only_s,
            "images_per_s": batch_size / denoiser_only_s,
            "step_over_denoiser_only": compute_s / denoiser_only_s,
        },
    }
