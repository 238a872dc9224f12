"""kaleido: Kaleido Diffusion (Gu et al., 2024) on Lightning.

    model = kaleido.load("last.ckpt")
    out = model.generate(["a circle"] * 8, cfg_scale=4.0)
"""

from kaleido.__about__ import __version__
from kaleido.checkpoint import load
from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.shards import ShardDataModule
from kaleido.extract import extract
from kaleido.modules.diffusion import DiffusionModel
from kaleido.modules.kaleido import Kaleido
from kaleido.modules.prior import LatentPrior
from kaleido.modules.vq import VQTokenizer

__all__ = [
    "DiffusionModel",
    "ImageFolderDataModule",
    "Kaleido",
    "LatentPrior",
    "ShardDataModule",
    "VQTokenizer",
    "__version__",
    "extract",
    "load",
]
