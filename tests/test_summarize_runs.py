"""benchmarks/summarize_runs.py: the table of GPU runs, from a results folder laid out as the GPU scripts leave it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize_runs.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("summarize_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["summarize_runs"] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(folder: Path, kind: str, scores: dict[str, float], step: int) -> None:
    for setting, value in scores.items():
        (folder / setting).mkdir(parents=True)
        measure = {"text": "objects", "blob": "iou"}[kind]
        result = {"per_type": {kind: {measure: value, "unparsed": 0.01, "count": 1024}}}
        (folder / setting / "adherence.json").write_text(json.dumps(result))
    (folder / "train_log.txt").write_text(f"train_wall_seconds 590\nglobal_step {step} epoch 28\n")


def test_table_reads_scores_curves_and_rate(tmp_path: Path) -> None:
    text, blob = tmp_path / "text_s4", tmp_path / "types" / "blob"
    _run(text, "text", {"adherence_ddpm": 0.9541, "adherence_ddpm_trained": 0.9111}, 2777)
    _run(blob, "blob", {"adherence_ddpm": 0.658}, 2264)
    writer = SummaryWriter(str(text))
    for step in range(0, 1001, 100):  # 100 steps every 20 s: 5 it/s
        writer.add_scalar("lr-Adam", 7e-4, step, walltime=1000.0 + step / 5)
    writer.add_scalar("val/adherence/text/objects", 0.25, 969, walltime=1200.0)
    writer.add_scalar("val/adherence/text/unparsed", 0.04, 969, walltime=1200.0)
    writer.add_scalar("val/loss_diff", 0.0354, 969, walltime=1200.0)
    writer.close()

    rows = _module().main(tmp_path).splitlines()
    assert rows[0] == "| run | steps | it/s | ddpm | ddpm_trained | probe (step: value) | val. loss_diff (step: value) |"
    assert rows[2] == "| text_s4 | 2777 | 5.0 | 95.4% | 91.1% | 969: 0.25 | 969: 0.0354 |"
    assert rows[3] == "| types/blob | 2264 | – | 0.658 | – | – | – |"  # no events: no rate, no curves


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run under"):
        _module().main(tmp_path)
