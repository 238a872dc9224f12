"""Classes named by ``class_path`` in configs and checkpoints: the one import-and-check that latent types,
denoisers and guiders share, and the one error for an optional package that is not installed. Imports
nothing of kaleido, so every room can use it."""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

T = TypeVar("T")


class MissingPackageError(ValueError):
    """An optional package is not installed; the message names the install line. A ``ValueError``, so
    the command line says it in one line (``kaleido.__main__``)."""


def import_object(path: str, what: str) -> Any:
    """The object at the dotted ``path`` ("package.module.name"); one line naming ``what`` it should have
    been if it cannot be imported (ValueError)."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import {what} {path!r}: {error}") from None


def import_class(class_path: str, base: type[T], what: str) -> type[T]:
    """The class at ``class_path`` ("package.module.Name"), which must subclass ``base``; otherwise one
    line naming ``what`` it should have been (ValueError if it cannot be imported, TypeError if it is
    something else)."""
    cls = import_object(class_path, f"{what} class_path")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{what} class_path {class_path} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls
