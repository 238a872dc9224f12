"""What `python -m kaleido evaluate` writes: the metrics as JSON and CSV, and metric-against-CFG plots."""

from __future__ import annotations

import csv
import json
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
