"""Colour-space maths for the ``colour`` latent type (:mod:`kaleido.latents.colour`): sRGB ⇄ CIELAB (D65),
the named colours' representatives and CIE76 ΔE between them, the earth mover's distance between two
palettes, and batched k-means colour clusters in CIELAB."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from kaleido.latents.foreground import colour_name

CUBE_LEVELS = 32  # the RGB grid whose points, named by colour_name, give each name its representative

# sRGB primaries and D65 white (IEC 61966-2-1); the white point is the matrix's row sums, so that RGB
# white maps to exactly L = 100, a = b = 0.
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(dim=1)
_DELTA = 6 / 29  # CIELAB's knee between the cube root and its linear toe


# -- CIELAB -----------------------------------------------------------------------------------------
def _full_precision(tensor: Tensor) -> torch.autocast:
    """Autocast off on the tensor's device: adherence may run inside a bf16 autocast region (sampling,
    a Lightning hook), where the matmuls below would return bfloat16 and move colours by ΔE ~1."""
    return torch.autocast(tensor.device.type, enabled=False)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in ``[0, 1]`` (``[..., 3]``) → CIELAB (D65): L in ``[0, 100]``, a and b about ``±100``."""
    with _full_precision(rgb):
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        xyz = linear @ _RGB_TO_XYZ.to(rgb).T / _WHITE.to(rgb)
        f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
        return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIELAB (D65) ``[..., 3]`` → sRGB in ``[0, 1]``, colours outside the sRGB gamut clipped."""
    with _full_precision(lab):
        fy = (lab[..., 0] + 16) / 116
        f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], dim=-1)
        xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE.to(lab)
        linear = (xyz @ _XYZ_TO_RGB.to(lab).T).clamp(0, 1)
        return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=1e-12) ** (1 / 2.4) - 0.055).clamp(0, 1)


# -- the named colours --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def named_colours() -> dict[str, tuple[float, float, float]]:
    """Each word :func:`colour_name` gives → its representative, in CIELAB: the mean of the points of a
    ``CUBE_LEVELS``-level RGB grid that bear that name. Derived from ``colour_name``, so the words and
    their regions live in one place. Sorted by name."""
    levels = np.linspace(0.0, 255.0, CUBE_LEVELS)
    points = np.array(list(itertools.product(levels, levels, levels)))
    names = np.array([colour_name(p) for p in points])
    lab = rgb_to_lab(torch.from_numpy(points / 255.0)).numpy()
    return {str(n): tuple(float(v) for v in lab[names == n].mean(axis=0)) for n in sorted(set(names))}  # type: ignore[misc]


def colour_rgb(name: str) -> tuple[int, int, int]:
    """The representative of a colour word as an RGB triple in ``0..255`` (what the strip is painted with)."""
    rgb = lab_to_rgb(torch.tensor(named_colours()[name], dtype=torch.float64)) * 255
    return tuple(int(v) for v in rgb.round().tolist())  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _distances() -> tuple[tuple[str, ...], np.ndarray]:
    """The names and the CIE76 ΔE (Euclidean CIELAB distance) between their representatives."""
    table = named_colours()
    lab = np.array(list(table.values()))
    return tuple(table), np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=-1)


def max_distance() -> float:
    """The largest ΔE between two named colours: the earth mover's distance of the most different palettes."""
    return float(_distances()[1].max())


def palette_distance(first: Mapping[str, int], second: Mapping[str, int]) -> float:
    """Earth mover's distance, in ΔE, between two palettes (name → whole percent, each adding up to 100):
    the least mean ΔE over the pixels' share when one palette's mass is moved onto the other's.

    Exact: with integer supplies the transport problem has an integral optimum, so pairing 1% units
    one to one (Hungarian) solves it."""
    names, table = _distances()
    index = {n: i for i, n in enumerate(names)}
    units = [[index[n] for n, p in palette.items() for _ in range(p)] for palette in (first, second)]
    if len(units[0]) != 100 or len(units[1]) != 100:
        raise ValueError(f"palettes must add up to 100%, got {len(units[0])}% and {len(units[1])}%")
    cost = table[np.ix_(units[0], units[1])]
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum() / 100)


# -- k-means ------------------------------------------------------------------------------------------
def _distances_to(pixels: Tensor, centres: Tensor) -> Tensor:
    """ΔE from each pixel to each centre: ``[B, M, 3]``, ``[B, K, 3]`` → ``[B, M, K]``. From the differences,
    not ‖p‖² − 2p·c + ‖c‖², which cancels to ~1e-3 in float32 at L ~ 100; fused, ~5× the broadcast's speed."""
    return torch.cdist(pixels, centres, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest(pixels: Tensor, centres: Tensor) -> Tensor:
    """The index of each pixel's nearest centre: ``[B, M, 3]``, ``[B, K, 3]`` → ``[B, M]``."""
    return _distances_to(pixels, centres).argmin(-1)


def _counts(nearest: Tensor, clusters: int) -> Tensor:
    """How many pixels each centre holds: ``[B, M]`` indices → ``[B, K]`` (float)."""
    offsets = torch.arange(nearest.shape[0], device=nearest.device)[:, None] * clusters  # one bin range per image
    return torch.bincount((nearest + offsets).flatten(), minlength=nearest.shape[0] * clusters).view(-1, clusters).float()


def kmeans_palettes(images: Tensor, clusters: int, iterations: int, seed: int, max_pixels: int) -> tuple[Tensor, Tensor]:
    """K-means colour clusters of every image, batched on the images' device.

    Args:
        images: ``[B, 3, H, W]`` in ``[-1, 1]``.
        clusters: K.
        iterations: Lloyd steps after the seeding (a fixed number: no host sync to test convergence).
        seed: fixes k-means++'s K uniform numbers, shared by every image: the first centre is the pixel at
            that quantile of the raster order, each next one the pixel at its quantile of the cumulative
            squared distance to the centres so far (D² sampling), so an image's clusters never depend
            on the other images of its batch.
        max_pixels: images with more pixels are read on a regular grid of every s-th row and column.

    Returns:
        The centres ``[B, K, 3]`` in CIELAB and each cluster's share of the pixels read ``[B, K]`` (a
        centre that duplicates another, in an image of fewer than K colours, gets share 0).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    with _full_precision(images):  # under bf16 autocast the matmuls would move centres and shares
        stride = max(1, math.ceil(math.sqrt(images.shape[2] * images.shape[3] / max_pixels)))
        rgb = ((images[:, :, ::stride, ::stride].float() + 1) / 2).clamp(0, 1)
        pixels = rgb_to_lab(rgb.flatten(2).transpose(1, 2))  # [B, M, 3]
        batch, count = pixels.shape[:2]
        quantiles = torch.rand(clusters, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        first = torch.full((batch, 1), min(int(quantiles[0] * count), count - 1), device=pixels.device)
        centres = pixels.gather(1, first[..., None].expand(-1, -1, 3))
        for quantile in quantiles[1:]:
            cumulative = (_distances_to(pixels, centres).amin(-1) ** 2).cumsum(1)  # [B, M]: D² sampling
            chosen = torch.searchsorted(cumulative, quantile * cumulative[:, -1:], right=True).clamp(max=count - 1)
            centres = torch.cat([centres, pixels.gather(1, chosen[..., None].expand(-1, -1, 3))], dim=1)
        for _ in range(iterations):
            nearest = _nearest(pixels, centres)
            sums = pixels.new_zeros(batch, clusters, 3).scatter_add_(1, nearest[..., None].expand(-1, -1, 3), pixels)
            sizes = _counts(nearest, clusters)[..., None]
            centres = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)  # an empty cluster keeps its centre
        return centres, _counts(_nearest(pixels, centres), clusters) / count

