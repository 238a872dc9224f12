"""``python -m kaleido benchmark``: how fast a training config trains and samples (docs/performance.md).

The model and the data module are built from the config as ``fit`` builds them (KaleidoCLI: its links of
the tokenizer and the image size, its seed), without a Trainer: the benchmark runs the steps itself.

How each number is measured:

* **Training step**: the loop of ``fit`` without Lightning around it: the next batch from the config's
  training loader (its ``num_workers``) moved to the device, the model's conditioning and diffusion loss
  under autocast, the backward, gradient clipping as the config's trainer clips, Adam from
  ``configure_optimizers``, ``zero_grad``. Not included: logging, callbacks (EMA), the learning-rate
  scheduler. ``step_s`` is the host clock over ``steps`` steps after ``warmup`` steps, synchronised with
  the GPU at both ends and never in between (the GPU runs ahead of the host as in ``fit``).
* **Shares**: a mark at each boundary of every step (CUDA events recorded on the stream, read once after
  the loop; the host clock on a CPU, where work is synchronous), each interval named by the part it ends.
  ``loader``: from the end of the previous step to the batch being on the device (waiting on the loader
  and the copy; on a GPU, only the time the stream starved). ``conditioning``: the prior (Kaleido: T5
  encoder and decoder, AR loss, latent conditioner) or the condition encoder (baseline), forward and
  backward. ``denoiser``: the noise, the denoiser's forward, the loss and its backward. ``optimizer``:
  clipping, Adam, ``zero_grad``. The backward is split at the conditioning (the denoiser's first, then
  the conditioning's, fed the gradient the denoiser sent it): the gradients of one backward of the total
  loss, with a boundary to time at. The intervals tile the loop, so the shares sum to 1.
* **FLOPs per image**: ``torch.utils.flop_counter.FlopCounterMode`` over one step's forward and backward
  (eager: the counter cannot see inside compiled graphs), divided by the batch size; matmuls,
  convolutions and attention (what the counter counts; the optimiser's element-wise work is not).
  **MFU** = FLOPs per image × images/s / the peak: the ``--peak_tflops`` given, else :data:`PEAK_TFLOPS`
  by the GPU's name; none on a CPU, where MFU is null.
* **Denoiser-only step**: the same model, batch and optimiser with the conditioning computed once without
  gradient: the denoiser's forward and backward and the optimiser's step, the prior neither run nor
  trained. ``step / denoiser-only`` is what the prior costs at equal denoiser.
* **Sampling**: one raw denoiser forward of the doubled batch (2B rows: conditional and unconditional)
  against one CFG sampling step, the marginal cost of a step of ``generate``:
  ``(T(sample_steps) - T(1)) / (sample_steps - 1)`` (the conditioning and the z drawn cancel out); and
  the whole ``generate`` (z drawn, conditioning, every step) in images/s, for each sampler.

``--compile true`` runs the model's own ``compile`` path (the denoiser and the prior through
``torch.compile``, static batch shapes); the first step, which compiles, is reported apart.
"""

from __future__ import annotations

import json
import math
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from kaleido.__about__ import __version__
from kaleido.cli import KaleidoCLI
from kaleido.data.contract import require_data
from kaleido.devices import resolve_device
from kaleido.modules.base import ConditionalDiffusion, Conditioning
from kaleido.modules.settings import SamplingSettings

# Dense (no sparsity) tensor-core peaks in TFLOP/s, (bf16, tf32), from NVIDIA's data sheets (A100; H100
# and H200, whose sheets give twice these "with sparsity"). Matched in order: the first key the GPU's
# name contains. fp32 training runs its matmuls in TF32 (``set_float32_matmul_precision("high")``, as fit).
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200 NVL": (835.5, 417.5),
    "H200": (989.4, 494.7),
    "H100 NVL": (835.5, 417.5),
    "H100 PCIe": (756.5, 378.0),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
}
SAMPLERS: tuple[str, ...] = typing.get_args(typing.get_type_hints(SamplingSettings)["sampler"])
PARTS = ("loader", "conditioning", "denoiser", "optimizer")

# The counter has formulas for CUDA's fused attention only; the CPU's flash kernel gets CUDA's flash
# formulas, so a config counts the same FLOPs on both (the backward recomputes the scores: 2.5× the forward).
_ATTENTION = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _ATTENTION._scaled_dot_product_flash_attention_for_cpu: flop_registry[_ATTENTION._scaled_dot_product_flash_attention].__wrapped__,
    _ATTENTION._scaled_dot_product_flash_attention_for_cpu_backward: flop_registry[_ATTENTION._scaled_dot_product_flash_attention_backward].__wrapped__,
}


class _ModelAndData(KaleidoCLI):
    """fit's parsing, links and seed, without a Trainer: a GPU config's ``accelerator: gpu`` does not matter."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]  # noqa: ARG002
        return None


def build(config: Path, overrides: list[str]) -> tuple[ConditionalDiffusion, LightningDataModule, Any]:
    """The model, the data module and the ``trainer`` section of a training config, as ``fit`` builds them."""
    if not config.is_file():
        raise FileNotFoundError(f"no config at {config}")
    with warnings.catch_warnings():  # LightningCLI warns that sys.argv holds more: the benchmark's own flags
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        cli = _ModelAndData(
            LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            args=["--config", str(config), *overrides], save_config_callback=None,
        )
    if not isinstance(cli.model, ConditionalDiffusion):
        raise TypeError(f"{config} trains a {type(cli.model).__name__}; the benchmark measures diffusion models (Kaleido, DiffusionModel)")
    return cli.model, require_data(cli.datamodule, "benchmark"), cli.config["trainer"]


def _precision(given: str | None, trainer_precision: object) -> str:
    if given is not None:
        return given
    mapping = {"bf16-mixed": "bf16", "bf16": "bf16", "32": "32", "32-true": "32", "None": "32"}
    if str(trainer_precision) not in mapping:
        raise ValueError(f"the config's trainer.precision {trainer_precision!r} is not measured here; pass --precision bf16 or 32")
    return mapping[str(trainer_precision)]


def peak(device: str, precision: str, given: float | None) -> tuple[float | None, str]:
    """The peak TFLOP/s an MFU is read against, and where it comes from (or why there is none)."""
    if given is not None:
        return given, "--peak_tflops"
    if torch.device(device).type != "cuda":
        return None, "no peak for a CPU: MFU is null (pass --peak_tflops for one)"
    name = torch.cuda.get_device_name(device)
    for key, (bf16, tf32) in PEAK_TFLOPS.items():
        if key in name:
            kind = "bf16" if precision == "bf16" else "tf32"
            return (bf16 if kind == "bf16" else tf32), f"NVIDIA data sheet, {key}, dense {kind}"
    return None, f"{name} is not in kaleido.benchmark.PEAK_TFLOPS: MFU is null (pass --peak_tflops)"


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Marks in the order work is issued, each interval named by the part that ends it: CUDA events on a
    GPU (no host sync in the loop; read once at the end), the host clock on a CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.cuda = device, torch.device(device).type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        _sync(self.device)
        totals: dict[str, float] = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:]):
            totals[name] = totals.get(name, 0.0) + (start.elapsed_time(end) / 1000 if self.cuda else end - start)
        return totals


def _seconds_per_call(fn: Callable[[], object], device: str, calls: int, warmup: int) -> tuple[float, float]:
    """Seconds of the first call (a compiled network compiles in it) and per call after ``warmup`` more."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return first, (time.perf_counter() - start) / calls


def training_parts(
    model: ConditionalDiffusion, batch: dict[str, Any], autocast: Callable[[], AbstractContextManager]
) -> Iterator[str]:
    """One training step's forward and backward, yielding the name of each part as it ends (the module
    docstring: the backward split at the conditioning)."""
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


def count_flops(model: ConditionalDiffusion, batch: dict[str, Any], autocast: Callable[[], AbstractContextManager]) -> dict[str, int]:
    """FLOPs of one step's forward and backward, by part, counted on the eager model (the counter cannot
    see inside compiled graphs)."""
    flops = dict.fromkeys(("conditioning", "denoiser"), 0)
    with _eager(model), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        done = 0
        for part in training_parts(model, batch, autocast):
            flops[part] += counter.get_total_flops() - done
            done = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    return flops


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def measure_training(
    model: ConditionalDiffusion, loader: Any, optimizer_step: Callable[[], None], device: str,
    autocast: Callable[[], AbstractContextManager], steps: int, warmup: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seconds per step, the first step apart (it compiles), each part's seconds per step; the last batch."""
    batches = _endless(loader)
    batch: dict[str, Any] = {}

    def step(clock: _Clock) -> None:
        nonlocal batch
        batch = move_data_to_device(next(batches), device)  # non-blocking from pinned memory, as fit copies
        clock.mark("loader")
        for part in training_parts(model, batch, autocast):
            clock.mark(part)
        optimizer_step()
        clock.mark("optimizer")

    first = _Clock(device)  # its loader part is the workers starting: kept out of the compile time
    first.mark("start")
    step(first)
    first_parts = first.seconds()
    for _ in range(warmup):
        step(_Clock(device))
    clock = _Clock(device)
    _sync(device)
    start = time.perf_counter()
    clock.mark("start")
    for _ in range(steps):
        step(clock)
    _sync(device)
    elapsed = time.perf_counter() - start
    parts = clock.seconds()
    batches.close()  # stops the loader's workers
    return {
        "step_s": elapsed / steps,
        "first_step_s": sum(first_parts.values()),
        "first_step_loader_s": first_parts["loader"],
        "part_s": {p: parts.get(p, 0.0) / steps for p in PARTS},
    }, batch


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

    return _seconds_per_call(step, device, steps, warmup)[1]


def measure_sampling(
    model: ConditionalDiffusion, conditions: list[str], cfg_scale: float, sample_steps: int, compile: bool,
    device: str, autocast: Callable[[], AbstractContextManager], steps: int, warmup: int,
) -> dict[str, Any]:
    model.eval()
    rows = 2 * len(conditions)
    with torch.no_grad(), autocast():
        cond, _ = model.sampling_conditioning(conditions, None, 0)
    states, mask = cond.states, cond.mask
    if compile:  # the length sample_images pads to when compiling: the sampler's own graph
        extra = max(0, model.conditioning_limit - states.shape[1])
        states, mask = torch.nn.functional.pad(states, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra), value=False)
    net = model.network("denoiser", compile)
    x = torch.randn(rows, 3, model.image_size, model.image_size, device=device)
    t = torch.full((rows,), model.schedule.num_timesteps // 2, device=device)
    uncond = torch.arange(rows, device=device) >= len(conditions)
    doubled = (x, t, states.repeat(2, 1, 1), mask.repeat(2, 1), uncond)

    def forward() -> None:
        with torch.no_grad(), autocast():
            net(*doubled)

    first, raw = _seconds_per_call(forward, device, steps, warmup)
    result: dict[str, Any] = {
        "raw_forward_s": raw, "raw_forward_images_per_s": len(conditions) / raw, "first_forward_s": first, "samplers": {},
    }
    for sampler in SAMPLERS:

        def generate(num_steps: int, sampler: str = sampler) -> float:
            _sync(device)
            start = time.perf_counter()
            with autocast():  # generate returns images on the CPU: it ends synchronised
                model.generate(conditions, cfg_scale=cfg_scale, sampler=sampler, num_steps=num_steps, batch_size=len(conditions), compile=compile)
            return time.perf_counter() - start

        first = generate(2)  # the denoiser compiled in the raw forward's first call: this warms the rest
        one, full = generate(1), generate(sample_steps)
        step = max(full - one, 0.0) / (sample_steps - 1)
        result["samplers"][sampler] = {
            "first_call_s": first,
            "step_s": step,
            "step_images_per_s": len(conditions) / step if step else None,
            "step_over_raw_forward": step / raw,
            "images_per_s": len(conditions) / full,
        }
    return result


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
    training: dict[str, Any], flops: dict[str, int], denoiser_only_s: float, batch_size: int, peak_tflops: float | None, compiled: bool
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
            "compile_s": max(training["first_step_s"] - training["first_step_loader_s"] - compute_s, 0.0) if compiled else None,
            "flops_per_image": per_image,
            "flops_per_image_by_part": {part: count / batch_size for part, count in flops.items()},
            "achieved_tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None,
            "shares": {part: seconds / total for part, seconds in training["part_s"].items()},
            "part_s": training["part_s"],
        },
        "denoiser_only": {
            "step_s": denoiser_only_s,
            "images_per_s": batch_size / denoiser_only_s,
            "step_over_denoiser_only": compute_s / denoiser_only_s,
        },
    }


def benchmark(
    config: Path,
    steps: int = 20,
    warmup: int = 5,
    batch_size: int | None = None,
    compile: bool | None = None,
    precision: Literal["bf16", "32"] | None = None,
    device: str = "auto",
    peak_tflops: float | None = None,
    sample_steps: int | None = None,
    cfg_scale: float | None = None,
    output: Path = Path("benchmark.json"),
) -> dict[str, Any]:
    """Measure a training config: the training step (images/s, FLOPs, MFU, where the time goes), the
    denoiser-only step, and CFG sampling against a raw forward; print a table and write ``output``.

    Args:
        config: a training config (``fit --config``): the model and data are built from it as fit builds them.
        steps: timed steps (training, denoiser-only, raw forwards).
        warmup: untimed steps before them, after the first step (reported apart: it compiles).
        batch_size: images per step (default: the config's ``data.init_args.batch_size``).
        compile: ``torch.compile`` the model's networks for training and the denoiser for sampling (default:
            the config's ``compile``); true also sets ``data.init_args.pad_to_limits`` (one batch shape).
        precision: "bf16" (autocast) or "32" (TF32 matmuls on a GPU) (default: the config's trainer.precision).
        device: "auto" (CUDA when visible), "cpu", "cuda" or "cuda:N".
        peak_tflops: the device's peak for MFU (default: :data:`PEAK_TFLOPS` by GPU name; none on a CPU).
        sample_steps: sampler steps of the whole-sampler measure (default: the config's sampling.num_steps); >= 2.
        cfg_scale: the guidance scale of the sampling measures, not 1 (default: the config's sampling.cfg_scale).
        output: the JSON written.
    """
    for name, value, least in (("steps", steps, 1), ("warmup", warmup, 0), ("batch_size", batch_size, 1), ("sample_steps", sample_steps, 2)):
        if value is not None and value < least:
            raise ValueError(f"--{name} must be >= {least}, got {value}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"--peak_tflops must be > 0, got {peak_tflops}")
    device = resolve_device(device)
    overrides = [] if batch_size is None else ["--data.init_args.batch_size", str(batch_size)]
    if compile is not None:
        overrides += ["--model.init_args.compile", str(compile).lower()]
        overrides += ["--data.init_args.pad_to_limits", "true"] if compile else []
    model, data, trainer = build(config, overrides)
    precision = _precision(precision, trainer.get("precision"))  # type: ignore[assignment]
    cfg_scale = model.sampling.cfg_scale if cfg_scale is None else cfg_scale
    if not math.isfinite(cfg_scale) or cfg_scale < 0 or cfg_scale == 1:
        raise ValueError(f"--cfg_scale must be a finite scale >= 0 other than 1 (1 runs no unconditional half), got {cfg_scale}")
    sample_steps = model.sampling.num_steps if sample_steps is None else sample_steps
    peak_value, peak_source = peak(device, precision, peak_tflops)

    torch.set_float32_matmul_precision("high")  # as fit (cli_main): TF32 matmuls on a GPU
    if trainer.get("benchmark") is not None:
        torch.backends.cudnn.benchmark = trainer.get("benchmark")
    device_type = torch.device(device).type

    def autocast() -> AbstractContextManager:
        return torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    if len(loader) == 0:
        raise ValueError("the training split holds less than one batch: lower --batch_size")
    model.to(device).train()
    optimizer_step = fit_optimizer_step(model, trainer)
    training, batch = measure_training(model, loader, optimizer_step, device, autocast, steps, warmup)
    batch_size = len(batch["image"])
    flops = count_flops(model, batch, autocast)
    denoiser_only = measure_denoiser_only(model, batch, optimizer_step, device, autocast, steps, warmup)
    conditions = data.conditions("train", batch_size)
    if not conditions:
        raise ValueError("the data module's conditions('train') is empty: sampling needs conditions")
    conditions = (conditions * batch_size)[:batch_size]
    compiling = model.compile_training
    sampling = measure_sampling(model, conditions, cfg_scale, sample_steps, compiling, device, autocast, steps, warmup)

    result = {
        "settings": {
            "config": str(config), "steps": steps, "warmup": warmup, "batch_size": batch_size, "compile": compiling,
            "precision": precision, "device": device, "sample_steps": sample_steps, "cfg_scale": cfg_scale,
            "num_workers": getattr(data, "num_workers", None), "pad_to_limits": getattr(data, "pad_to_limits", None),
            "gradient_clip_val": trainer.get("gradient_clip_val"), "peak_tflops": peak_value, "peak_source": peak_source,
        },
        "model": type(model).__name__,
        "parameters": model.num_parameters(),
        "device_name": torch.cuda.get_device_name(device) if device_type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "kaleido": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **rates(training, flops, denoiser_only, batch_size, peak_value, compiling),
        "sampling": sampling,
    }
    print(format_table(result))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return result


def main(args: list[str]) -> dict[str, Any]:
    """``benchmark``'s command line. Its own parser: jsonargparse's ``CLI`` keeps ``--config`` for itself
    (and drops a function's own ``config`` argument), while here it names the training config, as for fit."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m kaleido benchmark", description=(benchmark.__doc__ or "").split("\n\n")[0], exit_on_error=False)
    parser.add_function_arguments(benchmark, as_group=False)
    return benchmark(**vars(parser.instantiate(parser.parse_args(args))))


def format_table(result: dict[str, Any]) -> str:
    """The JSON as one readable table."""
    s, train, only, sampling = result["settings"], result["training"], result["denoiser_only"], result["sampling"]
    mfu = "null" if train["mfu"] is None else f"{train['mfu']:.1%}"
    by_part = ", ".join(f"{part} {count / 1e9:.3g}" for part, count in train["flops_per_image_by_part"].items())
    rows = [
        ("config", f"{s['config']}  ({result['model']}, batch {s['batch_size']}, {s['precision']}, "
                   f"{'compiled' if s['compile'] else 'eager'})"),
        ("device", f"{result['device_name']}, torch {result['torch']}, {result['date']}"),
        ("training step", f"{train['step_s'] * 1e3:.1f} ms   {train['images_per_s']:.1f} images/s"),
        ("  first step", f"{train['first_step_s']:.2f} s, of which the loader's start {train['first_step_loader_s']:.2f} s"
                         + ("" if train["compile_s"] is None else f", compiling ~{train['compile_s']:.1f} s")),
        ("  GFLOP per image", f"{train['flops_per_image'] / 1e9:.3g}  ({by_part})  forward + backward"),
        ("  achieved", f"{train['achieved_tflops']:.3g} TFLOP/s   MFU {mfu}  (peak: {s['peak_source']})"),
        ("  shares", "  ".join(f"{part} {share:.0%}" for part, share in train["shares"].items())),
        ("denoiser-only step", f"{only['step_s'] * 1e3:.1f} ms   {only['images_per_s']:.1f} images/s   "
                               f"step / denoiser-only {only['step_over_denoiser_only']:.2f}"),
        (f"raw forward of 2×{s['batch_size']}", f"{sampling['raw_forward_s'] * 1e3:.1f} ms   {sampling['raw_forward_images_per_s']:.1f} images/s   "
                                               f"(first call {sampling['first_forward_s']:.2f} s)"),
    ]
    for name, m in sampling["samplers"].items():
        rows.append((f"{name} CFG {s['cfg_scale']:g} step", f"{m['step_s'] * 1e3:.1f} ms   step / raw forward {m['step_over_raw_forward']:.2f}   "
                                                           f"{s['sample_steps']} steps: {m['images_per_s']:.2f} images/s"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
