"""The benchmark's clocks (the method: :mod:`kaleido.benchmark`): the host clock synchronised with the GPU
at both ends, and marks at the boundaries of a step's parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks in the order work is issued, each interval named by the part that ends it: CUDA events on a
    GPU (no host sync in the loop; read once at the end), the host clock on a CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.cuda = device, torch.device(device).type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        sync(self.device)
        totals: dict[str, float] = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:]):
            totals[name] = totals.get(name, 0.0) + (start.elapsed_time(end) / 1000 if self.cuda else end - start)
        return totals


def seconds(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call, the device synchronised at both ends."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def seconds_per_call(fn: Callable[[], object], device: str, calls: int, warmup: int) -> tuple[float, float]:
    """Seconds of the first call (a compiled network compiles in it) and per call after ``warmup`` more."""
    first = seconds(fn, device)
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return first, (time.perf_counter() - start) / calls
