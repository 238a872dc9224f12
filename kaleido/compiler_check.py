"""Whether ``torch.compile`` works on this machine, asked before a run spends minutes getting to it.

A compiled model (``model.init_args.compile``) first compiles at its first training step, after the data
set, the loader's workers and the sanity validation are up; a machine whose compiler toolchain is missing
(no C compiler for Triton's launcher or inductor's CPU code, no Triton for the GPU) would fail there, in a
traceback of inductor's internals. ``fit`` compiles one tiny function on the run's device first, a few
seconds, and says in one line what failed and how to train eager instead.
"""

from __future__ import annotations

import torch

from kaleido.modules.settings import Compile, compile_mode


class CompilerUnavailable(RuntimeError):
    """``torch.compile`` fails on this machine: said in one line by the command line, like a bad input."""


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 2.0 + 1.0  # one fused kernel: the whole toolchain, from tracing to the launcher


def check_compiler(compile: Compile, device: torch.device) -> None:
    """Compile and run :func:`_probe` on ``device`` in the setting's mode; nothing to do for ``compile: false``.
    Raises :class:`CompilerUnavailable` naming the setting, the device, the cause's first line and the fix."""
    mode = compile_mode(compile)
    if mode is None:
        return
    try:
        probe = torch.compile(_probe, mode=mode, dynamic=False, fullgraph=True)
        probe(torch.ones(8, device=device))
    except Exception as error:  # noqa: BLE001 - any failure of the toolchain is the same answer to the user
        cause = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CompilerUnavailable(
            f"model.init_args.compile is {compile!r}, but torch.compile fails on this machine's {device.type} "
            f"({type(error).__name__}: {cause}); train eager with --model.init_args.compile false, or install "
            "what it names (a C compiler, Triton): docs/performance.md"
        ) from error
