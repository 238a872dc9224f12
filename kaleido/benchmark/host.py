"""The host's side of a ``Trainer.fit`` step (``benchmark --fit_steps N``): its syncs with the GPU and where
its Python time goes.

* **Syncs** (CUDA only): under ``torch.cuda.set_sync_debug_mode("warn")`` torch warns at each operation
  that makes the host wait for the GPU (``.item()``, ``.cpu()``, ``nonzero``, a blocking copy to the host,
  ``Stream.synchronize``; not ``torch.cuda.synchronize()`` nor ``Event.synchronize()``, which it does not
  see). After a sync the host issues the next step's work only once the GPU has drained, so that work no
  longer overlaps the GPU's. :class:`SyncCounter` counts the warnings by call site: the innermost Python
  frame outside torch (the Lightning or kaleido line), with the torch function it went through.
* **Host time**: ``cProfile`` over more steps, the functions by cumulative and by own time per step. On a
  GPU a function's time includes the host's waits in it (a sync waits in ``.item()``'s own time).
"""

from __future__ import annotations

import cProfile
import functools
import os
import pstats
import sys
import sysconfig
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any, NamedTuple, TextIO

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's text; C++ appends "(Triggered internally at ...)"
TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
TOP = 15
# Left out of the cumulative list, where they say nothing: a function whose cumulative time is ROOT_SHARE
# of the profiled wall time or more, spent mostly in its callees, holds the whole step (the loop's
# ``advance``); one that spends WRAPPER_SHARE of its time in a single callee is a wrapper (Lightning's
# hooks, torch's decorators): the chain of them shows once, as its innermost link.
ROOT_SHARE, WRAPPER_SHARE = 0.9, 0.98

Frame = tuple[str, int, str]  # (file, line, function)


@functools.lru_cache(maxsize=None)  # called at each sync: a few files, looked up once each
def short_path(filename: str) -> str:
    """A file's path from where it is installed (site-packages, the standard library) or the working directory."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib")} | {os.getcwd()}
    for root in sorted(roots, key=len, reverse=True):  # the most specific first: a venv inside the project
        if filename.startswith(root + os.sep):
            return filename[len(root) + 1 :]
    return filename


def call_site(frames: Iterable[Frame]) -> str:
    """``"file:line function"`` of the innermost frame outside torch (``frames``: innermost first), the
    warning machinery and this module skipped; ``"(via ...)"`` names the innermost torch frame below it."""
    via = None
    for filename, line, function in frames:
        if filename.startswith(TORCH_DIR):
            via = via or f"{short_path(filename)}:{line} {function}"
        elif filename not in (warnings.__file__, __file__):
            return f"{short_path(filename)}:{line} {function}" + (f" (via {via})" if via else "")
    return via or "<no Python frame>"


def _frames(frame: FrameType | None) -> Iterator[Frame]:
    """The stack from ``frame`` outwards; cheaper than ``traceback.extract_stack`` (no source lines read)."""
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back


class SyncCounter:
    """Counts torch's sync warnings by call site between :meth:`start` and :meth:`stop` (CUDA);
    :meth:`hook` / :meth:`unhook` only catch the warnings (what a test can drive without a GPU). Other
    warnings go on to the ``showwarning`` that was there."""

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()
        self._catcher: warnings.catch_warnings | None = None  # type: ignore[type-arg]
        self._shown: Callable[..., None] = warnings.showwarning
        self._mode: int | None = None

    def record(self, frames: Iterable[Frame]) -> None:
        self.sites[call_site(frames)] += 1

    def _showwarning(
        self, message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None
    ) -> None:
        if str(message).startswith(SYNC_WARNING):
            self.record(_frames(sys._getframe(1)))  # called where the warning was raised: its stack is the site's
        else:
            self._shown(message, category, filename, lineno, file, line)

    def hook(self) -> None:
        if self._catcher is None:
            self._catcher = warnings.catch_warnings()  # restores the filters and showwarning at unhook
            self._catcher.__enter__()
            self._shown = warnings.showwarning
            warnings.filterwarnings("always", message=SYNC_WARNING)  # each one: the default shows a site once
            warnings.showwarning = self._showwarning

    def unhook(self) -> None:
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None

    def start(self) -> None:
        self.hook()
        if self._mode is None:
            self._mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._mode is not None:
            torch.cuda.set_sync_debug_mode(self._mode)
            self._mode = None
        self.unhook()

    def report(self, steps: int) -> dict[str, Any]:
        """``syncs_per_step`` and every site, most frequent first."""
        return {
            "syncs_per_step": sum(self.sites.values()) / steps,
            "sync_sites": [{"site": site, "count": count, "per_step": count / steps} for site, count in self.sites.most_common()],
        }


def _function(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    return name if filename == "~" else f"{short_path(filename)}:{line}({name})"  # "~": a builtin, e.g. <method 'item' ...>


class _Row(NamedTuple):
    key: tuple[str, int, str]
    calls: int
    own_s: float
    cumulative_s: float


def _top(rows: list[_Row], by: Callable[[_Row], float], steps: int, top: int) -> list[dict[str, Any]]:
    return [{"function": _function(row.key), "ms_per_step": 1e3 * by(row) / steps, "calls_per_step": row.calls / steps}
            for row in sorted(rows, key=by, reverse=True)[:top]]


def host_profile(profiler: cProfile.Profile, steps: int, wall_s: float, top: int = TOP) -> dict[str, Any]:
    """The ``top`` functions by cumulative and by own time, in ms per step, of ``steps`` steps profiled
    over ``wall_s``; the profiler's own entries left out, and the roots and wrappers from the cumulative list."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # {key: (primitive calls, calls, own s, cumulative s, callers)}
    rows = [_Row(key, calls, own, cumulative) for key, (_, calls, own, cumulative, _) in stats.items() if "_lsprof" not in key[2]]
    wrappers = {caller for key, (*_, callers) in stats.items() for caller, (*_, from_caller) in callers.items()
                if caller != key and from_caller >= WRAPPER_SHARE * stats[caller][3] > 0}
    roots = {row.key for row in rows if row.cumulative_s >= ROOT_SHARE * wall_s and row.own_s < row.cumulative_s / 2}
    telling = [row for row in rows if row.key not in roots | wrappers]
    return {
        "steps": steps,
        "step_s": wall_s / steps,  # host time, slowed by the profiler
        "calls_per_step": sum(row.calls for row in rows) / steps,
        "by_cumulative": _top(telling, lambda row: row.cumulative_s, steps, top),
        "by_own": _top(rows, lambda row: row.own_s, steps, top),
    }


def format_host(fit: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows for the fit step's syncs and host profile (none from a JSON older than them)."""
    rows = []
    if "syncs_per_step" in fit:
        sites = fit["sync_sites"]
        most = f"; most at {sites[0]['site']} ({sites[0]['per_step']:.2g} per step)" if sites else ""
        rows.append(("  host syncs", "– (counted on CUDA only)" if fit["syncs_per_step"] is None else f"{fit['syncs_per_step']:.2g} per step{most}"))
    profile = fit.get("host_profile")
    if profile:
        rows.append((f"  host profile ({profile['steps']} steps)", f"cProfile: {profile['step_s'] * 1e3:.1f} ms per step on the host "
                                                                  f"(timed without it: {fit['step_s'] * 1e3:.1f} ms), "
                                                                  f"{profile['calls_per_step']:,.0f} function calls per step"))
        for label, key in (("    own time", "by_own"), ("    cumulative", "by_cumulative")):
            rows += [(label if i == 0 else "", f"{entry['ms_per_step']:7.2f} ms  {entry['function'][:100]}")
                     for i, entry in enumerate(profile[key][:5])]
    return rows
