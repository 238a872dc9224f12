"""Where a command runs: the one reading of ``--device`` shared by every command that takes it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

DEVICES = "'auto' (CUDA when a GPU is visible, else the CPU), 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """``"auto"`` → ``"cuda"`` if a GPU is visible, else ``"cpu"``; any other name is checked here, so a
    typo or a missing GPU fails with one line before any data is read.

    ``local_rank``: this process's place among those of its machine (torchrun's ``LOCAL_RANK``): with
    several GPUs visible, ``"auto"`` takes GPU ``local_rank`` (modulo their number: more processes than
    GPUs share them), so one process per GPU needs no ``--device`` of its own."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        count = torch.cuda.device_count()
        return f"cuda:{local_rank % count}" if local_rank is not None and count > 1 else "cuda"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device: use {DEVICES}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is visible: use 'auto' or 'cpu'")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use {DEVICES}")
    return device


Precision = Literal["auto", "32", "bf16"]
PRECISIONS = "'auto' (bf16 on a GPU, 32 on a CPU), '32' or 'bf16'"


def resolve_precision(precision: str, device: str) -> Literal["32", "bf16"]:
    """The sampling precision: ``"auto"`` → ``"bf16"`` on a GPU (1.2–1.3× the speed of float32 in
    docs/evaluation.md's timings; whether FID and adherence stay within run-to-run noise is still to be
    measured, so the commands' default stays ``"32"``), ``"32"`` on a CPU (bfloat16 autocast there is slower,
    not faster); an explicit choice as given."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "32"
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return precision  # type: ignore[return-value]


def sampling_autocast(precision: Literal["32", "bf16"], device: str) -> AbstractContextManager:
    """bfloat16 autocast for ``"bf16"`` (the networks; features, metrics and the schedule stay float32), else nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
