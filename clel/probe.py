"""Quality probes while training: a cheap, fixed-seed measure of the model, appended to ``metrics.jsonl``.

A probe is what ``scripts/evaluate.py`` measures, made small enough to run every few thousand iterations on a
laptop: the FID of ``fid_samples`` reference-sampler samples against a fixed seeded subset of the training
images (``reference_images``), the judged accuracy of ``judged_samples`` class-conditional samples (CIFAR-10)
or the judged agreement with AND and with NOT Young / Female / Smiling (CelebA), and the fraction of sample pixels
clamped at 0 or 1 (saturated "rainbow" chains). Concept latents are computed from the same fixed subset, so a
probe needs no export. FID-500 against 2,000 images reads higher than FID-1k against 50,000: it is a trend
measure, comparable only with itself.

It also reports the Fréchet distance and KID of the same samples in the judge's pooled features (``fd_judge``,
``kid_judge``; the judge's file in ``feature_judge``): a space no model is trained with, where the frozen encoder
(``encoder="inception"``), which trains with the FID network's own features, cannot flatter the number.

Everything is seeded and runs on a copy of the model inside a forked RNG, so a probe neither changes the
training state nor depends on it: the same weights and seed give the same numbers.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .concepts import attribute_names, concept_latents, encode_images
from .data import ImageSet

PROBE_ATTRIBUTES = ("Young", "Female", "Smiling")


@dataclass
class ProbeSettings:
    """How many samples and images a probe takes, and how its chains differ from scripts/evaluate.py's: ``fid_chain``
    overrides the model's reference sampler (``ChainSettings.reference``: 10 augmented sweeps of the training chain),
    ``judged_chain`` the judged evaluations' measured plain chain (``ChainSettings.measured``)."""

    fid_samples: int = 500
    reference_images: int = 2000
    judged_samples: int = 100
    seed: int = 0
    batch_size: int = 100
    fid_chain: dict[str, Any] = field(default_factory=dict)
    judged_chain: dict[str, Any] = field(default_factory=dict)


def clamped_fraction(x: Tensor) -> float:
    """Fraction of pixel values sitting on the [0, 1] clamp: the symptom of a chain that turned adversarial."""
    return float(((x <= 0) | (x >= 1)).float().mean())


class Probe:
    """Probes one run's model: ``Probe(data, judges_dir)(model)`` returns a dict of numbers.

    The reference features, the Inception network and the judge load once, at the first call. ``features``: the
    frozen encoder's cached features of ``data`` (the trainer's), so its latents of the subset need no new pass.
    """

    def __init__(self, data: ImageSet, judges_dir: str | Path | None = None, settings: ProbeSettings | None = None,
                 device: str | torch.device = "cpu", inception: Any = None, judge: Any = None,
                 features: Tensor | None = None):
        self.st = settings or ProbeSettings()
        self.device = torch.device(device)
        n = min(self.st.reference_images, len(data))
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.st.seed))[:n].sort().values
        self.ref = data.subset(idx)
        self.ref_features = features[idx.to(features.device)] if features is not None else None
        self.judges_dir = Path(judges_dir) if judges_dir is not None else None
        self._inception, self._judge, self._ref_stats = inception, judge, None
        self._judge_ref: np.ndarray | None = None  # the judge's pooled features of the fixed subset
        self._standin = inception is not None

    # -- lazily loaded parts -------------------------------------------------------------------------------------

    def _net(self) -> Any:
        if self._inception is None:
            from .eval.metrics import get_inception

            self._inception = get_inception(str(self.device))
        return self._inception

    def _features(self, images: Tensor) -> np.ndarray:
        from .eval.metrics import features

        return features(images, batch_size=50, device=self.device, model=self._net())

    def _reference(self) -> Any:
        if self._ref_stats is None:
            from .eval.metrics import fid_stats, reference_stats

            if self._standin:  # a stand-in feature network (tests): nothing to cache
                self._ref_stats = fid_stats(self._features(self.ref.images))
            else:  # the Inception statistics of the fixed subset: computed once per machine (~/.cache/clel/fid)
                self._ref_stats = reference_stats("probe", self.ref.images, device=self.device)
        return self._ref_stats

    def _load_judge(self) -> Any:
        if self._judge is None:
            from .eval.judges import CIFAR10_JUDGE, JUDGE_DIR, celeba_judge_path, load_judge

            folder = self.judges_dir or JUDGE_DIR
            path = (folder / CIFAR10_JUDGE if self.ref.labels is not None
                    else celeba_judge_path(folder, self.ref.images.shape[-1]))  # the judge of the faces' own size
            self._judge = load_judge(path, self.device)
        return self._judge

    def _judge_distances(self, x: Tensor) -> dict[str, Any]:
        """FD and KID of the samples against the fixed subset in the judge's pooled features."""
        from .eval.metrics import fid_stats, frechet_distance, kid

        judge = self._load_judge()
        if self._judge_ref is None:
            self._judge_ref = judge.pooled_features(self.ref.images).double().numpy()
        feats = judge.pooled_features(x).double().numpy()
        return {"fd_judge": float(frechet_distance(fid_stats(feats), fid_stats(self._judge_ref))),
                "kid_judge": kid(feats, self._judge_ref)[0], "feature_judge": judge.name}

    # -- the probe -----------------------------------------------------------------------------------------------

    def __call__(self, model: Any) -> dict[str, Any]:
        from .eval.metrics import fid_stats, frechet_distance
        from .sampling import ChainSettings, draw

        t0 = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            m = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
            st = ChainSettings.reference(m, **self.st.fid_chain)
            xs = [draw(m, min(self.st.batch_size, self.st.fid_samples - s), None, st, seed=self.st.seed + s).x
                  for s in range(0, self.st.fid_samples, self.st.batch_size)]
            x = torch.cat(xs)
            out: dict[str, Any] = {
                "fid": float(frechet_distance(fid_stats(self._features(x)), self._reference())),
                "clamped_fraction": clamped_fraction(x),
                **self._judge_distances(x),
            }
            out.update(self._judged(m))
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.last_samples = x
        return out

    def _judged(self, m: Any) -> dict[str, Any]:
        from .eval.judged import class_conditional_eval, compositional_eval
        from .sampling import ChainSettings

        judge = self._load_judge()
        z = encode_images(m.h, self.ref.images, self.device, features=self.ref_features)
        extras, _ = concept_latents(z, self.ref)
        if self.ref.labels is not None:
            classes = list(self.ref.classes or map(str, range(int(self.ref.labels.max()) + 1)))
            per = max(1, self.st.judged_samples // len(classes))
            chain = ChainSettings.measured(m, "class", **{"direction": "mean", **self.st.judged_chain})  # prototypes
            res, _ = class_conditional_eval(m, extras["class_prototypes"], classes, judge, per, chain.guidance,
                                            chain, self.st.seed, self.st.batch_size)
            return {"judged_accuracy": res["accuracy"]}
        known = set(attribute_names(self.ref))
        extras["attributes"] = attribute_names(self.ref)
        names = [a for a in PROBE_ATTRIBUTES if a in known]
        per = max(1, self.st.judged_samples // len(names))
        chain = ChainSettings.measured(m, "attributes", **{"direction": "mean", **self.st.judged_chain})
        # AND rows first (judged_agreement, comparable with earlier probes), then NOT rows (judged_not_agreement).
        terms = [[(a, 1.0)] for a in names] + [[(a, -1.0)] for a in names]
        res, _ = compositional_eval(m, extras, judge, terms, per, chain.guidance, chain, self.st.seed,
                                    self.st.batch_size, include_unconditional=False, report_attributes=names,
                                    direction=chain.direction)
        out: dict[str, Any] = {}
        for row in res["rows"]:
            a, w = row["terms"][0]
            out[f"judged_{a}" if w > 0 else f"judged_not_{a}"] = row["accuracy"]
        out["judged_agreement"] = sum(out[f"judged_{a}"] for a in names) / len(names)
        out["judged_not_agreement"] = sum(out[f"judged_not_{a}"] for a in names) / len(names)
        return out

    def lookalikes(self, model: Any, data_root: str | Path, n: int = 50, per_upload: int = 4) -> dict[str, Any]:
        """Look-alikes of ``n`` held-out uploads at the demo's chain, judged (:func:`clel.eval.judged.lookalike_eval`):
        not in every probe, since it reads the held-out images from ``data_root``; recipe comparisons ask for it."""
        from .eval.judged import lookalike_eval, lookalike_uploads
        from .sampling import ChainSettings

        judge = self._load_judge()
        uploads, labels = lookalike_uploads(data_root, judge, n, self.st.seed)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            m = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
            res, _ = lookalike_eval(m, uploads, labels, judge, per_upload, ChainSettings.demo(m, "instance"),
                                    self.st.seed)
        return {f"lookalike_{k}": res[k] for k in ("agreement", "dist_own", "dist_other")}

    def settings(self) -> dict[str, Any]:
        return asdict(self.st)
