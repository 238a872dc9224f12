"""What a checkpoint file holds, read without pickled code: the file itself (``weights_only``), the key
of kaleido's own record in it, and settings dataclasses as plain data. No kaleido imports, so every
room (networks, modules, latent types' extractors) can read checkpoints without an import cycle."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

CHECKPOINT_KEY = "kaleido"  # the record of class path, tokenizer and version that every kaleido checkpoint holds
S = TypeVar("S")


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` if it is a file in ``torch.save``'s archive format, else one clear error (cheap: the zip
    directory at the end of the file is read, not the tensors), so a truncated copy or another kind of
    file named ``.ckpt`` fails by name rather than deep inside ``torch.load``."""
    path = Path(path)
    if path.is_dir():  # FSDP with state_dict_type="sharded" writes a folder of shards per checkpoint
        raise ValueError(
            f"{path} is a folder (an FSDP sharded checkpoint?): consolidate it into one file first, "
            f"`python -m lightning.pytorch.utilities.consolidate_checkpoint {path}` (writes {path}.consolidated)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable checkpoint: not a torch.save archive (a truncated or interrupted copy, "
            "or another kind of file); use a .ckpt written by `python -m kaleido fit`"
        )
    return path


def weights_only_refusal(path: str | Path, error: pickle.UnpicklingError) -> str:
    """One line for a file that ``torch.load(weights_only=True)`` refused: the object it would not build."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else type(error).__name__)
    reason = reason.split(" Please use", 1)[0]  # torch's advice to allowlist the class: not for files of unknown origin
    return f"{path} holds objects a weights-only load refuses, so it was not read ({reason})"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object: not kaleido's, maybe unsafe
        raise ValueError(weights_only_refusal(path, error)) from None
    except (RuntimeError, EOFError, KeyError) as error:  # a damaged archive
        raise ValueError(f"{path} is not a readable checkpoint (damaged: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise ValueError(
            f"{path} is not a kaleido checkpoint (it has no {CHECKPOINT_KEY!r} record); kaleido.load reads "
            "checkpoints written by `python -m kaleido fit` (Kaleido, DiffusionModel, LatentPrior or VQTokenizer)"
        )
    return checkpoint


def to_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings)


def from_dict(cls: type[S], value: S | dict[str, Any] | None) -> S:
    """Rebuild a settings dataclass from a checkpoint dict (lists back to tuples); pass instances through."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(value) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; accepted: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


__all__ = ["CHECKPOINT_KEY", "check_checkpoint_file", "from_dict", "read_checkpoint", "to_dict", "weights_only_refusal"]
