"""Improved precision and recall (Kynkäänniemi et al., 2019) on feature vectors.

Each set's manifold is approximated by the union of hyperspheres centred on its features, the
radius of each being the distance to its k-th nearest *other* feature of the same set (k = 3).

* precision = share of generated features inside at least one real hypersphere (fidelity);
* recall    = share of real features inside at least one generated hypersphere (coverage).

Distances are computed in row blocks of `batch_size` with `torch.cdist`, so memory is
O(batch_size · N) rather than O(N²) (50k × 50k float32 would be 10 GB); everything runs on
the device of the real features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PrecisionRecall(NamedTuple):
    """Improved precision and recall, each in [0, 1]."""

    precision: float
    recall: float


def _check(features: Tensor, name: str) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be [N, D], got {tuple(features.shape)}")
    return features.float() if not features.is_floating_point() else features


@torch.no_grad()
def knn_radii(features: Tensor, k: int = 3, batch_size: int = 1024) -> Tensor:
    """Distance [N] from each feature to its k-th nearest neighbour among the *other* features."""
    features = _check(features, "input")
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    radii = []
    for start in range(0, n, batch_size):
        block = torch.cdist(features[start : start + batch_size], features)
        rows = torch.arange(block.shape[0], device=block.device)
        # Exclude each point itself explicitly: cdist's matmul path can give it a tiny
        # non-zero distance, so "take the (k+1)-th smallest" would be fragile.
        block[rows, rows + start] = float("inf")
        radii.append(block.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


@torch.no_grad()
def manifold_coverage(queries: Tensor, centres: Tensor, radii: Tensor, batch_size: int = 1024) -> Tensor:
    """Boolean [M]: whether each query lies in at least one ball B(centres[j], radii[j])."""
    inside = []
    for start in range(0, queries.shape[0], batch_size):
        block = torch.cdist(queries[start : start + batch_size], centres)
        inside.append((block <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


@torch.no_grad()
def precision_recall(
    real_features: Tensor, fake_features: Tensor, k: int = 3, batch_size: int = 1024
) -> PrecisionRecall:
    """Improved precision/recall of `fake_features` [M, D] against `real_features` [N, D].

    Computed on the device of `real_features` (fakes are moved there). `batch_size` rows of
    distances are held at a time: about batch_size · max(N, M) floats.
    """
    real = _check(real_features, "real")
    fake = _check(fake_features, "fake").to(real.device, real.dtype)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    # Exact integer counts / n, not a float32 mean, so hand-countable cases compare exactly.
    precision = int(manifold_coverage(fake, real, real_radii, batch_size).sum()) / fake.shape[0]
    recall = int(manifold_coverage(real, fake, fake_radii, batch_size).sum()) / real.shape[0]
    return PrecisionRecall(precision=precision, recall=recall)
