"""The roofline bound of ``benchmark``: each operator's FLOPs and bytes, and the bounds they give."""

from __future__ import annotations

import pytest
import torch

from kaleido.benchmark.peaks import bandwidth
from kaleido.benchmark.roofline import TrafficMode, format_roofline, roofline


def test_a_linear_layer_moves_its_operands_and_counts_its_product() -> None:
    layer = torch.nn.Linear(16, 32)
    x = torch.randn(4, 16)
    with torch.no_grad(), TrafficMode() as traffic:
        torch.relu(layer(x))
    calls = {name: (flops, moved) for name, flops, moved in traffic.calls}
    # addmm reads x, the weight (a transposed view: its storage once) and the bias, and writes 4×32.
    assert calls["addmm"] == (2 * 4 * 16 * 32, 4 * (4 * 16 + 16 * 32 + 32 + 4 * 32))
    assert calls["relu"] == (0, 4 * (4 * 32 + 4 * 32))  # element-wise: reads and writes, no FLOPs counted
    assert calls["t"] == (0, 0)  # a view moves nothing


def test_an_expanded_operand_is_read_once_and_copy_does_not_read_its_destination() -> None:
    row, out = torch.randn(1, 64), torch.empty(8, 64)
    with TrafficMode() as traffic:
        torch.add(torch.zeros(8, 64), row.expand(8, 64))
        out.copy_(row.expand(8, 64))
    moved = {name: b for name, _, b in traffic.calls}
    assert moved["add"] == 4 * (8 * 64 + 64 + 8 * 64)  # the expanded row: its 64 stored elements
    assert moved["copy_"] == 4 * (64 + 8 * 64)


def test_the_bounds_take_each_operator_s_slower_slope() -> None:
    # 1 TFLOP/s and 1 TB/s: a matmul of 4e12 FLOPs over 1e12 bytes takes 4 s (compute-bound), a norm of 2e12 bytes 2 s.
    calls = [("mm", 4 * 10**12, 10**12), ("native_layer_norm", 0, 2 * 10**12)]
    line = roofline(calls, images=2, peak_tflops=1.0, bandwidth_tbs=1.0)
    assert line["eager_bound_s"] == pytest.approx(6.0) and line["fused_bound_s"] == pytest.approx(4.0)
    assert line["mfu_ceiling_eager"] == pytest.approx(4 / 6) and line["mfu_ceiling_fused"] == pytest.approx(1.0)
    assert line["memory_bound_share_eager"] == pytest.approx(2 / 6)
    assert line["flops_per_image"] == 2 * 10**12 and line["bytes_per_image"] == 1.5 * 10**12
    assert line["bytes_per_image_by_kind"] == {"normalisation": 10**12, "flop operators": 0.5 * 10**12}
    assert "MFU ≤ 67%" in format_roofline(line)[1][1]


def test_without_a_peak_or_a_bandwidth_there_is_no_bound_and_the_table_says_why() -> None:
    line = roofline([("mm", 10, 10)], images=1, peak_tflops=None, bandwidth_tbs=1.0)
    assert line["eager_bound_s"] is None and line["mfu_ceiling_fused"] is None and line["bytes_per_image"] == 10
    assert "--bandwidth_tbs" in format_roofline(line)[1][1]
    assert bandwidth("cpu", None) is None and bandwidth("cpu", 4.8) == 4.8


@pytest.mark.parametrize(("name", "expected"), [("NVIDIA H200", 4.8), ("NVIDIA H100 PCIe", 2.0), ("NVIDIA H100 80GB HBM3", 3.35), ("Tesla T4", None)])
def test_a_gpu_s_bandwidth_is_read_off_its_name(name: str, expected: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bandwidth("cuda", None) == expected


@pytest.mark.parametrize(("name", "precision", "expected"), [("NVIDIA H200", "bf16", 989.4), ("NVIDIA H200 NVL", "32", 417.5), ("Tesla T4", "bf16", None)])
def test_a_gpu_s_peak_is_read_off_its_name(name: str, precision: str, expected: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from kaleido.benchmark.peaks import peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    value, source = peak("cuda", precision, None)
    assert value == expected
    assert ("data sheet" in source) if expected else (name in source and "--peak_tflops" in source)
