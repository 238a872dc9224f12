"""A real `fit`, killed with SIGKILL, resumed through the CLI: the step, the optimiser, the learning rate,
the EMA and the data position all come back, and the epoch neither repeats nor skips an item."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from kaleido.data.sampler import ResumableLoader, ResumableSampler
from kaleido.resume import latest_run, resolve_resume
from tests.probes import weight_sum

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/configs/tiny_kaleido.yaml"
STEPS_PER_EPOCH = 8  # tiny_kaleido.yaml: 64 training items, batches of 8


def _fit(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "kaleido", "fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.limit_val_batches", "0", "--data.init_args.num_workers", "1",
        "--trainer.callbacks+=kaleido.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=4", *args,
    ]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_killed_fit_resumes_through_the_cli_where_it_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    record = tmp_path / "batches.jsonl"
    probe = ["--trainer.callbacks+=probes.RecordBatches", f"--trainer.callbacks.path={record}"]
    run = subprocess.Popen(
        _fit(tmp_path, *probe, "--trainer.callbacks.wait_at_step=6", "--trainer.max_steps", "12"),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (record.is_file() and '"waiting"' in record.read_text()):
        assert run.poll() is None, run.stderr.read()[-3000:] if run.stderr else ""
        assert time.monotonic() < deadline, "the run never reached step 6"
        time.sleep(0.2)
    run.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    assert run.wait() == -signal.SIGKILL
    run.stderr.close()  # type: ignore[union-attr]
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)  # step 4; steps 5 and 6 were lost
    assert saved["global_step"] == 4
    killed = _records(record)
    record.unlink()

    resumed = subprocess.run(
        _fit(tmp_path, *probe, "--trainer.max_steps", "12", "--ckpt_path", "last"),
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]  # the same run, no version_1
    assert len(list((tmp_path / "lightning_logs/version_0").glob("events.out.tfevents.*"))) == 2
    start, *steps = _records(record)

    # step, optimiser, learning-rate schedule and both weight sets are the checkpoint's
    adam = saved["optimizer_states"][0]["state"][0]
    assert start["start"] == 4 and start["adam_step"] == float(adam["step"]) == 4.0
    assert start["exp_avg"] == pytest.approx(float(adam["exp_avg"].double().sum()), rel=1e-6)
    assert start["lr"] == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    assert start["weights"] == pytest.approx(weight_sum(saved["current_model_state"]), rel=1e-6)
    assert start["average"] == pytest.approx(weight_sum(saved["state_dict"]), rel=1e-6)
    assert start["weights"] != pytest.approx(start["average"], rel=1e-6)  # two different sets were restored

    # the data: the resumed run trains on steps 5.. in the killed run's order, the epoch covers every item once
    before = {r["step"]: r["ids"] for r in killed if "ids" in r}
    after = {r["step"]: r["ids"] for r in steps}
    assert sorted(after) == list(range(5, 13))
    assert after[5] == before[5] and after[6] == before[6]
    epoch = [i for step in range(1, STEPS_PER_EPOCH + 1) for i in (before if step <= 4 else after)[step]]
    assert sorted(epoch) == list(range(64))
    second = [i for step in range(9, 13) for i in after[step]]
    assert len(set(second)) == 32 and second != epoch[:32]  # a new permutation
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12


def test_ckpt_path_last_without_a_checkpoint_starts_a_new_run(tmp_path: Path) -> None:
    assert latest_run(tmp_path / "lightning_logs") is None
    (tmp_path / "lightning_logs/version_3/checkpoints").mkdir(parents=True)  # a run killed before its first save
    (tmp_path / "lightning_logs/version_1/checkpoints").mkdir(parents=True)
    (tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt").write_bytes(b"")
    assert latest_run(tmp_path / "lightning_logs") == (1, tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")


def test_resolve_resume_points_the_logger_at_the_run_it_resumes(tmp_path: Path) -> None:
    def trainer() -> Trainer:
        return Trainer(default_root_dir=tmp_path, accelerator="cpu", enable_progress_bar=False)

    assert resolve_resume(trainer(), "last") is None  # nothing to resume: a new run
    run = tmp_path / "lightning_logs/version_2/checkpoints"
    run.mkdir(parents=True)
    torch.save({}, run / "last.ckpt")
    resuming = trainer()
    assert resolve_resume(resuming, "last") == str(run / "last.ckpt") and resuming.logger.version == 2
    named = trainer()
    assert resolve_resume(named, str(run / "last.ckpt")) == str(run / "last.ckpt") and named.logger.version == 2
    elsewhere = tmp_path / "elsewhere.ckpt"
    torch.save({}, elsewhere)
    fine_tuning = trainer()
    assert resolve_resume(fine_tuning, str(elsewhere)) == str(elsewhere) and fine_tuning.logger.version == 3
    (run / "last.ckpt").write_bytes(b"cut sh")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        resolve_resume(trainer(), "last")


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_state_restores_the_rest_of_the_epoch(workers: int) -> None:
    data = list(range(20))

    def loader() -> ResumableLoader:
        return ResumableLoader(data, 4, ResumableSampler(data, seed=7), num_workers=workers)

    full = [b.tolist() for b in loader()]
    first = loader()
    taken = []
    for batch in first:
        taken.append(batch.tolist())
        if len(taken) == 2:
            break
    state = first.state_dict()
    assert state == {"epoch": 0, "items": 8, "seed": 7}
    second = loader()
    second.load_state_dict(state)
    assert taken + [b.tolist() for b in second] == full
    assert len(second) == 5  # Lightning counts batches of the whole epoch
    second.sampler.set_epoch(1)
    assert sorted(i for b in second for i in b.tolist()) == data  # the next epoch starts at its beginning
    ended = loader()
    ended.load_state_dict({"epoch": 0, "items": 20, "seed": 7})
    assert ended.sampler.epoch == 1 and len([*ended]) == 5
    reseeded = loader()  # a run under another seed (seed_everything: true) goes on with the checkpoint's order
    reseeded.load_state_dict({"epoch": 0, "items": 8, "seed": 3})
    other = ResumableLoader(data, 4, ResumableSampler(data, seed=3), num_workers=workers)
    assert [b.tolist() for b in reseeded] == [b.tolist() for b in other][2:]
