"""Reference OOD score distributions, shipped next to the weights as ``ood_reference.safetensors``.

The OOD page of the demo plots an upload's score s(x) (eq. 5, :func:`clel.energy.ood_score`) over the scores of
reference sets computed with the same weights: CIFAR-10 test (in-distribution) and the paper's OOD sets that
exist offline here (Textures/DTD top-left 32x32, CIFAR-10 interpolation, CelebA 32x32). It also draws the
threshold at 95% TPR of the in-distribution scores (:func:`clel.metrics.tpr_threshold`).

Make the file for an export folder (a few minutes per thousand images per set on a 2-core CPU for the Base
model; use ``--limit`` for a quicker, subsampled reference)::

    python -m clel.ood --weights weights/cifar10 --data ../shared/data --limit 2000

The file holds, per set, ``<key>.score`` (s(x)) and ``<key>.energy`` (the marginal ½‖f(x)‖²) as float32, and in
its metadata the β used, the labels, the image size and a fingerprint of the weights, so scores from other
weights are detected rather than silently compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .energy import ood_scores
from .metrics import auroc, tpr_threshold
from .weights import read_tagged_safetensors

__all__ = ["REFERENCE_NAME", "REFERENCE_LABELS", "OODReference", "compute_reference", "load_reference",
           "model_fingerprint", "reference_from_raw", "reference_sets", "save_reference", "score_images"]

REFERENCE_NAME = "ood_reference.safetensors"
FORMAT = "clel-ood-reference"
VERSION = 1
IN_DISTRIBUTION = "cifar10_test"
# Display names, in plotting order; the in-distribution set first.
REFERENCE_LABELS: dict[str, str] = {
    "cifar10_test": "CIFAR-10 test (in-distribution)",
    "dtd": "Textures (DTD)",
    "cifar10_interp": "CIFAR-10 interpolation",
    "celeba32": "CelebA 32x32",
}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's state (names, shapes and leading values of every tensor)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def score_images(model, images: Tensor, beta: float, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """s(x) and the marginal energy E(x) for images [N, 3, H, W] (uint8, or float in [0, 1]) at the model's size.

    Both come from :func:`clel.energy.ood_scores` (one pass of f) on the model in eval mode.
    """
    from .data import resize_images, to_float

    model.eval()
    size = model.cfg.image_size
    device = next(model.parameters()).device
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    scores, energies = [], []
    n = images.shape[0]
    for i in range(0, n, batch_size):
        xb = images[i:i + batch_size]
        if xb.dtype == torch.uint8:
            if tuple(xb.shape[-2:]) != (size, size):
                xb = resize_images(xb, size)
            xb = to_float(xb)
        elif tuple(xb.shape[-2:]) != (size, size):
            xb = torch.nn.functional.interpolate(xb.float(), size=(size, size), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp(0, 1)
        xb = xb.to(device)
        s, e = ood_scores(model, xb, beta)
        scores.append(s.float().cpu())
        energies.append(e.float().cpu())
        if progress is not None:
            progress(min(i + batch_size, n), n)
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(scores).numpy(), torch.cat(energies).numpy()


@dataclass
class OODReference:
    """Reference scores per set; ``in_distribution`` names the set the threshold is taken from."""

    scores: dict[str, np.ndarray]
    energies: dict[str, np.ndarray]
    beta: float
    labels: dict[str, str] = field(default_factory=lambda: dict(REFERENCE_LABELS))
    in_distribution: str = IN_DISTRIBUTION
    image_size: int = 32
    fingerprint: str = ""
    info: dict = field(default_factory=dict)

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    @property
    def ood_keys(self) -> list[str]:
        return [k for k in self.scores if k != self.in_distribution]

    def threshold(self, tpr: float = 0.95) -> float:
        """Flag s(x) above this as OOD: ``tpr`` of the in-distribution reference scores are at or below it."""
        if self.in_distribution not in self.scores:
            raise KeyError(f"no in-distribution scores ({self.in_distribution!r}) in this reference")
        return tpr_threshold(self.scores[self.in_distribution], tpr)

    def aurocs(self) -> dict[str, float]:
        """AUROC of each OOD reference set against the in-distribution set."""
        s_in = self.scores[self.in_distribution]
        return {k: auroc(s_in, self.scores[k]) for k in self.ood_keys}

    def percentile(self, score: float) -> float:
        """Share (in %) of in-distribution reference scores at or below ``score``."""
        s = self.scores[self.in_distribution]
        return float(100.0 * np.mean(s <= score))


def save_reference(ref: OODReference, path: str | Path) -> Path:
    """Write ``ref`` as safetensors (atomically); ``path`` may be the weights folder."""
    from .weights import write_safetensors_atomic

    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / REFERENCE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k in ref.scores:
        tensors[f"{k}.score"] = torch.from_numpy(np.asarray(ref.scores[k], dtype=np.float32))
        tensors[f"{k}.energy"] = torch.from_numpy(np.asarray(ref.energies[k], dtype=np.float32))
    meta = {"format": FORMAT, "version": str(VERSION), "beta": repr(float(ref.beta)),
            "in_distribution": ref.in_distribution, "labels": json.dumps(ref.labels),
            "image_size": str(ref.image_size), "fingerprint": ref.fingerprint, "info": json.dumps(ref.info)}
    write_safetensors_atomic(tensors, path, metadata=meta)
    return path


def load_reference(path: str | Path) -> OODReference | None:
    """Read a reference file (or ``<folder>/ood_reference.safetensors``); None when there is none.

    A file that exists but is not a readable reference raises ``ValueError`` naming it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REFERENCE_NAME
    if not path.is_file():
        return None
    tensors, meta = read_tagged_safetensors(path, FORMAT, "OOD reference", ValueError)
    keys = sorted({k.rsplit(".", 1)[0] for k in tensors})
    missing = [k for k in keys if f"{k}.score" not in tensors or f"{k}.energy" not in tensors]
    if missing:
        raise ValueError(f"{path}: sets {missing} lack a .score or .energy tensor")
    labels = json.loads(meta.get("labels", "{}"))
    order = [k for k in labels if k in keys] + [k for k in keys if k not in labels]
    return OODReference(
        scores={k: tensors[f"{k}.score"].numpy() for k in order},
        energies={k: tensors[f"{k}.energy"].numpy() for k in order},
        beta=float(meta.get("beta", "nan")), labels=labels,
        in_distribution=meta.get("in_distribution", IN_DISTRIBUTION),
        image_size=int(meta.get("image_size", "32")), fingerprint=meta.get("fingerprint", ""),
        info=json.loads(meta.get("info", "{}")),
    )


def reference_sets(data_root: str | Path, limit: int | None = None, seed: int = 0,
                   names: tuple[str, ...] = tuple(REFERENCE_LABELS)) -> dict[str, Tensor]:
    """uint8 images [N, 3, 32, 32] of each reference set, from the offline data root (``shared/data``).

    ``cifar10_interp`` is ``(x_i + x_{i+100}) / 2`` over the test set shuffled with ``seed`` (so pairs mix
    classes); ``limit`` takes a seeded random subset of each set.
    """
    from .data import cifar10_interpolation, load_dataset

    root = Path(data_root)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    test = None
    for key in names:
        if key in ("cifar10_test", "cifar10_interp"):
            if test is None:
                test = load_dataset("cifar10", root / "cifar10", split="test").images
            imgs = test if key == "cifar10_test" else cifar10_interpolation(test[torch.randperm(len(test),
                                                                                               generator=g)])
        elif key == "dtd":
            dtd_root = root / "dtd10" if (root / "dtd10").is_dir() else root / "dtd"
            imgs = load_dataset("dtd", dtd_root, image_size=32).images
        elif key == "celeba32":
            imgs = load_dataset("celeba", root / "celeba", image_size=32).images
        else:
            raise ValueError(f"unknown reference set {key!r}; known: {', '.join(REFERENCE_LABELS)}")
        if limit is not None and len(imgs) > limit:
            imgs = imgs[torch.randperm(len(imgs), generator=g)[:limit]]
        out[key] = imgs
    return out


def compute_reference(model, sets: Mapping[str, Tensor], beta: float | None = None, batch_size: int = 256,
                      log: Callable[[str], None] | None = None) -> OODReference:
    """Score every reference set with ``model`` (β defaults to ``cfg.ood_beta``)."""
    beta = float(model.cfg.ood_beta if beta is None else beta)
    scores, energies = {}, {}
    for key, imgs in sets.items():
        t0 = time.perf_counter()
        scores[key], energies[key] = score_images(model, imgs, beta, batch_size)
        if log:
            log(f"{key}: {len(imgs)} images in {time.perf_counter() - t0:.1f} s, mean s(x) {scores[key].mean():.4f}")
    return OODReference(scores=scores, energies=energies, beta=beta, image_size=model.cfg.image_size,
                        fingerprint=model_fingerprint(model),
                        info={"counts": {k: int(len(v)) for k, v in sets.items()}})


def reference_from_raw(model, raw: Mapping[str, Mapping[str, np.ndarray]], beta: float,
                       in_distribution: str = IN_DISTRIBUTION) -> OODReference:
    """An :class:`OODReference` from already computed scores ``{set: {"score": ..., "energy": ...}}`` (the raw
    output of ``clel.evaluation.ood_evaluate``), so an evaluation run can ship its scores with the weights."""
    labels = dict(REFERENCE_LABELS)
    try:
        from .evaluation import OOD_COLUMNS
        labels.update({k: v for k, v in OOD_COLUMNS.items() if k not in labels})
    except ImportError:
        pass
    return OODReference(scores={k: np.asarray(v["score"]) for k, v in raw.items()},
                        energies={k: np.asarray(v["energy"]) for k, v in raw.items()}, beta=float(beta),
                        labels=labels, in_distribution=in_distribution, image_size=model.cfg.image_size,
                        fingerprint=model_fingerprint(model), info={"counts": {k: int(len(v["score"]))
                                                                                for k, v in raw.items()}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clel.ood", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="export folder or Hugging Face repo id")
    p.add_argument("--data", required=True, help="offline data root holding cifar10/, dtd10/, celeba/")
    p.add_argument("--out", help=f"where to write (default: <weights folder>/{REFERENCE_NAME})")
    p.add_argument("--limit", type=int, help="seeded random subset of at most this many images per set")
    p.add_argument("--sets", default=",".join(REFERENCE_LABELS), help="comma-separated subset of the sets")
    p.add_argument("--beta", type=float, help="β of s(x) (default: the config's ood_beta, 0.1)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    from .weights import load_pretrained

    model, cfg, extras = load_pretrained(args.weights, device=args.device)
    if extras.get("source") == "hub" and not args.out:
        p.error("the weights came from the Hub cache; pass --out to say where to write the reference")
    out = Path(args.out) if args.out else Path(extras["path"]) / REFERENCE_NAME
    sets = reference_sets(args.data, args.limit, names=tuple(s.strip() for s in args.sets.split(",") if s.strip()))
    ref = compute_reference(model, sets, args.beta, args.batch_size, log=lambda m: print(m, file=sys.stderr))
    ref.info.update(weights=str(args.weights), limit=args.limit)
    path = save_reference(ref, out)
    print(json.dumps({"path": str(path), "threshold_tpr95": ref.threshold(0.95), "auroc": ref.aurocs()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
