"""Fréchet distance between Gaussian fits of real and generated features (FID).

`FID` is torchmetrics' `FrechetInceptionDistance` driven by any kaleido `FeatureExtractor` (or by
precomputed features): torchmetrics provides the streaming float64 sums, DDP reduction, reset
semantics, Lightning logging and the closed form; kaleido adds a cached reference (`FeatureStats`)
for the real side. `compute_fid` is the one-call version (what ``kaleido evaluate`` uses), through
the same metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from kaleido.metrics.features import extract_features
from kaleido.metrics.reference import FeatureStats, compute_feature_stats


class _PrecomputedFeatures(nn.Module):
    """Identity "extractor" so `FID` can be fed feature vectors [B, num_features] directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.identifier = f"precomputed-{num_features}"

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features [B, {self.num_features}], got {tuple(features.shape)}")
        return features


class FID(FrechetInceptionDistance):
    """Streaming FID with a pluggable feature extractor and an optional cached reference.

    Args:
        extractor: module mapping the tensors passed to `update` to features [B, D] with an int
            attribute ``num_features`` (every kaleido `FeatureExtractor` qualifies; it receives
            [-1, 1] images). None means `update` receives features of size `num_features`.
        num_features: feature size when `extractor` is None.
        reference: real-side statistics (e.g. from `ReferenceStatsCache`); when set, real
            updates are refused and the real states are not used.
        **kwargs: passed to `torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Real statistics survive `reset()` (``reset_real_features=False``) because the real side is
    usually fixed across evaluations; only the generated side is cleared.
    """

    def __init__(
        self,
        extractor: nn.Module | None = None,
        *,
        num_features: int | None = None,
        reference: FeatureStats | None = None,
        **kwargs: Any,
    ) -> None:
        if extractor is None:
            if num_features is None:
                raise ValueError("give either a feature extractor or num_features")
            extractor = _PrecomputedFeatures(num_features)
        if not isinstance(getattr(extractor, "num_features", None), int):
            # Without it torchmetrics would probe the module with a uint8 dummy image.
            raise TypeError("the extractor needs an int attribute `num_features`")
        kwargs.setdefault("reset_real_features", False)
        super().__init__(feature=extractor, normalize=False, **kwargs)
        self.reference: FeatureStats | None = None
        if reference is not None:
            self.set_reference(reference)
        self.register_load_state_dict_pre_hook(_restore_extractor_weights)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Metric state without the frozen extractor's weights, which come from their own file:
        a LightningModule holding an Inception FID would otherwise add ~90 MB to every checkpoint."""
        out = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in out if k.startswith(prefix + "inception.")]:
            del out[key]
        return out

    @property
    def extractor(self) -> nn.Module:
        """The feature module (torchmetrics stores it as ``self.inception``)."""
        return self.inception

    @property
    def num_features(self) -> int:
        return int(self.real_features_sum.shape[0])

    def set_reference(self, stats: FeatureStats) -> None:
        """Use `stats` as the real side (replaces and clears accumulated real features). Kept out
        of the metric state so DDP reduction does not sum copies of it across ranks."""
        if stats.num_features != self.num_features:
            raise ValueError(f"reference has {stats.num_features} features, extractor gives {self.num_features}")
        self.reference = stats
        self.real_features_sum.zero_()
        self.real_features_cov_sum.zero_()
        self.real_features_num_samples.zero_()
        self._computed = None  # invalidate torchmetrics' compute cache

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch (images for the extractor, or features) to the real or generated side."""
        if real and self.reference is not None:
            raise RuntimeError("this FID has a fixed reference; real updates would be ignored")
        super().update(imgs, real=real)

    def update_real(self, imgs: Tensor) -> None:
        """`update(imgs, real=True)`."""
        self.update(imgs, real=True)

    def update_fake(self, imgs: Tensor) -> None:
        """`update(imgs, real=False)`."""
        self.update(imgs, real=False)

    @staticmethod
    def _stats(total: Tensor, outer: Tensor, count: Tensor, side: str) -> FeatureStats:
        n = int(count)
        if n < 2:
            raise RuntimeError(f"FID needs at least 2 {side} samples, got {n}")
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return FeatureStats(mean=mean.detach().cpu(), cov=cov.detach().cpu(), num_samples=n)

    def real_stats(self) -> FeatureStats:
        """Statistics of the real side (the reference if set), e.g. to store in a cache."""
        if self.reference is not None:
            return self.reference
        return self._stats(self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples, "real")

    def fake_stats(self) -> FeatureStats:
        """Statistics of the generated side accumulated since the last reset."""
        return self._stats(self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples, "fake")

    def _load_stats(self, stats: FeatureStats, real: bool) -> None:
        """Set one side's torchmetrics states (sum of features, sum of their outer products, count)
        to those of `stats`."""
        if stats.num_features != self.num_features:
            raise ValueError(f"feature dimensions differ: {stats.num_features} vs {self.num_features}")
        side, n = ("real" if real else "fake"), stats.num_samples
        mean, cov = stats.mean.to(self.device, torch.float64), stats.cov.to(self.device, torch.float64)
        setattr(self, f"{side}_features_sum", mean * n)
        setattr(self, f"{side}_features_cov_sum", cov * (n - 1) + n * torch.outer(mean, mean))
        setattr(self, f"{side}_features_num_samples", torch.tensor(n, device=self.device))
        if not hasattr(self, "orig_dtype"):  # set by torchmetrics' update(), which casts the FID to it
            self.orig_dtype = torch.float64

    def compute(self) -> Tensor:
        """torchmetrics' FID between the real side (the reference, if set) and the generated side,
        a scalar in the dtype of the features."""
        if self.reference is None:
            return super().compute()
        local = self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples
        self._load_stats(self.reference, real=True)
        try:
            return super().compute()
        finally:  # the reference stays out of the metric state (see `set_reference`)
            self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples = local


def _restore_extractor_weights(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    # Counterpart of FID.state_dict: supply the extractor's current weights so strict loading of
    # a checkpoint without them does not report missing keys.
    for key, value in module.inception.state_dict().items():
        state_dict.setdefault(f"{prefix}inception.{key}", value)


def _as_stats(x: FeatureStats | Tensor | Iterable[Tensor], extractor: nn.Module | None, batch_size: int) -> FeatureStats:
    if isinstance(x, FeatureStats):
        return x
    if isinstance(x, Tensor) and x.ndim == 2:
        return FeatureStats.from_features(x)
    if extractor is None:
        raise ValueError("images were given but no feature extractor")
    if isinstance(x, Tensor):
        if x.ndim != 4:
            raise ValueError(f"expected features [N, D] or images [N, 3, H, W], got {tuple(x.shape)}")
        return FeatureStats.from_features(extract_features(extractor, x, batch_size))
    return compute_feature_stats(extractor, x)


def compute_fid(
    real: FeatureStats | Tensor | Iterable[Tensor],
    fake: FeatureStats | Tensor | Iterable[Tensor],
    extractor: nn.Module | None = None,
    batch_size: int = 64,
) -> float:
    """FID between two sets, each given as `FeatureStats`, features [N, D], images
    [N, 3, H, W] in [-1, 1], or an iterable of image batches (images need `extractor`): the
    statistics go into an `FID` metric, which computes torchmetrics' closed form."""
    reference = _as_stats(real, extractor, batch_size)
    metric = FID(num_features=reference.num_features, reference=reference)
    metric._load_stats(_as_stats(fake, extractor, batch_size), real=False)
    # The class's compute, not the instance's torchmetrics wrapper: that one would warn that
    # update() never ran, and there is nothing to synchronise or cache here.
    return float(FID.compute(metric))
