"""Geometry of object masks for the box and blob extractors: the second-moment ellipse of a mask,
near-circles snapped to circles, a box's pixels, and images as uint8 arrays for processors.

Normalised image coordinates, as in :mod:`kaleido.latents.geometry` (``x`` right, ``y`` down, in ``[0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


# -- ellipses from masks --------------------------------------------------------------------------
def ellipse_from_mask(
    mask: np.ndarray | Tensor, isotropy_tolerance: float = 1e-6
) -> tuple[float, float, float, float, float]:
    """The second-moment ellipse ``(cx, cy, a, b, theta)`` of a mask ``[H, W]`` (bool, or weights >= 0).

    Normalised coordinates; ``a >= b`` are ``2 * sqrt`` of the covariance eigenvalues (for a filled
    ellipse these are exactly its semi-axes); ``theta`` in degrees in ``[0, 180)``: the direction of
    the major axis, from +x towards +y (y down: clockwise on screen). Each pixel counts as a filled
    square, hence the ``1/12 px^2`` added to the variance of pixel centres. When the axes differ by at
    most ``isotropy_tolerance * a`` the orientation is noise: the ellipse becomes the circle of equal
    area (``a = b = sqrt(a b)``) with ``theta = 0``.
    """
    weights = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if weights.ndim != 2:
        raise ValueError(f"expected one mask [H, W], got shape {weights.shape}")
    weights = weights.astype(np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("the mask is empty (or has negative weights): no ellipse to fit")
    height, width = weights.shape
    rows, cols = np.nonzero(weights)
    w = weights[rows, cols]
    xs, ys = (cols + 0.5) / width, (rows + 0.5) / height
    total = w.sum()
    cx, cy = float((w * xs).sum() / total), float((w * ys).sum() / total)
    dx, dy = xs - cx, ys - cy
    pixel = np.diag([1.0 / (12 * width * width), 1.0 / (12 * height * height)])
    cov = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / total + pixel
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    a, b = 2.0 * math.sqrt(max(eigval[1], 0.0)), 2.0 * math.sqrt(max(eigval[0], 0.0))
    theta = math.degrees(math.atan2(eigvec[1, 1], eigvec[0, 1])) % 180.0
    return snap_isotropic((cx, cy, a, b, theta), isotropy_tolerance)


def snap_isotropic(
    ellipse: tuple[float, float, float, float, float], tolerance: float
) -> tuple[float, float, float, float, float]:
    """Near-circles (``a - b <= tolerance * a``) → the circle of equal area with ``theta = 0``.

    Rasterised circles and squares have axes a hair apart and a random orientation; keeping that
    noise would make the prior learn arbitrary angles.
    """
    cx, cy, a, b, theta = (float(v) for v in ellipse)
    if b > a:
        a, b, theta = b, a, theta + 90.0
    if a - b <= tolerance * a:
        a = b = math.sqrt(a * b)
        theta = 0.0
    return cx, cy, a, b, theta % 180.0


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels (centres) inside a normalised box, at least one pixel: an extractor's fallback."""
    x1, y1, x2, y2 = box
    c0, r0 = min(int(x1 * width), width - 1), min(int(y1 * height), height - 1)
    c1, r1 = max(math.ceil(x2 * width), c0 + 1), max(math.ceil(y2 * height), r0 + 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


# -- images ---------------------------------------------------------------------------------------
def to_uint8_images(images: Tensor) -> list[np.ndarray]:
    """``[B, 3, H, W]`` in ``[-1, 1]`` (the extractor contract) → uint8 ``[H, W, 3]`` arrays for processors."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [p.permute(1, 2, 0).numpy() for p in pixels]


__all__ = ["box_mask", "ellipse_from_mask", "snap_isotropic", "to_uint8_images"]
