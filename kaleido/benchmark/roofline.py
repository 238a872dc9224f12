"""How fast a training step could run at all: a roofline bound from the FLOPs and the bytes of every operator.

The FLOP-count step of ``benchmark`` (one eager step, :func:`kaleido.benchmark.training.count_flops`) runs
under :class:`TrafficMode`, which sees every ATen operator after autocast and records its FLOPs (torch's
flop-counter formulas: matmuls, convolutions, attention) and the bytes it moves (the tensors it reads and
writes; a view moves none). On a device of peak P FLOP/s and memory bandwidth W bytes/s an operator takes at
least ``max(F / P, B / W)``. Two bounds follow:

* **eager**: every operator's bound, summed. Each operator reads its inputs from memory and writes its output
  back, as eager kernels do, so element-wise work, norms, casts and copies cost their bytes.
* **fused**: only the FLOP-counting operators' bounds, as if every norm, activation, cast and copy rode for
  free inside the matmul or convolution beside it. No compiler fuses that well: no implementation of this
  step's operators beats it.

Each bound gives the MFU ceiling ``FLOPs / (bound * P)``: a measured MFU far under the fused ceiling is lost
to kernels running under their roofline and to launches, not to the model's shape. Not counted: the
optimiser's step (memory-bound, about 28 bytes per parameter: a few percent of a step at the batches
measured) and launch latency; caches are ignored (every operand comes from memory), which is what makes the
eager bound a bound for operators too large for the cache, and only an estimate for the small ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, shape_wrapper

from kaleido.benchmark.profile import category


def _bytes(value: Any) -> int:
    """The bytes of every tensor in ``value``: its elements, but no more than its storage holds (an expanded
    tensor reads each stored element once)."""
    total = 0
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            total += min(leaf.numel() * leaf.element_size(), leaf.untyped_storage().nbytes())
    return total


class TrafficMode(TorchDispatchMode):
    """Record each ATen operator's name, FLOPs and bytes moved while it is active (see the module's docstring).

    ``extra_formulas``: FLOP formulas for operators torch's counter lacks, in its raw (shapes) form, as
    ``FlopCounterMode``'s ``custom_mapping`` takes them."""

    def __init__(self, extra_formulas: Mapping[Any, Callable[..., int]] | None = None) -> None:
        super().__init__()
        self.formulas = {**flop_registry, **{op: shape_wrapper(f) for op, f in (extra_formulas or {}).items()}}
        self.calls: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func.overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        if func.is_view:
            moved = 0
        elif func.overloadpacket is torch.ops.aten.copy_:  # writes its destination without reading it
            moved = _bytes(args[1]) + _bytes(out)
        else:  # other in-place operators read their destination and write it back
            moved = _bytes((args, kwargs)) + _bytes(out)
        self.calls.append((str(func.overloadpacket.__name__), flops, moved))
        return out


def roofline(calls: list[tuple[str, int, int]], images: int, peak_tflops: float | None, bandwidth_tbs: float | None) -> dict[str, Any]:
    """The step's FLOPs and bytes per image, by kind of operator, and with a peak and a bandwidth its eager and
    fused bounds (seconds per step) and the MFU ceilings they give (None without them)."""
    flops = sum(f for _, f, _ in calls)
    moved = sum(b for _, _, b in calls)
    by_kind: dict[str, int] = defaultdict(int)
    for name, f, b in calls:
        by_kind["flop operators" if f else category(name)] += b
    result: dict[str, Any] = {
        "operators": len(calls),
        "flops_per_image": flops / images,
        "bytes_per_image": moved / images,
        "bytes_per_image_by_kind": {kind: b / images for kind, b in sorted(by_kind.items(), key=lambda item: -item[1])},
        "peak_tflops": peak_tflops,
        "bandwidth_tbs": bandwidth_tbs,
        "eager_bound_s": None, "fused_bound_s": None, "mfu_ceiling_eager": None, "mfu_ceiling_fused": None,
        "memory_bound_share_eager": None,
    }
    if peak_tflops is None or bandwidth_tbs is None or flops == 0:
        return result
    peak, bandwidth = peak_tflops * 1e12, bandwidth_tbs * 1e12
    bounds = [(max(f / peak, b / bandwidth), f, b) for _, f, b in calls]
    eager = sum(t for t, _, _ in bounds)
    fused = sum(t for t, f, _ in bounds if f)
    memory_bound = sum(t for t, f, b in bounds if b / bandwidth > f / peak)
    return {
        **result,
        "eager_bound_s": eager,
        "fused_bound_s": fused,
        "mfu_ceiling_eager": flops / (eager * peak),
        "mfu_ceiling_fused": flops / (fused * peak),
        "memory_bound_share_eager": memory_bound / eager,
    }


def format_roofline(line: dict[str, Any]) -> list[tuple[str, str]]:
    """The roofline's rows of the printed table."""
    kinds = "  ".join(f"{kind} {b / 1e6:.3g}" for kind, b in line["bytes_per_image_by_kind"].items() if b >= 0.005 * line["bytes_per_image"])
    rows = [("  roofline", f"{line['bytes_per_image'] / 1e6:.3g} MB moved per image over {line['operators']:,} operators  ({kinds} MB)")]
    if line["eager_bound_s"] is None:
        rows.append(("", "no bound: give --peak_tflops and --bandwidth_tbs (known by name for the GPUs of kaleido.benchmark.PEAK_TFLOPS and BANDWIDTH_TBS)"))
    else:
        rows.append(("", f"at {line['peak_tflops']:g} TFLOP/s and {line['bandwidth_tbs']:g} TB/s: step ≥ {line['eager_bound_s'] * 1e3:.3g} ms eager "
                         f"(MFU ≤ {line['mfu_ceiling_eager']:.0%}, {line['memory_bound_share_eager']:.0%} of it memory-bound), "
                         f"≥ {line['fused_bound_s'] * 1e3:.3g} ms fused (MFU ≤ {line['mfu_ceiling_fused']:.0%})"))
    return rows
