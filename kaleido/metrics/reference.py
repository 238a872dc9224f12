"""Gaussian feature statistics (mean, covariance) and an on-disk cache of reference statistics.

FID compares the Gaussian fitted to generated-image features against the one fitted to real
features. The real side depends only on (data set, feature extractor, sample count), so it is
computed once and stored. Files are safetensors (no pickle, so loading runs no code); a ``.pt``
path is written with `torch.save` and read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureStats:
    """Mean [D] and unbiased covariance [D, D] (float64, CPU) of `num_samples` feature vectors."""

    mean: Tensor
    cov: Tensor
    num_samples: int

    def __post_init__(self) -> None:
        d = self.mean.shape[-1]
        if self.mean.ndim != 1 or tuple(self.cov.shape) != (d, d):
            raise ValueError(f"mean must be [D] and cov [D, D], got {tuple(self.mean.shape)}, {tuple(self.cov.shape)}")

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: Tensor) -> FeatureStats:
        """Statistics of features [N, D] (N >= 2)."""
        acc = StatsAccumulator()
        acc.update(features)
        return acc.compute()

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write to ``path`` (safetensors, or torch.save for a ``.pt``/``.pth`` suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mean": self.mean.double().contiguous().cpu(),
            "cov": self.cov.double().contiguous().cpu(),
            "num_samples": torch.tensor(self.num_samples, dtype=torch.int64),
        }
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: evaluations may run side by side
        if path.suffix in (".pt", ".pth"):
            torch.save({**tensors, "metadata": dict(metadata or {})}, tmp)
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        tmp.replace(path)  # atomic: a crashed or concurrent writer never leaves a half file

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read a file written by `save`."""
        return cls._load(Path(path))[0]

    @classmethod
    def _load(cls, path: Path) -> tuple[FeatureStats, dict[str, str]]:
        if path.suffix in (".pt", ".pth"):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
            metadata = dict(data.get("metadata", {}))
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                data = {k: f.get_tensor(k) for k in f.keys()}
                metadata = dict(f.metadata() or {})
        stats = cls(mean=data["mean"].double(), cov=data["cov"].double(), num_samples=int(data["num_samples"]))
        return stats, metadata


class StatsAccumulator:
    """Streaming mean/covariance: sums of x and x xᵀ kept in float64 (as torchmetrics' FID does),
    so statistics of 50k features never need all features in memory at once."""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.outer_sum: Tensor | None = None
        self.num_samples = 0

    def update(self, features: Tensor) -> None:
        """Add features [B, D]."""
        if features.ndim != 2:
            raise ValueError(f"expected features [B, D], got {tuple(features.shape)}")
        f = features.detach().double()
        if self.sum is None or self.outer_sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer_sum = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.sum += f.sum(0)
        self.outer_sum += f.T @ f
        self.num_samples += f.shape[0]

    def compute(self) -> FeatureStats:
        """Mean and unbiased covariance of everything added so far."""
        if self.sum is None or self.outer_sum is None or self.num_samples < 2:
            raise RuntimeError(f"need at least 2 samples for a covariance, got {self.num_samples}")
        n = self.num_samples
        mean = self.sum / n
        cov = (self.outer_sum - n * torch.outer(mean, mean)) / (n - 1)
        return FeatureStats(mean=mean.cpu(), cov=cov.cpu(), num_samples=n)


@torch.no_grad()
def compute_feature_stats(
    extractor: nn.Module, images: Iterable[Tensor], num_samples: int | None = None
) -> FeatureStats:
    """Statistics of `extractor` features over batches of images, using the first `num_samples`
    images (all if None). Raises if the iterable holds fewer than `num_samples` images, so that
    a cache entry never claims more samples than it was computed from."""
    acc = StatsAccumulator()
    for batch in images:
        if num_samples is not None:
            batch = batch[: num_samples - acc.num_samples]
        if batch.shape[0] > 0:
            acc.update(extractor(batch))
        if num_samples is not None and acc.num_samples >= num_samples:
            break
    if num_samples is not None and acc.num_samples < num_samples:
        raise ValueError(f"asked for {num_samples} reference samples, the data held only {acc.num_samples}")
    return acc.compute()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


class ReferenceStatsCache:
    """Directory of reference statistics, one file per (data set, extractor, sample count).

    The file name is built from the three parts; the unsanitised parts are also stored in the
    file's metadata and checked on load, so two keys that sanitise alike cannot be confused.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def _metadata(dataset: str, extractor_id: str, num_samples: int | None) -> dict[str, str]:
        return {"dataset": dataset, "extractor": extractor_id, "num_samples": "all" if num_samples is None else str(num_samples)}

    def path(self, dataset: str, extractor_id: str, num_samples: int | None) -> Path:
        """File that holds (or would hold) the statistics for this key."""
        n = "all" if num_samples is None else str(num_samples)
        return self.root / f"{_slug(dataset)}__{_slug(extractor_id)}__n{n}.safetensors"

    def load(self, dataset: str, extractor_id: str, num_samples: int | None) -> FeatureStats | None:
        """Cached statistics, or None when absent or stored under a different unsanitised key."""
        path = self.path(dataset, extractor_id, num_samples)
        if not path.is_file():
            return None
        stats, metadata = FeatureStats._load(path)
        expected = self._metadata(dataset, extractor_id, num_samples)
        if any(metadata.get(k) != v for k, v in expected.items()):
            return None
        return stats

    def save(self, stats: FeatureStats, dataset: str, extractor_id: str, num_samples: int | None) -> Path:
        """Store `stats` under the key; returns the file path."""
        path = self.path(dataset, extractor_id, num_samples)
        stats.save(path, metadata=self._metadata(dataset, extractor_id, num_samples))
        return path

    def get_or_compute(
        self,
        dataset: str,
        extractor: nn.Module,
        images: Iterable[Tensor] | Callable[[], Iterable[Tensor]],
        num_samples: int | None = None,
    ) -> FeatureStats:
        """Cached statistics for (dataset, extractor.identifier, num_samples), computed from
        `images` (batches of [-1, 1] images, or a zero-argument callable returning them, which is
        only called on a cache miss) and stored when absent."""
        extractor_id = str(getattr(extractor, "identifier", type(extractor).__name__))
        cached = self.load(dataset, extractor_id, num_samples)
        if cached is not None:
            return cached
        batches = images() if callable(images) else images
        stats = compute_feature_stats(extractor, batches, num_samples)
        self.save(stats, dataset, extractor_id, num_samples)
        return stats
