"""Where a step's device time goes, kernel by kernel: ``benchmark --profile_steps N``.

N more training steps, and N more raw sampling forwards, run under ``torch.profiler`` after the timed ones
(the profiler slows the host, so they are never the timed calls). On a GPU it reads the CUDA kernels; on a
CPU, the operators' self times (an operator's own time, without the operators it calls: they tile the
step). Two numbers tell a launch-bound step from a compute-bound one: the share of the wall time during
which the device runs a kernel (``busy_share``), and the kernels per step with their mean length. The rest
groups kernel time by what the kernel does, read from its name.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from kaleido.benchmark.clock import sync

# First match wins: cuDNN's convolution kernels carry "gemm" in their names (implicit GEMM), and
# compiled (Triton) kernels name the operators they fuse, e.g. ``triton_red_fused_native_group_norm_0``.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "scaled_dot_product", "sdpa")),
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit")),
    ("matmul", ("gemm", "matmul", "cublas", "cutlass", "nvjet", "xmma", "aten::mm", "aten::bmm", "aten::addmm", "aten::linear")),
    ("normalisation", ("norm",)),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("copy", ("copy", "memcpy", "memset", "cat", "transpose", "contiguous", "clone")),
)
OTHER = "elementwise and other"
TOP = 12


def category(name: str) -> str:
    """What a kernel (or CPU operator) does, from its name."""
    lowered = name.lower()
    return next((label for label, words in CATEGORIES if any(word in lowered for word in words)), OTHER)


def _timed_events(profiler: torch.profiler.profile, cuda: bool) -> list[tuple[str, float]]:
    """(name, microseconds) of every kernel (GPU) or operator's self time (CPU) the profiler saw."""
    events = profiler.events()
    if cuda:
        kernels = [(e.name, e.time_range.elapsed_us()) for e in events if e.device_type == DeviceType.CUDA]
        # Without kernel events of their own, kernels are read off the operators that launched them.
        return kernels or [(e.name, e.self_device_time_total) for e in events if e.self_device_time_total > 0]
    return [(e.name, e.self_cpu_time_total) for e in events if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0]


def profile_steps(step: Callable[[], None], steps: int, device: str) -> dict[str, Any]:
    """Run ``step`` ``steps`` times under the profiler; per step: the wall time, the device's busy time,
    the kernels and their mean length, the busy time by category and the longest kernels."""
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with torch.profiler.profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = time.perf_counter() - start
    timed = _timed_events(profiler, cuda)
    busy_us = sum(us for _, us in timed)
    by_category: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, us in timed:
        by_category[category(name)] += us
        by_name[name][0] += 1
        by_name[name][1] += us
    longest = sorted(by_name.items(), key=lambda item: -item[1][1])[:TOP]
    share = (lambda us: us / busy_us) if busy_us else (lambda us: 0.0)
    return {
        "steps": steps,
        "unit": "CUDA kernels" if cuda else "CPU operators",
        "wall_s_per_step": wall / steps,
        "busy_s_per_step": busy_us / 1e6 / steps,
        "busy_share": busy_us / 1e6 / wall if wall > 0 else 0.0,
        "kernels_per_step": len(timed) / steps,
        "mean_kernel_us": busy_us / len(timed) if timed else 0.0,
        "by_category": {label: share(us) for label, us in sorted(by_category.items(), key=lambda item: -item[1])},
        "top": [
            {"name": name, "category": category(name), "calls_per_step": calls / steps, "us_per_step": us / steps, "share": share(us)}
            for name, (calls, us) in longest
        ],
    }


def format_profile(profile: dict[str, Any], label: str = "profile") -> list[tuple[str, str]]:
    """The profile's rows of the printed table, the first named ``label``."""
    categories = "  ".join(f"{label} {value:.0%}" for label, value in profile["by_category"].items() if value >= 0.005)
    rows = [
        (f"{label} ({profile['steps']} steps)", f"device busy {profile['busy_share']:.0%} of the step's wall time; "
                                                f"{profile['kernels_per_step']:,.0f} {profile['unit']} per step, "
                                                f"mean {profile['mean_kernel_us']:.1f} µs"),
        ("  busy time", categories),
    ]
    rows += [(f"  {entry['share']:5.1%}", f"{entry['name'][:90]}  ({entry['calls_per_step']:g} per step)") for entry in profile["top"][:5]]
    return rows
