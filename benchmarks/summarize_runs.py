"""One Markdown table of the runs that `gpu_shapes_text.sh` / `gpu_shapes_types.sh` left under a results
folder: steps, rate, adherence of the EMA average and of the trained weights, and the validation curves
(adherence probe, diffusion loss) that show when a run started to read z.

    python benchmarks/summarize_runs.py --results RESULTS [--output table.md]

A run is any folder holding ``adherence_ddpm/adherence.json``; its ``train_log.txt`` (the saved global
step) and TensorBoard events (curves, training rate), copied beside it, are read when present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import CLI

MEASURES = {"text": "objects", "box": "iou", "blob": "iou", "visual_token": "agreement"}  # the headline per type


@dataclass
class Run:
    name: str
    kind: str = "text"  # the first latent type: text scores print as percentages, the others as 0-1
    steps: int | None = None
    rate: float | None = None  # steps per second while training (TensorBoard wall times; startup excluded)
    adherence: dict[str, float] = field(default_factory=dict)  # setting folder -> headline measure
    probe: list[tuple[int, float]] = field(default_factory=list)  # (step, validation adherence probe)
    loss_diff: list[tuple[int, float]] = field(default_factory=list)  # (step, validation diffusion loss)


def headline(result: dict) -> tuple[str, float]:
    """The first latent type and its headline measure (text objects, box / blob IoU, token agreement)."""
    kind, scores = next(iter(result["per_type"].items()))
    return kind, float(scores[MEASURES.get(kind, next(k for k in scores if k != "count"))])


def scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar of the newest TensorBoard events file in ``folder`` as (step, value, wall time)."""
    files = sorted(folder.glob("events.out.tfevents.*"))
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def training_rate(curves: dict[str, list[tuple[int, float, float]]]) -> float | None:
    """Steps per second between the first and last point of the most often logged curve."""
    points = max(curves.values(), key=len, default=[])
    if len(points) < 2 or points[-1][2] <= points[0][2]:
        return None
    return (points[-1][0] - points[0][0]) / (points[-1][2] - points[0][2])


def read_run(folder: Path, root: Path) -> Run:
    run = Run(folder.name if folder == root else str(folder.relative_to(root)))
    for setting in sorted(folder.glob("adherence_*/adherence.json")):
        run.kind, score = headline(json.loads(setting.read_text()))
        run.adherence[setting.parent.name.removeprefix("adherence_")] = score
    log = folder / "train_log.txt"
    if log.is_file() and (steps := re.findall(r"global_step (\d+)", log.read_text())):
        run.steps = int(steps[-1])
    curves = scalars(folder)
    run.rate = training_rate(curves)
    probes = [tag for tag in curves if tag.startswith("val/adherence/") and tag.rsplit("/", 1)[-1] in MEASURES.values()]
    run.probe = [(step, value) for step, value, _ in curves[probes[0]]] if probes else []
    run.loss_diff = [(step, value) for step, value, _ in curves.get("val/loss_diff", [])]
    return run


def score(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if kind == "text" else f"{value:.3f}"


def curve(points: list[tuple[int, float]], digits: int) -> str:
    return ", ".join(f"{step}: {value:.{digits}f}" for step, value in points) or "–"


def table(runs: list[Run]) -> str:
    settings = sorted({s for run in runs for s in run.adherence}, key=lambda s: (s != "ddpm", s))
    head = ["run", "steps", "it/s", *settings, "probe (step: value)", "val. loss_diff (step: value)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        rate = "–" if run.rate is None else f"{run.rate:.1f}"
        cells = [run.name, str(run.steps or "–"), rate, *(score(run.adherence.get(s), run.kind) for s in settings)]
        cells += [curve(run.probe, 2), curve(run.loss_diff, 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(results: Path, output: Path | None = None) -> str:
    """Print (and with ``output`` write) the table of every run under ``results``."""
    folders = sorted({p.parent.parent for p in results.rglob("adherence_ddpm/adherence.json")})
    if not folders:
        raise FileNotFoundError(f"no run under {results}: expected folders holding adherence_ddpm/adherence.json")
    text = table([read_run(folder, results) for folder in folders])
    print(text)
    if output is not None:
        output.write_text(text + "\n")
    return text


if __name__ == "__main__":
    CLI(main, as_positional=False)
