"""Writes an image folder (``metadata.jsonl`` + PNGs) from ``(file_name, image, record)`` items: the
format ``ImageFolderDataModule`` and ``kaleido extract`` read (``docs/data.md``)."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from kaleido.class_paths import MissingPackageError
from kaleido.data.folder_format import METADATA


def package_dir(module: str, install: str) -> Path:
    """The folder of installed package ``module``, found without importing it (its code need not run)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the package {module!r} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to write over an existing image folder unless asked (its sidecars would no longer match)."""
    if (output / METADATA).exists() and not overwrite:
        raise ValueError(f"{output / METADATA} exists; pass --overwrite true to write the folder again")


def write_folder(output: Path, items: Iterable[tuple[str, Image.Image, Mapping[str, Any]]], total: int | None = None) -> int:
    """Save every image as PNG under ``output`` and its record (``file_name`` added) as one line of
    ``metadata.jsonl``; the metadata appears only once complete (written aside, then renamed), so an
    interrupted run never leaves a folder that looks finished. Returns the number of images."""
    output.mkdir(parents=True, exist_ok=True)
    partial = output / (METADATA + ".partial")
    count = 0
    with open(partial, "w", encoding="utf-8") as lines:
        for file_name, image, record in tqdm(items, total=total, desc=f"write {output.name}", unit="image"):
            path = output / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format="PNG")
            lines.write(json.dumps({"file_name": file_name, **record}, ensure_ascii=False) + "\n")
            count += 1
    os.replace(partial, output / METADATA)
    return count


__all__ = ["MissingPackageError", "check_output", "package_dir", "write_folder"]
