"""``shapes``: the embedded toy data set (seeded scenes of coloured shapes, no files, no download), its
description grammar, the analytic parser that reads images back, the latents it knows exactly, and mode
coverage. One data set among others: it keeps the data contract (``kaleido.data.contract``) and nothing
outside this package imports it.

    data:
      class_path: kaleido.shapes.ShapesDataModule
      init_args:
        latents: [{class_path: kaleido.shapes.ShapesTextLatent}]
"""

from kaleido.shapes.datamodule import ShapesDataModule
from kaleido.shapes.dataset import ShapesDataset
from kaleido.shapes.export import export_shapes
from kaleido.shapes.latents import ShapesTextExtractor, ShapesTextLatent, ground_truth, shapes_extractor
from kaleido.shapes.parser import ParsedObject, parse_image
from kaleido.shapes.reader import scene_from_image
from kaleido.shapes.scenes import SHAPES, Scene, ShapeObject, ShapesConfig, condition_text, render
from kaleido.shapes.text import describe, parse_description

__all__ = [
    "SHAPES",
    "ParsedObject",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ShapesDataModule",
    "ShapesDataset",
    "ShapesTextExtractor",
    "ShapesTextLatent",
    "condition_text",
    "describe",
    "export_shapes",
    "ground_truth",
    "parse_description",
    "parse_image",
    "render",
    "scene_from_image",
    "shapes_extractor",
]
