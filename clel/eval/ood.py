"""Reference OOD score distributions, shipped next to the weights as ``ood_reference.safetensors``.

The OOD page of the demo plots an upload's score s(x) (eq. 5, :func:`clel.energy.ood_score`) over the scores of
reference sets computed with the same weights: CIFAR-10 test (in-distribution) and the paper's OOD sets that
exist offline here (Textures/DTD top-left 32x32, CIFAR-10 interpolation, CelebA 32x32). It also draws the
threshold at 95% TPR of the in-distribution scores (:func:`clel.eval.metrics.tpr_threshold`).

Make the file for an export folder (a few minutes per thousand images per set on a 2-core CPU for the Base
model; use ``--limit`` for a quicker, subsampled reference)::

    python -m clel.eval.ood --weights weights/cifar10 --data ../shared/data --limit 2000

The file holds, per set, ``<key>.score`` (s(x)) and ``<key>.energy`` (the marginal ½‖f(x)‖²) as float32, and in
its metadata the β used, the labels, the image size and a fingerprint of the weights, so scores from other
weights are detected rather than silently compared.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..data import resize_images
from ..data.ood import IN_DISTRIBUTION, OOD_COLUMNS, REFERENCE_LABELS, reference_sets
from ..energy import energy, ood_scores
from ..runtime import add_run_options
from ..weights import model_fingerprint, read_tagged_safetensors
from . import EvaluationError
from ..runtime import model_device
from .metrics import auroc, fpr_at_tpr, tpr_threshold

__all__ = ["REFERENCE_NAME", "REFERENCE_LABELS", "OODReference", "compute_reference", "load_reference",
           "model_fingerprint", "reference_from_raw", "reference_sets", "save_reference", "score_images"]

REFERENCE_NAME = "ood_reference.safetensors"
FORMAT = "clel-ood-reference"
VERSION = 1


@torch.no_grad()
def score_images(model, images: Tensor, beta: float, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None, cached: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """s(x) and the marginal energy E(x) for images [N, 3, H, W] (uint8, or float in [0, 1]) at the model's size.

    Both come from :func:`clel.energy.ood_scores` (one pass of f) on the model in eval mode. ``cached``: the
    images are a stored data set, not uploads, so the frozen encoder takes their latents from its feature cache
    (one Inception pass per set, ever).
    """
    from ..concepts import encode_images
    from ..data import to_float
    from ..models import FrozenEncoder

    model.eval()
    size = model.cfg.image_size
    device = model_device(model)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    z = None
    if cached and isinstance(getattr(model, "h", None), FrozenEncoder) and images.dtype == torch.uint8:
        z = encode_images(model.h, images, device, size=size)
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
        s, e = ood_scores(model, xb, beta, None if z is None else z[i:i + batch_size])
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
    from ..weights import write_safetensors_atomic

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


def compute_reference(model, sets: Mapping[str, Tensor], beta: float | None = None, batch_size: int = 256,
                      log: Callable[[str], None] | None = None) -> OODReference:
    """Score every reference set with ``model`` (β defaults to ``cfg.ood_beta``)."""
    beta = float(model.cfg.ood_beta if beta is None else beta)
    scores, energies = {}, {}
    for key, imgs in sets.items():
        t0 = time.perf_counter()
        scores[key], energies[key] = score_images(model, imgs, beta, batch_size, cached=True)
        if log:
            log(f"{key}: {len(imgs)} images in {time.perf_counter() - t0:.1f} s, mean s(x) {scores[key].mean():.4f}")
    return OODReference(scores=scores, energies=energies, beta=beta, image_size=model.cfg.image_size,
                        fingerprint=model_fingerprint(model),
                        info={"counts": {k: int(len(v)) for k, v in sets.items()}})


def reference_from_raw(model, raw: Mapping[str, Mapping[str, np.ndarray]], beta: float,
                       in_distribution: str = IN_DISTRIBUTION) -> OODReference:
    """An :class:`OODReference` from already computed scores ``{set: {"score": ..., "energy": ...}}`` (the raw
    output of :func:`ood_evaluate`), so an evaluation run can ship its scores with the weights."""
    labels = {**REFERENCE_LABELS, **{k: v for k, v in OOD_COLUMNS.items() if k not in REFERENCE_LABELS}}
    return OODReference(scores={k: np.asarray(v["score"]) for k, v in raw.items()},
                        energies={k: np.asarray(v["energy"]) for k, v in raw.items()}, beta=float(beta),
                        labels=labels, in_distribution=in_distribution, image_size=model.cfg.image_size,
                        fingerprint=model_fingerprint(model), info={"counts": {k: int(len(v["score"]))
                                                                                for k, v in raw.items()}})


def has_encoder(model) -> bool:
    """False for an export saved without its encoder h (``clel.weights.MissingEncoder`` stands in for it)."""
    return type(getattr(model, "h", None)).__name__ not in ("MissingEncoder", "NoneType")


@torch.no_grad()
def _energies(model, images: Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    dev, s = model_device(model), model.cfg.image_size
    out = []
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size]
        if xb.dtype == torch.uint8:
            xb = (resize_images(xb, s) if xb.shape[-1] != s else xb).float() / 255
        out.append(energy(model, xb.to(dev)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def ood_evaluate(model, sets: Mapping[str, Tensor], missing: Mapping[str, str] | None = None,
                 beta: float | None = None, batch_size: int = 256, in_key: str = "cifar10_test",
                 log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """AUROC of s(x) (eq. 5) and of the marginal ½‖f(x)‖² alone, in-distribution ``in_key`` vs every other set.

    Returns (results for eval.json, raw scores {set: {"score": ..., "energy": ...}} for histograms).
    """
    beta = float(model.cfg.ood_beta if beta is None else beta)
    with_h = has_encoder(model)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for key, imgs in sets.items():
        t0 = time.perf_counter()
        if with_h:
            s, e = score_images(model, imgs, beta, batch_size, cached=True)
            raw[key] = {"score": s, "energy": e}
        else:  # an export without h: the marginal energy alone is still a score
            raw[key] = {"energy": _energies(model, imgs, batch_size)}
        if log:
            log(f"OOD {key}: {len(imgs)} images scored in {time.perf_counter() - t0:.1f} s")
    if in_key not in raw:
        raise EvaluationError(f"the in-distribution set {in_key!r} is missing")
    s_in, e_in = raw[in_key].get("score"), raw[in_key]["energy"]
    results: dict[str, Any] = {"beta": beta, "in_distribution": {"name": "CIFAR-10 test", "n": int(len(e_in))},
                               "sets": {}}
    if not with_h:
        results["score_status"] = "s(x) needs the encoder h, which this export does not include"
    for key, label in OOD_COLUMNS.items():
        if key in raw:
            r = raw[key]
            results["sets"][key] = {
                "label": label, "n": int(len(r["energy"])), "status": "ok",
                "auroc_score": auroc(s_in, r["score"]) if with_h else None,
                "auroc_energy": auroc(e_in, r["energy"]),
                "fpr95_score": fpr_at_tpr(s_in, r["score"], 0.95) if with_h else None,
            }
        else:
            reason = (missing or {}).get(key, "not available")
            results["sets"][key] = {"label": label, "status": reason}
    return results, raw



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clel.eval.ood", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="export folder or Hugging Face repo id")
    p.add_argument("--data", required=True, help="offline data root holding cifar10/, dtd10/, celeba/")
    p.add_argument("--out", help=f"where to write (default: <weights folder>/{REFERENCE_NAME})")
    p.add_argument("--limit", type=int, help="seeded random subset of at most this many images per set")
    p.add_argument("--sets", default=",".join(REFERENCE_LABELS), help="comma-separated subset of the sets")
    p.add_argument("--beta", type=float, help="β of s(x) (default: the config's ood_beta, 0.1)")
    p.add_argument("--batch-size", type=int, default=256)
    add_run_options(p, device=True)
    args = p.parse_args(argv)

    from ..weights import load_pretrained

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
