"""Sample diversity: Vendi score (Friedman & Dieng, 2023) and mean pairwise cosine similarity.

Vendi score of n samples with similarity matrix K (K_ii = 1):

    VS_q = exp(H_q(λ)),  λ = eigenvalues of K / n  (non-negative, summing to 1),

H_1 the Shannon entropy -Σ λ log λ (the default) and H_q the Rényi entropy of order q. It is the
"effective number of distinct samples": 1 for n copies of one sample, n for n orthogonal ones.

The cosine kernel is K = X Xᵀ for the unit-norm rows X [n, d]. X Xᵀ and Xᵀ X share their non-zero
eigenvalues, so when n > d the d × d matrix Xᵀ X / n is decomposed instead (O(n d² + d³) rather
than O(n² d + n³)).

Everything runs on the CPU in float64, whatever the features' device: a d × d eigendecomposition
(d = 2,048 for Inception) takes about a second there, the result does not depend on the device, and
CUDA's solver needs a handle that can fail to be created when other processes fill the GPU (it
stopped two evaluation sweeps on a shared H200 on 2026-12-03).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit_rows(features: Tensor) -> Tensor:
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"expected features [n, d] with n >= 1, got {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64)
    norms = x.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError("cosine similarity is undefined for all-zero feature vectors")
    return x / norms.unsqueeze(1)


def _entropy_exp(eigvals: Tensor, q: float) -> float:
    # eigvalsh can return tiny negative values for a PSD matrix; they are rounding noise.
    p = eigvals.clamp_min(0)
    p = p / p.sum()
    p = p[p > 0]
    if q == 1:
        return math.exp(float(-(p * p.log()).sum()))
    if math.isinf(q):
        return 1.0 / float(p.max())
    return math.exp(float(torch.log((p**q).sum())) / (1 - q))


def vendi_score_from_kernel(kernel: Tensor, q: float = 1.0) -> float:
    """Vendi score of a symmetric PSD similarity matrix [n, n] with unit diagonal."""
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"expected a square kernel matrix, got {tuple(kernel.shape)}")
    if q < 0:
        raise ValueError(f"order q must be >= 0, got {q}")
    k = kernel.detach().to("cpu", torch.float64)
    k = (k + k.T) / 2
    return _entropy_exp(torch.linalg.eigvalsh(k / k.shape[0]), q)


def vendi_score(features: Tensor, q: float = 1.0) -> float:
    """Vendi score of features [n, d] under the cosine-similarity kernel (order `q`, default 1)."""
    if q < 0:
        raise ValueError(f"order q must be >= 0, got {q}")
    x = _unit_rows(features)
    n, d = x.shape
    gram = x.T @ x if n > d else x @ x.T  # same non-zero spectrum, pick the smaller matrix
    return _entropy_exp(torch.linalg.eigvalsh(gram / n), q)


def mean_pairwise_similarity(features: Tensor) -> float:
    """Mean cosine similarity over all ordered pairs i != j of features [n, d] (n >= 2).

    Uses Σ_{i,j} x_i·x_j = ||Σ_i x_i||² for unit rows, minus the n diagonal ones, so it is
    O(n d) with no n × n matrix.
    """
    x = _unit_rows(features)
    n = x.shape[0]
    if n < 2:
        raise ValueError("mean pairwise similarity needs at least 2 samples")
    total = x.sum(dim=0).square().sum()
    return float((total - n) / (n * (n - 1)))


def pairwise_cosine_similarity(features: Tensor) -> Tensor:
    """Cosine similarity matrix [n, n] (float64) of features [n, d], e.g. for `vendi_score_from_kernel`."""
    x = _unit_rows(features)
    return x @ x.T
