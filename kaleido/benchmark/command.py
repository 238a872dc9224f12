"""``python -m kaleido benchmark``'s command (the method: :mod:`kaleido.benchmark`): the model and data built
from a training config as ``fit`` builds them, the measures run, the table printed and the JSON written."""

from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule, LightningModule

from kaleido.__about__ import __version__
from kaleido.benchmark.fit import measure_fit
from kaleido.benchmark.host import format_host
from kaleido.benchmark.peaks import bandwidth, matmul_tflops, peak
from kaleido.benchmark.profile import format_profile
from kaleido.benchmark.roofline import format_roofline, roofline
from kaleido.benchmark.sampling import measure_sampling
from kaleido.benchmark.training import count_flops, fit_optimizer_step, measure_denoiser_only, measure_training, rates
from kaleido.cli import KaleidoCLI, pad_for_compile
from kaleido.data.contract import require_data
from kaleido.devices import resolve_device, sampling_autocast
from kaleido.modules.base import ConditionalDiffusion
from kaleido.modules.settings import Compile


class _ModelAndData(KaleidoCLI):
    """fit's parsing, links and seed, without a Trainer: a GPU config's ``accelerator: gpu`` does not matter."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]  # noqa: ARG002
        return None


def build(config: Path, overrides: list[str]) -> tuple[ConditionalDiffusion, LightningDataModule, Any]:
    """The model, the data module and the ``trainer`` section of a training config, as ``fit`` builds them."""
    return _parts(_parse(config, overrides))


def _parts(cli: _ModelAndData) -> tuple[ConditionalDiffusion, LightningDataModule, Any]:
    data = require_data(cli.datamodule, "benchmark")
    pad_for_compile(cli.model, data)  # as fit: a compiled step sees one batch shape, from the config or --compile
    return cli.model, data, cli.config["trainer"]  # type: ignore[return-value]


def _parse(config: Path, overrides: list[str]) -> _ModelAndData:
    """fit's parsing of a config: the model and data module built, the Trainer not (yet)."""
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
    return cli


def config_arguments(overrides: list[str]) -> list[str]:
    """``["key=value", ...]`` as fit's command-line arguments ``["--key", "value", ...]``."""
    arguments = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.startswith("-"):
            raise ValueError(f"--overrides: {item!r} is not key=value (e.g. model.init_args.unet.channels_last=true)")
        arguments += [f"--{key.strip()}", value]
    return arguments


def _precision(given: str | None, trainer_precision: object) -> str:
    if given is not None:
        return given
    mapping = {"bf16-mixed": "bf16", "bf16": "bf16", "32": "32", "32-true": "32", "None": "32"}
    if str(trainer_precision) not in mapping:
        raise ValueError(f"the config's trainer.precision {trainer_precision!r} is not measured here; pass --precision bf16 or 32")
    return mapping[str(trainer_precision)]


def benchmark(
    config: Path,
    steps: int = 20,
    warmup: int = 5,
    batch_size: int | None = None,
    compile: Compile | None = None,
    precision: Literal["bf16", "32"] | None = None,
    device: str = "auto",
    peak_tflops: float | None = None,
    bandwidth_tbs: float | None = None,
    sample_steps: int | None = None,
    cfg_scale: float | None = None,
    profile_steps: int = 0,
    fit_steps: int = 0,
    fit_host_profile: int = 0,
    overrides: list[str] | None = None,
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
            the config's ``compile``): true, or a ``torch.compile`` mode by name (``reduce-overhead``: CUDA
            graphs); compiling also sets ``data.init_args.pad_to_limits`` (one batch shape).
        precision: "bf16" (autocast) or "32" (TF32 matmuls on a GPU) (default: the config's trainer.precision).
        device: "auto" (CUDA when visible), "cpu", "cuda" or "cuda:N".
        peak_tflops: the device's peak for MFU (default: :data:`PEAK_TFLOPS` by GPU name; none on a CPU). On
            a GPU the report also reads the step against the rate of one large matmul measured there
            (``mfu_of_matmul``).
        bandwidth_tbs: the device's memory bandwidth in TB/s for the roofline bound (default: the data sheet's by
            GPU name, :data:`BANDWIDTH_TBS`; none on a CPU). With a peak, the report gives the fastest step the
            operators allow, eager and fused, and the MFU ceilings they set (:mod:`kaleido.benchmark.roofline`).
        sample_steps: sampler steps of the whole-sampler measure (default: the config's sampling.num_steps); >= 2.
        cfg_scale: the guidance scale of the sampling measures, not 1 (default: the config's sampling.cfg_scale).
        profile_steps: that many more training steps, and raw forwards of the doubled sampling batch, under
            ``torch.profiler`` (after the timed ones): the device's busy share, kernels per step, busy time by
            kind of kernel and the longest kernels (0: none).
        fit_steps: that many steps of Lightning's ``Trainer.fit`` on the same model and data (the config's callbacks,
            logger and progress bar; no validation), timed after ``warmup`` more: what the loop around the step costs (0: none).
            On CUDA the timed steps also count the host syncs (``.item()`` and the like) by call site.
        fit_host_profile: that many more ``Trainer.fit`` steps after the timed ones under ``cProfile``: where the
            host's time goes, the top functions in ms per step (0: none; needs ``fit_steps``).
        overrides: changes to the config as ``key=value``, each what ``fit --key value`` would set, e.g.
            ``model.init_args.unet.channels_last=true``: a variant measured without writing a config.
        output: the JSON written.
    """
    for name, value, least in (("steps", steps, 1), ("warmup", warmup, 0), ("batch_size", batch_size, 1), ("sample_steps", sample_steps, 2),
                               ("profile_steps", profile_steps, 0), ("fit_steps", fit_steps, 0),
                               ("fit_host_profile", fit_host_profile, 0)):
        if value is not None and value < least:
            raise ValueError(f"--{name} must be >= {least}, got {value}")
    for name, value in (("peak_tflops", peak_tflops), ("bandwidth_tbs", bandwidth_tbs)):
        if value is not None and not value > 0:
            raise ValueError(f"--{name} must be > 0, got {value}")
    if fit_host_profile and not fit_steps:
        raise ValueError("--fit_host_profile profiles steps after --fit_steps timed ones: give --fit_steps too")
    device = resolve_device(device)
    arguments = config_arguments(overrides or [])
    arguments += [] if batch_size is None else ["--data.init_args.batch_size", str(batch_size)]
    if compile is not None:
        arguments += ["--model.init_args.compile", str(compile).lower() if isinstance(compile, bool) else compile]
    cli = _parse(config, arguments)  # kept: --fit_steps builds the config's Trainer from it
    model, data, trainer = _parts(cli)
    precision = _precision(precision, trainer.get("precision"))  # type: ignore[assignment]
    cfg_scale = model.sampling.cfg_scale if cfg_scale is None else cfg_scale
    if not math.isfinite(cfg_scale) or cfg_scale < 0 or cfg_scale == 1:
        raise ValueError(f"--cfg_scale must be a finite scale >= 0 other than 1 (1 runs no unconditional half), got {cfg_scale}")
    sample_steps = model.sampling.num_steps if sample_steps is None else sample_steps
    peak_value, peak_source = peak(device, precision, peak_tflops)
    bandwidth_value = bandwidth(device, bandwidth_tbs)

    torch.set_float32_matmul_precision("high")  # as fit (cli_main): TF32 matmuls on a GPU
    if trainer.get("benchmark") is not None:
        torch.backends.cudnn.benchmark = trainer.get("benchmark")
    device_type = torch.device(device).type
    # The MFU against what this very chip's matmuls reach as well: the data sheet's peak is 25% above it on an H200.
    measured_peak = matmul_tflops(device, precision) if device_type == "cuda" else None

    autocast = partial(sampling_autocast, precision, device)  # a fresh context per use, as training and sampling use it

    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    if len(loader) == 0:
        raise ValueError("the training split holds less than one batch: lower --batch_size")
    model.to(device).train()
    optimizer_step = fit_optimizer_step(model, trainer)
    training, batch = measure_training(model, loader, optimizer_step, device, autocast, steps, warmup, profile_steps)
    batch_size = len(batch["image"])
    flops, operators = count_flops(model, batch, autocast)
    denoiser_only = measure_denoiser_only(model, batch, optimizer_step, device, autocast, steps, warmup)
    conditions = data.conditions("train", batch_size)
    if not conditions:
        raise ValueError("the data module's conditions('train') is empty: sampling needs conditions")
    conditions = (conditions * batch_size)[:batch_size]
    compiling = model.compile_training
    sampling = measure_sampling(model, conditions, cfg_scale, sample_steps, compiling, device, autocast, steps, warmup, profile_steps)

    result = {
        "settings": {
            "config": str(config), "steps": steps, "warmup": warmup, "batch_size": batch_size, "compile": compiling,
            "precision": precision, "device": device, "sample_steps": sample_steps, "cfg_scale": cfg_scale, "profile_steps": profile_steps,
            "fit_steps": fit_steps, "fit_host_profile": fit_host_profile, "overrides": overrides or [],
            "num_workers": getattr(data, "num_workers", None), "pad_to_limits": getattr(data, "pad_to_limits", None),
            "gradient_clip_val": trainer.get("gradient_clip_val"), "peak_tflops": peak_value, "peak_source": peak_source,
            "matmul_tflops": measured_peak, "bandwidth_tbs": bandwidth_value,
        },
        "model": type(model).__name__,
        "parameters": model.num_parameters(),
        "device_name": torch.cuda.get_device_name(device) if device_type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "kaleido": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **rates(training, flops, denoiser_only, batch_size, peak_value, compiling, measured_peak),
        "sampling": sampling,
    }
    result["training"]["roofline"] = roofline(operators, batch_size, peak_value, bandwidth_value)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fit_steps:  # the step and sampling figures are on disk before fit's minutes: a run cut short keeps them
        output.write_text(json.dumps(result, indent=2) + "\n")
        fit = measure_fit(lambda **kw: KaleidoCLI.instantiate_trainer(cli, **kw), model, data, fit_steps, warmup, device, precision, fit_host_profile)
        result["fit"] = {**fit, "images_per_s": batch_size / fit["step_s"], "over_training_step": fit["step_s"] / result["training"]["step_s"]}
    print(format_table(result))
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
                   f"{'eager' if not s['compile'] else 'compiled' if s['compile'] is True else 'compiled, ' + s['compile']})"
                   + "".join(f"  {item}" for item in s.get("overrides", []))),
        ("device", f"{result['device_name']}, torch {result['torch']}, {result['date']}"),
        ("training step", f"{train['step_s'] * 1e3:.1f} ms   {train['images_per_s']:.1f} images/s"),
        ("  first step", f"{train['first_step_s']:.2f} s, of which the loader's start {train['first_step_loader_s']:.2f} s"
                         + ("" if train["compile_s"] is None else f", compiling ~{train['compile_s']:.1f} s")),
        *([("  peak memory", f"{train['peak_memory_gib']:.2f} GiB allocated, {train['peak_reserved_gib']:.2f} GiB reserved (the timed steps)")]
          if train.get("peak_memory_gib") is not None else []),
        ("  GFLOP per image", f"{train['flops_per_image'] / 1e9:.3g}  ({by_part})  forward + backward"),
        ("  achieved", f"{train['achieved_tflops']:.3g} TFLOP/s   MFU {mfu}  (peak: {s['peak_source']})"
                       + ("" if train.get("mfu_of_matmul") is None else
                          f";  {train['mfu_of_matmul']:.1%} of this device's measured matmul rate, {s['matmul_tflops']:.0f} TFLOP/s")),
        *(format_roofline(train["roofline"]) if train.get("roofline") else []),
        ("  shares", "  ".join(f"{part} {share:.0%}" for part, share in train["shares"].items())),
        *(format_profile(train["profile"]) if train.get("profile") else []),
        ("denoiser-only step", f"{only['step_s'] * 1e3:.1f} ms   {only['images_per_s']:.1f} images/s   "
                               f"step / denoiser-only {only['step_over_denoiser_only']:.2f}"),
        (f"raw forward of 2×{s['batch_size']}", f"{sampling['raw_forward_s'] * 1e3:.1f} ms   {sampling['raw_forward_images_per_s']:.1f} images/s   "
                                               f"(first call {sampling['first_forward_s']:.2f} s)"),
    ]
    if "fit" in result:
        fit = result["fit"]
        rows.append(("Trainer.fit step", f"{fit['step_s'] * 1e3:.1f} ms   {fit['images_per_s']:.1f} images/s   "
                                         f"fit / training step {fit['over_training_step']:.2f}  ({fit['steps']} steps)"))
        rows.append(("  between steps", f"{fit['between_steps_s'] * 1e3:.1f} ms  (the next batch from the loader, its copy to the device, the loop)"))
        rows += format_host(fit)
    if sampling.get("profile"):
        rows += format_profile(sampling["profile"], "sampling profile")
    for name, m in sampling["samplers"].items():
        rows.append((f"{name} CFG {s['cfg_scale']:g} step", f"{m['step_s'] * 1e3:.1f} ms   step / raw forward {m['step_over_raw_forward']:.2f}   "
                                                           f"{s['sample_steps']} steps: {m['images_per_s']:.2f} images/s"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
