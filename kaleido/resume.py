"""Resuming ``fit`` from the command line: ``--ckpt_path last`` finds the latest checkpoint of the runs under
the logger's directory (``default_root_dir/lightning_logs`` by default), and a resumed run, by ``last`` or
by a checkpoint file of one of those runs, goes on writing logs and checkpoints in that run's
``version_N`` rather than in a new one. What a checkpoint restores is Lightning's (global step, optimiser,
learning-rate schedule, callbacks such as EMA, the data position: :mod:`kaleido.data.sampler`)."""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from kaleido.checkpoint import export_record
from kaleido.checkpoint_io import check_checkpoint_file

VERSION = re.compile(r"version_(\d+)")


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint written last in a folder (``last.ckpt`` on a tie): the latest state of that run.
    An export saved beside the run's checkpoints (``python -m kaleido export``) holds no state to resume."""
    found = sorted((p for p in checkpoints.glob("*.ckpt") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name.startswith("last")))
    return next((p for p in reversed(found) if export_record(p) is None), None)


def latest_run(root: Path) -> tuple[int, Path] | None:
    """(N, checkpoint) of the highest ``root/version_N`` that holds a checkpoint; ``None`` if none does."""
    runs = sorted(
        ((int(m.group(1)), d) for d in root.glob("version_*") if (m := VERSION.fullmatch(d.name)) and d.is_dir()),
        reverse=True,
    )
    for number, run in runs:
        checkpoint = latest_checkpoint(run / "checkpoints")
        if checkpoint is not None:
            return number, checkpoint
    return None


def refuse_export(path: str | Path) -> None:
    """An export has no optimiser or loop state to resume: one line, not Lightning's KeyError."""
    if (record := export_record(path)) is not None:
        raise ValueError(
            f"{path} is an export for sampling and evaluation (no optimiser state): resume from the run's own checkpoint ({record.get('source')})"
        )


def resolve_resume(trainer: Trainer, ckpt_path: str | None) -> str | None:
    """The checkpoint ``fit`` should resume from, and the logger pointed at that run's ``version_N``.

    Only for loggers that number their runs (TensorBoard, CSV: ``save_dir/name/version_N``), whose version
    the config leaves open, and checkpoints in that run's ``checkpoints/`` (Lightning's default place).
    Anything else (a fixed ``ModelCheckpoint.dirpath``, another logger) is left to Lightning as given.
    """
    if ckpt_path is None:
        return None
    if ckpt_path not in ("last", "hpc", "best"):
        check_checkpoint_file(ckpt_path)  # a truncated or foreign file: one line, before Lightning's traceback
        refuse_export(ckpt_path)
    logger = trainer.logger
    fixed_dirpath = any(c.dirpath is not None for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    # ``_version``: the version given to TensorBoardLogger / CSVLogger, None until chosen (Lightning 2.6.6);
    # no public setter exists, and it must be set before the logger first writes.
    if fixed_dirpath or logger is None or getattr(logger, "_version", 0) is not None or not hasattr(logger, "root_dir"):
        return ckpt_path
    root = Path(logger.root_dir)
    if ckpt_path == "last":
        found = latest_run(root)
        if found is None:
            rank_zero_info(f"--ckpt_path last: no checkpoint under {root}/version_*/checkpoints; starting a new run")
            return None
        number, checkpoint = found
        check_checkpoint_file(checkpoint)
    else:
        checkpoint = Path(ckpt_path)
        run = checkpoint.resolve().parent.parent
        match = VERSION.fullmatch(run.name)
        if checkpoint.parent.name != "checkpoints" or run.parent != root.resolve() or match is None:
            return ckpt_path  # another run's checkpoint (e.g. fine-tuning): a new version_N
        number = int(match.group(1))
    logger._version = number  # type: ignore[attr-defined]
    rank_zero_info(f"resuming from {checkpoint}, logging on in {root / f'version_{number}'}")
    return str(checkpoint)


__all__ = ["latest_checkpoint", "latest_run", "refuse_export", "resolve_resume"]
