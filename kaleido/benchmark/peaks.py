"""The device's peak TFLOP/s that an MFU is read against (the method: :mod:`kaleido.benchmark`)."""

from __future__ import annotations

from typing import Any

import torch

from kaleido.benchmark.clock import seconds_per_call

# Dense (no sparsity) tensor-core peaks in TFLOP/s, (bf16, tf32), from NVIDIA's data sheets (A100; H100
# and H200, whose sheets give twice these "with sparsity"). Matched in order: the first key the GPU's
# name contains. fp32 training runs its matmuls in TF32 (``set_float32_matmul_precision("high")``, as fit).
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200 NVL": (835.5, 417.5),
    "H200": (989.4, 494.7),
    "H100 NVL": (835.5, 417.5),
    "H100 PCIe": (756.5, 378.0),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
}

# Memory bandwidth in TB/s from the same data sheets, matched the same way: the roofline's other slope
# (:mod:`kaleido.benchmark.roofline`). The A100's is its 80 GB SXM part's, the highest: a bound stays a bound.
BANDWIDTH_TBS: dict[str, float] = {
    "H200 NVL": 4.8,
    "H200": 4.8,
    "H100 NVL": 3.9,
    "H100 PCIe": 2.0,
    "H100": 3.35,
    "A100": 2.039,
}


def bandwidth(device: str, given: float | None) -> float | None:
    """The device's memory bandwidth in TB/s for the roofline: the one given, else the data sheet's by GPU
    name; None on a CPU or an unknown GPU."""
    if given is not None:
        return given
    if torch.device(device).type != "cuda":
        return None
    return _by_name(BANDWIDTH_TBS, device)[1]


def _by_name(table: dict[str, Any], device: str) -> tuple[str | None, Any]:
    """The first entry of ``table`` whose key the GPU's name contains, as (key, value); (None, None) if none does."""
    name = torch.cuda.get_device_name(device)
    return next(((key, value) for key, value in table.items() if key in name), (None, None))


def peak(device: str, precision: str, given: float | None) -> tuple[float | None, str]:
    """The peak TFLOP/s an MFU is read against, and where it comes from (or why there is none)."""
    if given is not None:
        return given, "--peak_tflops"
    if torch.device(device).type != "cuda":
        return None, "no peak for a CPU: MFU is null (pass --peak_tflops for one)"
    key, peaks = _by_name(PEAK_TFLOPS, device)
    if key is None:
        return None, f"{torch.cuda.get_device_name(device)} is not in kaleido.benchmark.PEAK_TFLOPS: MFU is null (pass --peak_tflops)"
    kind = "bf16" if precision == "bf16" else "tf32"
    return peaks[0 if kind == "bf16" else 1], f"NVIDIA data sheet, {key}, dense {kind}"


def matmul_tflops(device: str, precision: str, size: int = 8192, calls: int = 10, warmup: int = 3) -> float:
    """The TFLOP/s of one large square matmul on this device, in the precision the step runs its matmuls in
    (bf16, or float32 as TF32): the ceiling a model's matmuls can reach here, as opposed to the data sheet's.
    On an H200 the 8192³ bf16 product runs at 769–798 TFLOP/s on random data (``issue 18`` reads MFU against
    ~790), 78–81% of the sheet's 989."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device).manual_seed(0)
    operands = [torch.randn(size, size, device=device, dtype=dtype, generator=generator) for _ in range(2)]
    _, per_call = seconds_per_call(lambda: torch.mm(*operands), device, calls, warmup)
    operands.clear()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # its ~0.4 GB stay out of the reserved memory the model's steps report
    return 2 * size**3 / per_call / 1e12
