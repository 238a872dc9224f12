"""What a checkpoint file holds, read without pickled code: the file itself (``weights_only``), the key
of kaleido's own record in it, and settings dataclasses as plain data. No kaleido imports, so every
room (networks, modules, latent types' extractors) can read checkpoints without an import cycle."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

CHECKPOINT_KEY = "kaleido"  # the record of class path, tokenizer and version that every kaleido checkpoint holds
S = TypeVar("S")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
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


__all__ = ["CHECKPOINT_KEY", "from_dict", "read_checkpoint", "to_dict"]
