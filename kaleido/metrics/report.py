"""What `python -m kaleido evaluate` writes (the metrics as JSON and CSV, and metric-against-CFG plots),
and ``python -m kaleido report``, which joins evaluations run apart (e.g. one model per GPU) into one."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOTS = {
    "fid": ("fid_vs_cfg.png", "FID (lower is better)"),
    "recall": ("recall_vs_cfg.png", "recall (higher is better)"),
}


def write_report(output: Path, report: dict[str, Any], models: Sequence[str]) -> None:
    """``metrics.json``, ``metrics.csv`` (one row per model × scale) and one plot per metric of ``PLOTS``
    with every model on the same axes."""
    rows = report["results"]
    (output / "metrics.json").write_text(json.dumps(report, indent=2))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(output / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg explicitly: no display, no pyplot state
    from matplotlib.figure import Figure

    for metric, (name, label) in PLOTS.items():
        figure = Figure(figsize=(4.5, 3.2))
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        for model in models:
            points = [(r["cfg_scale"], r[metric]) for r in rows if r["model"] == model]
            axes.plot(*zip(*points), marker="o", label=model)
        scales = sorted({r["cfg_scale"] for r in rows})
        if scales[0] > 0:
            axes.set_xscale("log", base=2)  # scales usually double: 1, 2, 4, 8
            axes.minorticks_off()
        axes.set_xticks(scales, [f"{s:g}" for s in scales])
        axes.set_xlabel("CFG scale γ")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(output / name, dpi=150)


# Settings that must agree for evaluations to share a table: the same samples, seeds and reference.
COMPARABLE = ("num_samples", "sampler", "steps", "seed", "precision")


def merge_reports(inputs: list[Path], output: Path) -> dict[str, Any]:
    """Join the ``metrics.json`` of several ``evaluate`` outputs into one report in ``output``: the
    rows of every model, the plots with all of them on the same axes, and their grids. The
    evaluations must share the sampling settings and the FID reference. A model may be split over
    several inputs by CFG scale (the same checkpoint and name, disjoint ``--cfg_scales``); different
    checkpoints need different names (``evaluate --name``)."""
    if len(inputs) < 2:
        raise ValueError(f"report joins at least two evaluate outputs, got {len(inputs)}")
    reports = []
    for folder in inputs:
        path = folder / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"no metrics.json in {folder}: pass folders written by `python -m kaleido evaluate`")
        reports.append(json.loads(path.read_text()))
    first = reports[0]
    for folder, other in zip(inputs[1:], reports[1:]):
        for section, keys in (("settings", COMPARABLE), ("reference", ("data", "extractor", "num_images"))):
            differ = {k: (first[section].get(k), other[section].get(k)) for k in keys}
            differ = {k: pair for k, pair in differ.items() if pair[0] != pair[1]}
            if differ:
                raise ValueError(f"{folder} was evaluated differently from {inputs[0]} ({section}: {differ})")
    # One model may be split over several inputs by scale (--cfg_scales), from the same checkpoint.
    checkpoints: dict[str, str] = {}
    for folder, report in zip(inputs, reports):
        for name, path in report["settings"]["models"].items():
            if checkpoints.setdefault(name, path) != path:
                raise ValueError(
                    f"model name {name!r} stands for {checkpoints[name]} and for {path} ({folder}); "
                    "name them apart with evaluate --name"
                )
    runs = [(row["model"], row["cfg_scale"]) for report in reports for row in report["results"]]
    repeated = sorted({run for run in runs if runs.count(run) > 1})
    if repeated:
        raise ValueError(f"(model, CFG scale) {repeated} measured in several inputs; each may occur once")
    models = list(checkpoints)
    merged = {
        "settings": {
            **{k: first["settings"][k] for k in COMPARABLE},
            "models": checkpoints,
            "loaded_weights": {k: v for r in reports for k, v in r["settings"].get("loaded_weights", {}).items()},
            "cfg_scales": sorted({s for r in reports for s in r["settings"]["cfg_scales"]}),
            "devices": sorted({d for r in reports for d in r["settings"].get("devices", [r["settings"].get("device")])}),
            "inputs": [str(folder) for folder in inputs],
        },
        "reference": first["reference"],
        "results": sorted(
            (row for r in reports for row in r["results"]), key=lambda row: (models.index(row["model"]), row["cfg_scale"])
        ),
        "sample_metrics": {k: v for r in reports for k, v in r.get("sample_metrics", {}).items()},
    }
    (output / "grids").mkdir(parents=True, exist_ok=True)
    for folder in inputs:
        for grid in sorted((folder / "grids").glob("*.png")):
            shutil.copy2(grid, output / "grids" / grid.name)
    write_report(output, merged, models)
    return merged
