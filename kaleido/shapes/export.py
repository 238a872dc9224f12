"""The embedded ``shapes`` data as an image folder (``docs/data.md``): for tests, docs and trying the
folder pipeline (``extract``, ``ImageFolderDataModule``) without real images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from kaleido.data.folder_format import METADATA
from kaleido.datasets.folder_writer import check_output
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


def prepare_shapes(output: Path, num_items: int = 20000, shapes: ShapesConfig | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write scenes of the embedded ``shapes`` data as an image folder: ``<index>.png`` and ``metadata.jsonl``
    lines ``{"file_name", "caption"}``, the caption being the scene's condition ("a circle"). The folder
    pipeline (``extract``, ``shard``, ``ImageFolderDataModule``) on data that needs no download.

    Args:
        output: the folder to write.
        num_items: scenes to render.
        shapes: how scenes are drawn, e.g. ``--shapes.resolution 64`` (default: ShapesConfig's, 32²).
        seed: the scenes' seed (the data module's ``seed`` draws the same scenes).
        overwrite: write over an existing folder.
    """
    if num_items < 1:
        raise ValueError(f"--num_items must be >= 1, got {num_items}")
    output = Path(output)
    check_output(output, overwrite)
    shapes = shapes or ShapesConfig()
    export_shapes(output, num_items, shapes, seed)
    print(f"shapes: {num_items} images of {shapes.resolution}² -> {output}")
    return output


__all__ = ["export_shapes", "prepare_shapes"]
