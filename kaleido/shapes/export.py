"""The embedded ``shapes`` data as an image folder (``docs/data.md``): for tests, docs and trying the
folder pipeline (``extract``, ``ImageFolderDataModule``) without real images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from kaleido.data.folder_format import METADATA
from kaleido.shapes.dataset import ShapesDataset
from kaleido.shapes.scenes import ShapesConfig, condition_text, render


def export_shapes(root: str | Path, num_items: int, shapes: ShapesConfig | None = None, seed: int = 0) -> Path:
    """Render ``num_items`` scenes of the embedded ``shapes`` data set (:class:`ShapesConfig` ``shapes``)
    as PNGs in ``root`` with a ``metadata.jsonl`` whose captions are the conditions ("a circle")."""
    dataset = ShapesDataset(num_items, shapes or ShapesConfig(), seed=seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / METADATA, "w", encoding="utf-8") as metadata:
        for index in range(num_items):
            scene = dataset.scene(index)
            file_name = f"{index:06d}.png"
            Image.fromarray(render(scene, dataset.config.resolution)).save(root / file_name)
            metadata.write(json.dumps({"file_name": file_name, "caption": condition_text(scene)}) + "\n")
    return root


__all__ = ["export_shapes"]
