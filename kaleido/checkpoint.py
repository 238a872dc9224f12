"""``kaleido.load(ckpt_path)``: rebuild a trained model for Python use, without the CLI.

A checkpoint carries the class, the constructor arguments (plain data) and the tokenizer, so loading
needs no pickled code: ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from lightning.pytorch import LightningModule
from torch import nn

from kaleido.checkpoint_io import CHECKPOINT_KEY, read_checkpoint
from kaleido.class_paths import import_object
from kaleido.tokenizer import KaleidoTokenizer

Weights = Literal["averaged", "trained"]  # the EMA average, or the optimiser's own weights kept beside it
EXPORT_KEY = "kaleido_export"  # what `python -m kaleido export` wrote: source, weights kept, dtype (kaleido/export.py)
M = TypeVar("M", bound=LightningModule)


def holds_average(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint keeps an EMA average (its ``state_dict``) beside the trained weights, as the
    EMA callback saves them; without one, ``state_dict`` holds the trained weights."""
    return "current_model_state" in checkpoint


def check_weights(weights: str) -> None:
    if weights not in ("averaged", "trained"):
        raise ValueError(f"weights must be 'averaged' or 'trained', got {weights!r}")


def export_record(path: str | Path) -> dict[str, Any] | None:
    """What ``python -m kaleido export`` recorded in the file at ``path``; None for a checkpoint written by
    ``fit`` (or one not readable here: whoever reads it next says why). The weights are not read (mmap)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001
        return None
    return checkpoint.get(EXPORT_KEY) if isinstance(checkpoint, dict) else None


def recorded_data(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The data section (``class_path`` + ``init_args``) an export recorded from its run's config, so that
    ``evaluate`` and ``adherence`` know the data of a lone export file; None for a ``fit`` checkpoint."""
    return (export_record(ckpt_path) or {}).get("data")


def exported_weights(checkpoint: dict[str, Any]) -> Weights | None:
    """Which weights an export (``python -m kaleido export``) holds; None for a checkpoint written by ``fit``."""
    record = checkpoint.get(EXPORT_KEY)
    return None if record is None else record["weights"]


def load(
    ckpt_path: str | Path,
    map_location: str | torch.device = "cpu",
    expected: type[M] | tuple[type[M], ...] = LightningModule,  # type: ignore[assignment]
    weights: Weights = "averaged",
) -> M:
    """The model stored in ``ckpt_path``, in eval mode.

    ``weights``: "averaged", the EMA weights when trained with the EMA callback (else the trained ones);
    "trained", the optimiser's own weights, which the EMA callback keeps beside the average (the EMA
    lags them by about 1 / (1 - decay) steps: in short runs that still improve fast, compare both).
    The model's ``loaded_weights`` says which it holds: "averaged" only where the checkpoint has an
    average. ``expected`` restricts the accepted model classes, with a clear error for any other.
    """
    check_weights(weights)  # before reading a large file
    checkpoint = read_checkpoint(ckpt_path, map_location)
    return model_from_checkpoint(checkpoint, ckpt_path, expected, weights).to(map_location).eval()  # type: ignore[return-value]


def model_from_checkpoint(
    checkpoint: dict[str, Any], source: str | Path, expected: type[M] | tuple[type[M], ...] = LightningModule,  # type: ignore[assignment]
    weights: Weights = "averaged",
) -> M:
    """:func:`load` on a checkpoint already read (``source`` names it in errors); the model where the tensors are."""
    check_weights(weights)
    record = checkpoint[CHECKPOINT_KEY]
    cls = import_object(record["class_path"], "the checkpoint's model class_path")
    if not issubclass(cls, expected):
        names = [c.__name__ for c in (expected if isinstance(expected, tuple) else (expected,))]
        raise TypeError(f"{source} holds a {cls.__name__} checkpoint; expected one of: {', '.join(names)}")
    tokenizer = KaleidoTokenizer.from_state_dict(record["tokenizer"]) if record.get("tokenizer") is not None else None
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    model = cls(tokenizer=tokenizer, **hparams)
    has_average = holds_average(checkpoint)
    key = "current_model_state" if has_average and weights == "trained" else "state_dict"
    exported = exported_weights(checkpoint)
    if exported == "averaged" and weights == "trained":
        raise ValueError(f"{source} is an export of the averaged weights only; load it with weights='averaged', or load its source")
    model.load_state_dict(checkpoint[key])  # an export's bf16 weights are cast to the model's float32 as they load
    loaded: Weights = exported or ("averaged" if has_average and weights == "averaged" else "trained")
    model.loaded_weights = loaded  # what samples and metrics record, rather than what was asked for
    return model  # type: ignore[return-value]


def load_prior_weights(prior: nn.Module, ckpt_path: str | Path) -> None:
    """Start ``prior`` (a LatentPriorNet) from the prior of a LatentPrior or Kaleido checkpoint."""
    state = read_checkpoint(ckpt_path)["state_dict"]
    weights = {k.removeprefix("prior."): v for k, v in state.items() if k.startswith("prior.")}
    if not weights:
        raise ValueError(f"{ckpt_path} holds no prior weights (no 'prior.*' parameters)")
    prior.load_state_dict(weights)
