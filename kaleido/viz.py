"""Turning samples into pictures: uint8 conversion and grids (shared by the CLI, TensorBoard and notebooks)."""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def to_uint8(images: Tensor) -> Tensor:
    """[..., 3, H, W] in [-1, 1] → uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(image: Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy())


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2, upscale: int = 1) -> Tensor:
    """[N, 3, H, W] in [-1, 1] → one uint8 grid [3, H', W'], nearly square unless ``nrow`` is given."""
    if upscale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=upscale, mode="nearest")
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(to_uint8(images), nrow=nrow, padding=padding, pad_value=255)


def save_grid(images: Tensor, path: str, nrow: int | None = None, upscale: int = 1) -> None:
    Image.fromarray(image_grid(images, nrow, upscale=upscale).permute(1, 2, 0).numpy()).save(path)
