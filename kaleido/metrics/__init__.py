"""Sample-quality and diversity metrics: FID, improved precision/recall, Vendi score, mode coverage, latent adherence.

All image inputs follow the project convention (float [B, 3, H, W] in [-1, 1]); the metrics
themselves work on features from a pluggable `FeatureExtractor`.

The FID names are resolved lazily (PEP 562): importing torchmetrics costs seconds, and code that
only needs, say, `vendi_score` should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kaleido.metrics.diversity import (
    mean_pairwise_similarity,
    pairwise_cosine_similarity,
    vendi_score,
    vendi_score_from_kernel,
)
from kaleido.metrics.features import (
    FEATURE_EXTRACTORS,
    FeatureExtractor,
    InceptionFeatures,
    TimmFeatures,
    build_feature_extractor,
    extract_features,
    find_inception_weights,
)
from kaleido.metrics.modes import (
    AttributeCoverage,
    ModeCoverage,
    attribute_coverage,
    covered_modes,
    total_variation,
    votes_coverage,
)
from kaleido.metrics.precision_recall import PrecisionRecall, knn_radii, manifold_coverage, precision_recall
from kaleido.metrics.reference import FeatureStats, ReferenceStatsCache, StatsAccumulator, compute_feature_stats

if TYPE_CHECKING:
    from kaleido.metrics.fid import FID, compute_fid

# Only the FID names are lazy: they need torchmetrics.
_LAZY = {name: "kaleido.metrics.fid" for name in ("FID", "compute_fid")}

__all__ = [
    "AttributeCoverage",
    "FEATURE_EXTRACTORS",
    "FID",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "ModeCoverage",
    "PrecisionRecall",
    "ReferenceStatsCache",
    "StatsAccumulator",
    "TimmFeatures",
    "attribute_coverage",
    "build_feature_extractor",
    "compute_feature_stats",
    "compute_fid",
    "covered_modes",
    "extract_features",
    "find_inception_weights",
    "knn_radii",
    "manifold_coverage",
    "mean_pairwise_similarity",
    "pairwise_cosine_similarity",
    "precision_recall",
    "total_variation",
    "votes_coverage",
    "vendi_score",
    "vendi_score_from_kernel",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
