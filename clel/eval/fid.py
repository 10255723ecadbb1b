"""FID and KID: samples drawn in resumable, shardable batches, their Inception features, the reference; and the
same distances in a judge's features (``fd_judge`` / ``kid_judge``), which no CLEL model is trained with."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data import to_uint8
from ..distributed import dist_info
from ..fast import FastPath, prepare
from ..sampling import ChainSettings, sample
from ..weights import model_fingerprint
from ..runtime import model_device
from . import EvaluationError


@dataclass
class GenerateSettings:
    """How FID samples are drawn (recorded with the shards; a resume with other settings is refused): the chain,
    the seed and the batch size (seeds are per batch).

    ``reference`` protocol (the default; the reference implementation): ``sweeps`` sweeps (10) of the training
    chain over a fresh uniform batch, each sweep preceded by the strong augmentation and the 0.1% reset, as in
    training (``ChainSettings.reference``). ``paper`` protocol: one plain chain of 10x the training steps from
    uniform noise (600 for Base; ``ChainSettings.paper``).
    """

    chain: ChainSettings = field(default_factory=lambda: ChainSettings.reference(None))
    seed: int = 0
    batch_size: int = 250

    @classmethod
    def for_model(cls, model, protocol: str = "reference", seed: int | None = None, batch_size: int | None = None,
                  **chain: Any) -> "GenerateSettings":
        """``protocol``'s chain for ``model``; ``chain`` overrides that are not None replace its fields."""
        if protocol not in ("reference", "paper"):
            raise EvaluationError(f"unknown FID protocol {protocol!r}; use reference or paper")
        made = getattr(ChainSettings, protocol)(model, **{k: v for k, v in chain.items() if v is not None})
        st = cls(made, 0 if seed is None else seed, 250 if batch_size is None else batch_size)
        if made.sweeps < 1 or made.steps < 1 or st.batch_size < 1:
            raise EvaluationError("sweeps, steps and batch size must be at least 1")
        return st

    def key(self) -> dict[str, Any]:
        """What determines the samples (the batch size does too: seeds are per batch). Unconditional chains: the
        guidance and the concept direction do not touch them; a start from noise is what records from before the
        start was a setting drew (so they stay valid)."""
        chain = {k: v for k, v in asdict(self.chain).items() if k not in ("guidance", "direction")
                 and not (k == "start" and v == "noise")}
        return {**chain, "seed": self.seed, "batch_size": self.batch_size}


def _shard_name(start: int, end: int) -> str:
    return f"b{start:07d}-{end:07d}"


def _batch_ranges(n: int, batch: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + batch)) for s in range(0, n, batch)]


def _batch_seed(seed: int, start: int) -> int:
    return int.from_bytes(hashlib.sha256(f"clel-fid-{seed}-{start}".encode()).digest()[:7], "little")


def _read_tensor(path: Path, key: str) -> Tensor | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))[key]
    except Exception:  # a file cut short by a killed run: regenerate it
        return None


def _write_tensor(path: Path, key: str, t: Tensor, meta: dict[str, str] | None = None) -> None:
    from ..weights import write_safetensors_atomic

    write_safetensors_atomic({key: t}, path, metadata=meta)


def _claim(out: Path, model, st: GenerateSettings, rank: int, resume: bool) -> None:
    """Record what the samples in ``out`` come from; refuse other settings or weights unless not resuming."""
    ident = {"settings": st.key(), "weights": model_fingerprint(model), "image_size": model.cfg.image_size}
    path = out / "generate.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != ident and resume:
            raise EvaluationError(f"{out} holds samples from other settings or weights ({old}); pass "
                                  f"--no-resume to replace them, or another --out")
        # with resume=False every batch is redrawn and its shard (and features) overwritten
    if rank == 0 or not path.is_file():
        from ..weights import write_json_atomic

        write_json_atomic(ident, path)


def _batch(model, st: GenerateSettings, sdir: Path, start: int, end: int, fast: FastPath, resume: bool,
           features_of: Callable[[Tensor], Tensor] | None) -> bool:
    """Samples [start, end) into their shard (and their features beside it); False when the shard was there."""
    name = _shard_name(start, end)
    img_path, feat_path = sdir / f"{name}.safetensors", sdir / f"{name}.features.safetensors"
    x8 = _read_tensor(img_path, "images") if resume and img_path.is_file() else None
    fresh = x8 is None or x8.shape[0] != end - start
    if fresh:
        gen = torch.Generator(device=model_device(model)).manual_seed(_batch_seed(st.seed, start))
        x8 = to_uint8(sample(model, end - start, settings=st.chain, generator=gen, fast=fast)).cpu()
        _write_tensor(img_path, "images", x8, {"format": "clel-samples", "start": str(start), "end": str(end)})
        feat_path.unlink(missing_ok=True)
    if features_of is not None and (not feat_path.is_file() or _read_tensor(feat_path, "features") is None):
        _write_tensor(feat_path, "features", features_of(x8))
    return fresh


def generate(model, n: int, out_dir: str | os.PathLike, settings: GenerateSettings | None = None,
             fast: FastPath | None = None, rank: int | None = None, world: int | None = None,
             resume: bool = True, with_features: bool = True, feature_batch: int = 100,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Draw ``n`` unconditional samples into ``out_dir/samples/`` as uint8 safetensors shards (one per batch).

    - Batch ``b`` covers samples ``[b·B, (b+1)·B)`` and is seeded from (seed, its start), so the samples are the
      same whatever the number of processes, and a longer run extends a shorter one.
    - Resumable: a batch whose shard exists (and reads back) is skipped; a killed run continues where it
      stopped. Shards from other settings or other weights are refused unless ``resume=False`` (then redrawn).
    - Shardable: rank ``r`` of ``w`` (default: the torchrun environment) does the batches with ``b % w == r``.
    - ``with_features``: each shard's Inception features are computed and cached next to it right away.

    Returns a summary (batches done / skipped, seconds, images per second) for this rank.
    """
    sdir = Path(out_dir) / "samples"
    sdir.mkdir(parents=True, exist_ok=True)
    st = settings or GenerateSettings.for_model(model)
    r0, w0, _ = dist_info()
    rank = r0 if rank is None else rank
    world = w0 if world is None else world
    dev = model_device(model)
    fast = fast or FastPath.best(dev)
    _claim(sdir, model, st, rank, resume)
    model.eval()
    prepare(model.f, fast)
    inception = []  # loaded at the first shard that needs features

    def features_of(x8: Tensor) -> Tensor:
        from .metrics import features, get_inception

        inception[:] = inception or [get_inception(str(dev))]
        return torch.from_numpy(features(x8, batch_size=feature_batch, model=inception[0]))

    done = skipped = 0
    t0 = time.perf_counter()
    mine = [r for i, r in enumerate(_batch_ranges(n, st.batch_size)) if i % world == rank]
    for start, end in mine:
        fresh = _batch(model, st, sdir, start, end, fast, resume, features_of if with_features else None)
        done, skipped = done + fresh, skipped + (not fresh)
        if log:
            log(f"[rank {rank}] samples {start}-{end}: {'generated' if fresh else 'cached'} "
                f"({done} new, {skipped} cached of {len(mine)} batches, {(time.perf_counter() - t0) / 60:.1f} min)")
    secs = time.perf_counter() - t0
    return {"rank": rank, "world": world, "batches": len(mine), "generated": done, "cached": skipped,
            "seconds": secs, "images_per_s": (done * st.batch_size) / secs if done and secs > 0 else None,
            "settings": st.key()}


def _shards(out_dir: str | os.PathLike, n: int, batch: int) -> list[tuple[int, int, Path]]:
    sdir = Path(out_dir) / "samples"
    return [(s, e, sdir / f"{_shard_name(s, e)}.safetensors") for s, e in _batch_ranges(n, batch)]


def wait_for_samples(out_dir: str | os.PathLike, n: int, batch: int, timeout_s: float = 6 * 3600,
                     poll_s: float = 5.0, features: bool = True) -> None:
    """Block until every shard (and its features) of ``n`` samples exists: rank 0 waits for the other ranks."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for _, _, p in _shards(out_dir, n, batch)
                   if not p.is_file() or (features and not p.with_name(p.stem + ".features.safetensors").is_file())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise EvaluationError(f"timed out waiting for {len(missing)} sample shards (first: {missing[0]})")
        time.sleep(poll_s)


def load_samples(out_dir: str | os.PathLike, n: int, batch: int) -> Tensor:
    """The first ``n`` generated samples, uint8 [n, 3, H, W] (any prefix of a run: shards are cut as needed)."""
    sdir = Path(out_dir) / "samples"
    parts, have = [], 0
    for start in range(0, n, batch):
        found = sorted(p for p in sdir.glob(f"b{start:07d}-*.safetensors")
                       if not p.name.endswith(".features.safetensors"))
        t = _read_tensor(found[-1], "images") if found else None
        if t is None:
            raise EvaluationError(f"{sdir}: the shard of samples {start}.. is missing or unreadable (run generation "
                                  f"again to fill it)")
        parts.append(t)
        have += len(t)
        if have >= n:
            break
    out = torch.cat(parts)
    if len(out) < n:
        raise EvaluationError(f"{sdir}: only {len(out)} of {n} samples were generated")
    return out[:n]


def sample_features(out_dir: str | os.PathLike, n: int, batch: int, device: str | torch.device = "cpu",
                    feature_batch: int = 100) -> np.ndarray:
    """Inception features [n, 2048] of the generated samples (computed once per shard and cached)."""
    from .metrics import features, get_inception

    out = []
    for s, e, p in _shards(out_dir, n, batch):
        fp = p.with_name(p.stem + ".features.safetensors")
        f = _read_tensor(fp, "features") if fp.is_file() else None
        if f is None or f.shape[0] != e - s:
            x8 = _read_tensor(p, "images") if p.is_file() else None
            if x8 is None:
                raise EvaluationError(f"{p}: missing or unreadable sample shard")
            f = torch.from_numpy(features(x8, batch_size=feature_batch, model=get_inception(str(device))))
            _write_tensor(fp, "features", f)
        out.append(f.numpy())
    return np.concatenate(out)


def train_images(data_root: str | os.PathLike, limit: int | None = None) -> Tensor:
    """The shared CIFAR-10 train images (uint8), or the seeded subset of ``limit`` of them that FID compares with."""
    from ..data import load_cifar10

    root = Path(data_root)
    root = root / "cifar10" if (root / "cifar10").is_dir() else root
    images = load_cifar10(root, "train").images
    if limit is not None and limit < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
        images = images[idx.sort().values]
    return images


def train_reference(data_root: str | os.PathLike, limit: int | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None, feature_batch: int = 100, progress: bool = False,
                    ) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """FID statistics and Inception features of the shared CIFAR-10 train set (all 50k, or a seeded subset).

    Features are cached as safetensors under ``<cache>/fid/`` (keyed by the data and the feature pipeline), so
    the 50k train images go through Inception once per machine. Returns (FIDStats, features, info).
    """
    from . import metrics
    from .metrics import default_cache_dir, features, fid_stats, get_inception

    images = train_images(data_root, limit)
    h = hashlib.sha256(f"{images.shape}".encode())
    h.update(images[:: max(1, len(images) // 512)].numpy().tobytes())
    tag = getattr(metrics, "_PIPELINE_TAG", "inception")  # part of the name: a changed pipeline never reuses it
    key = f"cifar10-train-{len(images)}-{h.hexdigest()[:12]}-{tag}"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "fid" / f"{key}.features.safetensors"
    feats = _read_tensor(path, "features") if path.is_file() else None
    if feats is None or feats.shape[0] != len(images):
        feats = torch.from_numpy(features(images, batch_size=feature_batch, model=get_inception(str(device)),
                                          progress=progress))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_tensor(path, "features", feats)
    f = feats.numpy()
    subset = "" if limit is None or limit >= 50000 else ", seeded subset"
    info = {"set": f"shared CIFAR-10 train set (JPEG copy){subset}",
            "n": int(len(images)), "cache": str(path)}
    return fid_stats(f), f, info


def fid_report(sample_feats: np.ndarray, ref_stats, ref_feats: np.ndarray | None,
               sizes: Sequence[int] = (1000, 10000, 50000), kid_subsets: int = 100,
               kid_subset_size: int = 1000, name: str = "fid", kid_name: str = "kid") -> dict[str, Any]:
    """FID of the first k samples for each k in ``sizes`` (null where fewer samples exist), and KID of all.

    ``name`` / ``kid_name``: the keys' stems (``fid_1k``, ``kid``); :func:`judge_report` passes its own.
    """
    from .metrics import fid_stats, frechet_distance, kid

    out: dict[str, Any] = {}
    n = sample_feats.shape[0]
    for k in sizes:
        label = f"{name}_{k // 1000}k" if k % 1000 == 0 else f"{name}_{k}"
        out[label] = frechet_distance(fid_stats(sample_feats[:k]), ref_stats) if n >= k else None
    if n not in sizes:
        out[f"{name}_{n}"] = frechet_distance(fid_stats(sample_feats), ref_stats)
    if ref_feats is not None:
        m, s = kid(sample_feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size)
        out[kid_name] = {"mean": m, "std": s, "subsets": kid_subsets,
                         "subset_size": int(min(kid_subset_size, n, ref_feats.shape[0]))}
    out["samples"] = int(n)
    return out


def judge_report(judge, samples: Tensor, reference: Tensor, sizes: Sequence[int] = (1000, 10000, 50000),
                 kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict[str, Any]:
    """The independent distances: :func:`fid_report` in the judge's pooled features (``fd_judge_1k``, …,
    ``kid_judge``), with the judge's file (``feature_judge``) and the reference's size (``judge_reference``).

    With the frozen encoder (``encoder="inception"``) the FID network's own features are part of training, so FID
    and KID can improve without better images; no model is trained with a judge's features.
    """
    from .metrics import fid_stats

    if min(len(samples), len(reference)) < 2:
        raise EvaluationError("the judge-feature distances need at least 2 samples and 2 reference images")
    sf, rf = judge.pooled_features(samples).double().numpy(), judge.pooled_features(reference).double().numpy()
    out = fid_report(sf, fid_stats(rf), rf, sizes, kid_subsets, kid_subset_size, name="fd_judge",
                     kid_name="kid_judge")
    out.pop("samples")
    return {**out, "feature_judge": judge.name, "judge_reference": int(len(reference))}


