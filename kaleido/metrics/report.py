"""What `python -m kaleido evaluate` writes (the metrics as JSON and CSV, metric-against-CFG plots and the
FID–recall plot), and ``python -m kaleido report``, which joins evaluations run apart (e.g. one model per
GPU) into one. A run is (model, guider, CFG scale); rows written before guiders existed carry no guider
and stand for plain CFG."""

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
DEFAULT_GUIDER = "cfg"  # what a row without a guider was sampled with


def guider_of(row: dict[str, Any]) -> str:
    return row.get("guider") or DEFAULT_GUIDER


def run_name(model: str, guider: str, scale: float) -> str:
    """``<model>_cfg<scale>`` for plain CFG (the names before guiders existed), else
    ``<model>_<guider>_cfg<scale>``: grid files and ``sample_metrics`` keys."""
    middle = "" if guider == DEFAULT_GUIDER else f"_{guider}"
    return f"{model}{middle}_cfg{scale:g}"


def _lines(rows: list[dict[str, Any]], models: Sequence[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One line per (model, guider), in the models' order, then the guiders' order of appearance; a
    line is named by its model alone where every row used plain CFG."""
    guiders = list(dict.fromkeys(guider_of(r) for r in rows))
    lines = []
    for model in models:
        for guider in guiders:
            points = sorted((r for r in rows if r["model"] == model and guider_of(r) == guider), key=lambda r: r["cfg_scale"])
            if points:
                lines.append((model if guiders == [DEFAULT_GUIDER] else f"{model} + {guider}", points))
    return lines


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    staged = path.with_name(path.name + ".partial")
    with open(staged, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    staged.replace(path)


def write_tables(output: Path, report: dict[str, Any]) -> None:
    """``metrics.json`` and ``metrics.csv`` (one row per run). ``evaluate`` writes them after every run,
    so that a sweep stopped half-way keeps what it measured (and ``--resume`` goes on from there);
    each file is written beside and moved into place, never left half-written."""
    rows = report["results"]
    staged = output / "metrics.json.partial"
    staged.write_text(json.dumps(report, indent=2))
    staged.replace(output / "metrics.json")
    _write_csv(output / "metrics.csv", rows)


def matched_precision(rows: list[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """Each line's (model + guider's) best point at matched precision, so that methods whose CFG scales
    trade fidelity differently are compared at the same fidelity: the matched level is the highest
    precision that every line reaches at some scale (the least of the lines' best precisions); among a
    line's runs at or above it, the lowest FID and the highest recall, with the scales they came from.
    """
    lines = _lines(rows, models)
    if not lines:
        return []
    level = min(max(p["precision"] for p in points) for _, points in lines)
    table = []
    for line, points in lines:
        eligible = [p for p in points if p["precision"] >= level]
        best_fid, best_recall = min(eligible, key=lambda p: p["fid"]), max(eligible, key=lambda p: p["recall"])
        table.append({
            "line": line, "matched_precision": level, "scales": [p["cfg_scale"] for p in eligible],
            "fid": best_fid["fid"], "fid_cfg_scale": best_fid["cfg_scale"],
            "recall": best_recall["recall"], "recall_cfg_scale": best_recall["cfg_scale"],
        })
    return table


MARKDOWN_FIRST = (("fid", "FID"), ("precision", "precision"), ("recall", "recall"), ("vendi", "Vendi"))


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def markdown_table(rows: list[dict[str, Any]], models: Sequence[str]) -> str:
    """The runs as a Markdown table for the docs, in the order of :func:`_lines`: FID, precision, recall,
    Vendi, the data set's total-variation distances (``*_tv``) and modes covered where it has them, and
    each adherence measure with its chance beside it (``0.959 (0.046)``). A run that shares another's
    samples (γ = 1 under a guider that does not act there) names it."""
    present = list(dict.fromkeys(key for row in rows for key in row))
    tvs = [key for key in present if key.endswith("_tv")]
    adherence = [key for key in present if key.startswith("adherence_") and "_chance_" not in key and "_data_" not in key]
    header = ["model", "guider", "CFG", *(label for _, label in MARKDOWN_FIRST), *(key.replace("_", " ") for key in tvs)]
    header += ["modes covered"] * ("modes_covered" in present)
    def chance_key(key: str) -> str:  # adherence_<type>_<measure> → adherence_<type>_chance_<measure>
        kind, _, measure = key.removeprefix("adherence_").rpartition("_")
        return f"adherence_{kind}_chance_{measure}"

    header += [key.removeprefix("adherence_").replace("_", " ") + (" (chance)" if chance_key(key) in present else "") for key in adherence]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, points in _lines(rows, models):
        for row in points:
            cells = [row["model"], guider_of(row), f"{row['cfg_scale']:g}"]
            cells += [_number(row.get(key)) for key, _ in MARKDOWN_FIRST] + [_number(row.get(key)) for key in tvs]
            if "modes_covered" in present:
                cells.append(f"{row.get('modes_covered', 0):.0f} / {row.get('modes_total', 0):.0f}")
            for key in adherence:
                chance = row.get(chance_key(key))
                cells.append(_number(row.get(key)) + ("" if chance is None else f" ({_number(chance)})"))
            if row.get("same_samples_as"):
                cells[1] += f" (= {row['same_samples_as']})"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(output: Path, report: dict[str, Any], models: Sequence[str]) -> None:
    """The tables (:func:`write_tables`, and ``metrics.md``: :func:`markdown_table`), each line's best point at
    matched precision (``matched_precision.csv``, :func:`matched_precision`), one plot per metric of ``PLOTS`` against the
    CFG scale and ``fid_vs_recall.png``, every model and guider on the same axes."""
    rows = report["results"]
    write_tables(output, report)
    _write_csv(output / "matched_precision.csv", matched_precision(rows, models))
    (output / "metrics.md").write_text(markdown_table(rows, models))
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg explicitly: no display, no pyplot state
    from matplotlib.figure import Figure

    lines = _lines(rows, models)

    def axes_to(name: str, xlabel: str, ylabel: str, draw: Any) -> None:
        figure = Figure(figsize=(4.5, 3.2))
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        draw(axes)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(output / name, dpi=150)

    scales = sorted({r["cfg_scale"] for r in rows})
    for metric, (name, label) in PLOTS.items():

        def against_scale(axes: Any, metric: str = metric) -> None:
            for line, points in lines:
                axes.plot([p["cfg_scale"] for p in points], [p[metric] for p in points], marker="o", label=line)
            if scales[0] > 0:
                axes.set_xscale("log", base=2)  # scales usually double: 1, 2, 4, 8
                axes.minorticks_off()
            axes.set_xticks(scales, [f"{s:g}" for s in scales])

        axes_to(name, "CFG scale γ", label, against_scale)

    def frontier(axes: Any) -> None:
        for line, points in lines:
            axes.plot([p["recall"] for p in points], [p["fid"] for p in points], marker="o", label=line)
            for p in points:  # each point's γ beside it
                axes.annotate(f"{p['cfg_scale']:g}", (p["recall"], p["fid"]), fontsize=6, xytext=(2, 2), textcoords="offset points")

    axes_to("fid_vs_recall.png", "recall (higher is better)", "FID (lower is better)", frontier)


# Settings that must agree for evaluations to share a table: the same samples, seeds and reference.
COMPARABLE = ("num_samples", "sampler", "steps", "seed", "precision")


def merge_reports(inputs: list[Path], output: Path) -> dict[str, Any]:
    """Join the ``metrics.json`` of several ``evaluate`` outputs into one report in ``output``: the
    rows of every model, the plots with all of them on the same axes, and their grids. The
    evaluations must share the sampling settings and the FID reference. A model may be split over
    several inputs by guider or CFG scale (the same checkpoint and name, disjoint ``--guiders`` or
    ``--cfg_scales``); different checkpoints need different names (``evaluate --name``). Rows without
    a guider (evaluations from before guiders) are plain CFG."""
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
    # One model may be split over several inputs by guider or scale, from the same checkpoint.
    checkpoints: dict[str, str] = {}
    for folder, report in zip(inputs, reports):
        for name, path in report["settings"]["models"].items():
            if checkpoints.setdefault(name, path) != path:
                raise ValueError(
                    f"model name {name!r} stands for {checkpoints[name]} and for {path} ({folder}); "
                    "name them apart with evaluate --name"
                )
    rows = [{**row, "guider": guider_of(row)} for report in reports for row in report["results"]]
    runs = [(row["model"], row["guider"], row["cfg_scale"]) for row in rows]
    repeated = sorted({run for run in runs if runs.count(run) > 1})
    if repeated:
        raise ValueError(f"(model, guider, CFG scale) {repeated} measured in several inputs; each may occur once")
    guiders: dict[str, Any] = {}
    for report in reports:
        guiders.update(report["settings"].get("guiders") or {DEFAULT_GUIDER: {"class_path": "kaleido.diffusion.guiders.cfg.CFG", "init_args": {}}})
    models, order = list(checkpoints), list(dict.fromkeys([*guiders, *(row["guider"] for row in rows)]))
    merged = {
        "settings": {
            **{k: first["settings"][k] for k in COMPARABLE},
            "models": checkpoints,
            "loaded_weights": {k: v for r in reports for k, v in r["settings"].get("loaded_weights", {}).items()},
            "cfg_scales": sorted({s for r in reports for s in r["settings"]["cfg_scales"]}),
            "guiders": guiders,
            "devices": sorted({d for r in reports for d in r["settings"].get("devices", [r["settings"].get("device")])}),
            "inputs": [str(folder) for folder in inputs],
        },
        "reference": first["reference"],
        "results": sorted(rows, key=lambda row: (models.index(row["model"]), order.index(row["guider"]), row["cfg_scale"])),
        "sample_metrics": {k: v for r in reports for k, v in r.get("sample_metrics", {}).items()},
    }
    (output / "grids").mkdir(parents=True, exist_ok=True)
    for folder in inputs:
        for grid in sorted((folder / "grids").glob("*.png")):
            shutil.copy2(grid, output / "grids" / grid.name)
    write_report(output, merged, models)
    return merged
