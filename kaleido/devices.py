"""Where a command runs: the one reading of ``--device`` shared by every command that takes it."""

from __future__ import annotations

import torch

DEVICES = "'auto' (CUDA when a GPU is visible, else the CPU), 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` if a GPU is visible, else ``"cpu"``; any other name is checked here, so a
    typo or a missing GPU fails with one line before any data is read."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device: use {DEVICES}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is visible: use 'auto' or 'cpu'")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use {DEVICES}")
    return device
