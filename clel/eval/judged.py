"""Judged conditional quality (Fig. 3c, Fig. 4b), judged look-alikes and the encoder's kNN accuracy."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from itertools import combinations
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import OPPOSITE_ATTRIBUTE, to_float
from ..concepts import encode_images
from ..fast import FastPath
from ..sampling import ChainSettings, Condition, draw, term_label
from . import EvaluationError
from .judges import diversity
from ..runtime import model_device
from .ood import has_encoder
from .fid import _batch_seed

def class_conditional_eval(model, prototypes: Tensor, classes: Sequence[str], judge, n_per_class: int,
                           guidance: float, settings: ChainSettings, seed: int = 0, batch_size: int = 250,
                           fast: FastPath | None = None, log: Callable[[str], None] | None = None,
                           ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Class-conditional samples from each prototype, judged: confusion matrix P(judge = j | conditioned on i).

    Returns (results, {class: samples}). The judge's labels are matched to ``classes`` by name.
    """
    for c in classes:
        if c not in judge.labels:
            raise EvaluationError(f"the judge does not know class {c!r} (it knows {', '.join(judge.labels)})")
    order = [judge.labels.index(c) for c in classes]
    counts = torch.zeros(len(classes), len(classes))
    samples: dict[str, Tensor] = {}
    t0 = time.perf_counter()
    for i, c in enumerate(classes):
        cond = Condition.concepts(prototypes[i:i + 1], mode="class")
        xs = []
        for b, start in enumerate(range(0, n_per_class, batch_size)):
            m = min(batch_size, n_per_class - start)
            xs.append(draw(model, m, cond, settings, seed=_batch_seed(seed + 7919 * (i + 1), start), guidance=guidance,
                           fast=fast).x)
        x = torch.cat(xs)
        samples[c] = x
        pred = judge.predict(x)[:, order].argmax(1)
        counts[i] += torch.bincount(pred, minlength=len(classes)).float()
        if log:
            log(f"class-conditional {c}: {n_per_class} samples, judged {float(counts[i, i]) / n_per_class:.2%} "
                f"as {c} ({time.perf_counter() - t0:.0f} s)")
    confusion = counts / counts.sum(1, keepdim=True)
    return {
        "classes": list(classes), "n_per_class": n_per_class, "guidance": guidance,
        "chain": asdict(settings), "confusion": confusion.tolist(),
        "accuracy": float(confusion.diagonal().mean()),
        "per_class_accuracy": {c: float(confusion[i, i]) for i, c in enumerate(classes)},
    }, samples


def default_compositions(attributes: Sequence[str] = ("Young", "Female", "Smiling")) -> list[list[tuple[str, float]]]:
    """Every non-empty subset of the paper's attributes, each asked for with AND (weight 1), as in Fig. 4, then each
    attribute alone with NOT (weight −1): whether guidance can also push an attribute away."""
    out = []
    for k in range(1, len(attributes) + 1):
        for combo in combinations(attributes, k):
            out.append([(a, 1.0) for a in combo])
    return out + [[(a, -1.0)] for a in attributes]


def _judge_attribute(probs: Tensor, judge, name: str) -> Tensor:
    """P(attribute) from the judge's probabilities; Female is 1 − P(Male)."""
    if name in judge.labels:
        return probs[:, judge.labels.index(name)]
    if OPPOSITE_ATTRIBUTE.get(name) in judge.labels:
        return 1 - probs[:, judge.labels.index(OPPOSITE_ATTRIBUTE[name])]
    raise EvaluationError(f"the judge cannot score {name!r} (it knows {', '.join(judge.labels)})")


def compositional_eval(model, extras: Mapping[str, Any], judge, compositions: Sequence[Sequence[tuple[str, float]]],
                       n: int, guidance: float, settings: ChainSettings, seed: int = 0, batch_size: int = 250,
                       fast: FastPath | None = None, report_attributes: Sequence[str] = ("Young", "Female", "Smiling"),
                       include_unconditional: bool = True, log: Callable[[str], None] | None = None,
                       direction: str = "mean") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Samples for each composition of attribute terms (AND > 0, NOT < 0), judged per attribute (Fig. 4b).

    For each composition: the judge's mean P(attribute) and the rate of predicted-present (p > 0.5) for every
    attribute in ``report_attributes``; ``accuracy`` is the fraction of the asked-for terms that the judge
    agrees with (present for AND, absent for NOT), averaged over samples; ``all_correct`` the fraction of samples
    where every term holds; ``diversity`` the mean pairwise distance of the judge's features (``diversity_ratio``:
    the conditioned rows' mean over the unconditional row's). The same seed is used for every composition, so rows
    differ only by the condition.
    """
    rows = []
    samples: dict[str, Tensor] = {}
    comps = ([[]] if include_unconditional else []) + [list(c) for c in compositions]
    for terms in comps:
        label = term_label(terms)
        cond = Condition.attributes(extras, terms, direction) if terms else Condition.unconditional()
        xs = [draw(model, min(batch_size, n - s), cond, settings, seed=_batch_seed(seed, s), guidance=guidance,
                   fast=fast).x
              for s in range(0, n, batch_size)]
        x = torch.cat(xs)
        samples[label] = x
        probs = judge.predict(x)
        row: dict[str, Any] = {"condition": label, "terms": [[a, w] for a, w in terms], "n": n,
                               "mean_prob": {}, "rate": {}, "diversity": diversity(judge.features(x))}
        for a in report_attributes:
            p = _judge_attribute(probs, judge, a)
            row["mean_prob"][a] = float(p.mean())
            row["rate"][a] = float((p > 0.5).float().mean())
        if terms:
            agree = torch.stack([(_judge_attribute(probs, judge, a) > 0.5) == (w > 0) for a, w in terms], 1).float()
            row["accuracy"] = float(agree.mean())
            row["all_correct"] = float(agree.min(1).values.mean())
            row["per_term_accuracy"] = {f"{'AND' if w > 0 else 'NOT'} {a}": float(agree[:, j].mean())
                                        for j, (a, w) in enumerate(terms)}
        rows.append(row)
        if log:
            log(f"compositional {label}: " + ", ".join(f"{a} {row['rate'][a]:.0%}" for a in report_attributes))
    scored = [r for r in rows if "accuracy" in r]

    def mean(kind: list[dict]) -> float | None:
        return float(np.mean([r["accuracy"] for r in kind])) if kind else None

    base = rows[0]["diversity"] if include_unconditional and rows and rows[0]["diversity"] > 0 else None
    return {"guidance": guidance, "direction": direction, "chain": asdict(settings), "n_per_condition": n,
            "rows": rows, "mean_accuracy": mean(scored),
            # guidance that collapses the samples onto one look is no success: conditioned diversity / unconditional
            "diversity_ratio": (float(np.mean([r["diversity"] for r in scored])) / base
                                if base is not None and scored else None),
            # AND-only rows (the paper's Fig. 4, comparable with evaluations before NOT rows) and rows with a NOT
            "mean_and_accuracy": mean([r for r in scored if all(w > 0 for _, w in r["terms"])]),
            "mean_not_accuracy": mean([r for r in scored if any(w < 0 for _, w in r["terms"])])}, samples


# ----------------------------------------------------------------------------------------------------------------
# Look-alikes: samples guided by an upload's latent
# ----------------------------------------------------------------------------------------------------------------

def same_judgement(judge, x: Tensor, label: Tensor) -> float:
    """How many of ``x`` the judge gives ``label``: the class (a class judge), or the share of attributes on which
    it agrees with the upload's own judged attributes (an attribute judge), summed over ``x``."""
    p = judge.predict(x)
    if judge.spec.task == "classes":
        return float((p.argmax(1) == label).sum())
    return float(((p > 0.5) == label).float().mean(1).sum())


def lookalike_uploads(data_root: str | os.PathLike, judge, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` seeded held-out images to use as uploads, and what their look-alikes should share with them: CIFAR-10
    test images and their labels (a class judge), or faces from the last 1,000 shared CelebA faces (held out by the
    judge and by scripts/distill_encoder.py) at the judge's size and their own judged attributes."""
    from ..data import load_celeba, load_cifar10

    root = Path(data_root)
    if judge.spec.task == "classes":
        test = load_cifar10(root / "cifar10" if (root / "cifar10").is_dir() else root, "test")
        images, labels = test.images, test.labels
    else:
        faces = root / "celeba" if (root / "celeba").is_dir() else root
        images, labels = load_celeba(faces, judge.spec.image_size).images[-1000:], None
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], (labels[idx] if labels is not None else judge.predict(images[idx]) > 0.5)


def lookalike_eval(model, uploads: Tensor, labels: Tensor, judge, per_upload: int, settings: ChainSettings,
                   seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Tensor]:
    """Look-alikes of each upload (``per_upload`` samples guided by its latent z, as the demo's Look-alikes tab
    draws them with ``settings``), judged: ``agreement``, how often the judge gives them the upload's class (or
    its judged attributes, :func:`same_judgement`); ``dist_own`` and ``dist_other``, their mean distance in the
    judge's features to their own upload and to the other uploads (own < other: they resemble their upload).

    ``uploads``: [N, 3, H, W], uint8 or float in [0, 1]. Returns (results, samples [N · per_upload, 3, H, W], upload by upload).
    """
    from ..probe import clamped_fraction

    if not has_encoder(model):
        raise EvaluationError("look-alikes need the encoder h for an upload's latent, which this export lacks")
    if len(uploads) < 2:
        raise EvaluationError("look-alikes need at least 2 uploads (own against other uploads)")
    t0 = time.perf_counter()
    # [0, 1], as the demo hands an upload to the model and as the judge sees the samples
    uploads = to_float(uploads) if uploads.dtype == torch.uint8 else uploads.float()
    feats_up = judge.features(uploads)
    hits, own, other, xs = 0.0, [], [], []
    for i in range(len(uploads)):
        cond = Condition.instance(uploads[i:i + 1])
        x = draw(model, per_upload, cond, settings, seed=seed + 7919 * i, guidance=settings.guidance).x
        xs.append(x)
        hits += same_judgement(judge, x, labels[i])
        d = torch.cdist(judge.features(x).double(), feats_up.double())  # [per_upload, N]
        own.append(float(d[:, i].mean()))
        other.append(float((d.sum(1) - d[:, i]).mean() / (len(uploads) - 1)))
        if log and (i + 1) % 10 == 0:
            log(f"look-alikes: {i + 1}/{len(uploads)} uploads, agreement {hits / ((i + 1) * per_upload):.2f} "
                f"({time.perf_counter() - t0:.0f} s)")
    x = torch.cat(xs)
    return {"uploads": len(uploads), "per_upload": per_upload, "guidance": settings.guidance,
            "chain": asdict(settings), "agreement": hits / (len(uploads) * per_upload),
            "dist_own": float(np.mean(own)), "dist_other": float(np.mean(other)), "clamped": clamped_fraction(x),
            "seconds": time.perf_counter() - t0}, x


# ----------------------------------------------------------------------------------------------------------------
# Encoder quality
# ----------------------------------------------------------------------------------------------------------------

def encoder_eval(model, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 200,
                 temperature: float = 0.1, prototypes: Tensor | None = None) -> dict[str, Any]:
    """Weighted cosine kNN accuracy of h's latents (train → test), and nearest-prototype accuracy on test."""
    from .metrics import knn_accuracy

    if not has_encoder(model):
        raise EvaluationError("the kNN accuracy of h needs the encoder, which this export does not include")
    dev, size = model_device(model), model.cfg.image_size
    ztr, zte = (encode_images(model.h, x, dev, size=size) for x in (train_x, test_x))
    out: dict[str, Any] = {
        "knn_accuracy": knn_accuracy(ztr, train_y, zte, test_y, k=k, temperature=temperature),
        "k": k, "temperature": temperature, "train": int(len(train_x)), "test": int(len(test_x)),
    }
    if prototypes is not None:
        pred = (zte @ F.normalize(prototypes.float().cpu(), dim=1).T).argmax(1)
        out["prototype_accuracy"] = float((pred == test_y.cpu()).float().mean())
    return out

