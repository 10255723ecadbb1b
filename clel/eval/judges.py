"""Judge classifiers: the "external classifiers" that score conditional and compositional samples.

The paper checks conditional generation with an external CIFAR-10 classifier (confusion matrix of
class-conditional samples, Fig. 3c) and compositional generation with an external CelebA attribute
classifier (Fig. 4b). This project trains both itself, from the shared data, with a fast recipe:

- :class:`JudgeNet`: a small BatchNorm CNN in the style of the fast CIFAR-10 speed-run networks
  (conv stem, then blocks ``conv → max-pool → BN → GELU → conv → BN → GELU``, global max pool,
  linear head scaled down). Inputs are pixels in [0, 1]; normalisation is the first layer and inputs of
  another size are resized, so a judge can score samples of any resolution.
- :func:`fit`: SGD (Nesterov) with a one-cycle learning rate (linear warm-up, linear decay to 0), label
  smoothing (classes) or BCE (attributes), random translate (reflect padding) + horizontal-flip
  augmentation done on the device, channels_last, bf16 autocast where the device supports it, and
  flip test-time augmentation at evaluation.
- CIFAR-10 judge: 10 classes, trained on the shared train set, measured on the shared test set.
- CelebA judges: Young, Male and Smiling (multi-label) on the 10k shared faces, the last 1,000 held out; one
  at 64x64 and one at 32x32 (the 64 px judge reading upsampled 32 px faces loses 6.5 to 10.3 points
  per attribute, docs/evaluation.md, so a model is judged by the judge of its own size: :func:`celeba_judge_path`).
- Their pooled features (:meth:`Judge.pooled_features`) are also a feature space no CLEL model is trained with:
  the evaluation's and the probe's independent Fréchet distance and KID (``fd_judge``, ``kid_judge``).

Weights are safetensors (fp16 by default: the nets are small), with the architecture, label names,
accuracies and training recipe in the file's metadata; loading never unpickles anything. The files
live in ``weights/judges/``; ``scripts/train_judges.py`` writes them.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fast import native_bf16
from ..runtime import model_device
from ..weights import BUNDLED_WEIGHTS

__all__ = [
    "CELEBA_ATTRIBUTES", "CELEBA_JUDGE", "CELEBA_JUDGES", "CIFAR10_JUDGE", "JUDGE_DIR", "Judge", "JudgeError",
    "JudgeNet", "JudgeSpec", "TrainRecipe", "augment_batch", "celeba_judge_data", "celeba_judge_path",
    "celeba_recipe", "cifar10_judge_data", "evaluate_judge", "fit", "load_judge", "save_judge",
    "train_celeba_judge", "train_cifar10_judge",
]

JUDGE_DIR = BUNDLED_WEIGHTS / "judges"
CIFAR10_JUDGE = "cifar10_classifier.safetensors"
# the same judge fine-tuned on half-degraded batches (degrade_batch): trusted further on blurred samples
CIFAR10_ROBUST_JUDGE = "cifar10_classifier_robust.safetensors"
CELEBA_JUDGE = "celeba_attributes.safetensors"
# The attribute judges by the face size they were trained at (CELEBA_JUDGE: 64x64).
CELEBA_JUDGES = {64: CELEBA_JUDGE, 32: "celeba_attributes_32.safetensors"}
CELEBA_ATTRIBUTES = ("Young", "Male", "Smiling")
FORMAT = "clel-judge"
FORMAT_VERSION = 1


class JudgeError(ValueError):
    """A judge file is missing, unreadable or not a clel judge; the message names the file."""


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class JudgeSpec:
    """Everything needed to rebuild a judge: task, label names, input size, widths, normalisation."""

    task: str  # "classes" (softmax over labels) or "attributes" (one sigmoid per label)
    labels: list[str]
    image_size: int = 32
    widths: tuple[int, ...] = (64, 256, 256)
    stem: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if self.task not in ("classes", "attributes"):
            raise ValueError(f"task must be 'classes' or 'attributes', got {self.task!r}")
        self.labels = list(self.labels)
        self.widths = tuple(int(w) for w in self.widths)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if not self.labels:
            raise ValueError("a judge needs at least one label")


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class JudgeNet(nn.Module):
    """Small fast CNN: stem conv, one block per width (each halves the resolution), global max pool, linear."""

    def __init__(self, spec: JudgeSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = _conv_bn(3, spec.stem)
        cin = spec.stem
        for w in spec.widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(w), nn.GELU()]
            layers += _conv_bn(w, w)
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, len(spec.labels), bias=False)
        self.head_scale = 1 / 8  # small logits at init; the speed-run nets scale their head the same way

    def features(self, x: Tensor) -> Tensor:
        """The pooled features the head reads [N, C]: the judge's view of an image (diversity, independent FD)."""
        s = self.spec.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return self.body((x - self.mean) / self.std).amax(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)) * self.head_scale


# ----------------------------------------------------------------------------------------------------------------
# Using a trained judge
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Judge:
    """A trained judge ready to score images: ``probs = judge.predict(x)``."""

    net: JudgeNet
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def spec(self) -> JudgeSpec:
        return self.net.spec

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def name(self) -> str:
        """The judge's file name (what reports record), or "judge" for one that was never saved."""
        return Path(self.path).name if self.path else "judge"

    @torch.no_grad()
    def logits(self, x: Tensor, batch_size: int = 500, tta: bool = True) -> Tensor:
        """Logits [N, L] of images [N, 3, H, W] (float in [0, 1] or uint8), averaged with the flipped image."""
        self.net.eval()
        device = model_device(self.net)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device)
            xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()
            y = self.net(xb)
            if tta:
                y = 0.5 * (y + self.net(xb.flip(-1)))
            out.append(y.float().cpu())
        if not out:
            return torch.zeros(0, len(self.labels))
        return torch.cat(out)

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """L2-normalised judge features [N, C] on CPU (distances between them measure visible difference)."""
        return F.normalize(self.pooled_features(x, batch_size), dim=1)

    @torch.no_grad()
    def pooled_features(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """The pooled features as the head reads them [N, C], float32 on CPU, for a Fréchet distance or KID.

        Not normalised: a Fréchet distance compares the features' means and covariances, and normalising would
        discard their magnitude (how strongly the judge's detectors fire), much of what blur and noise change.
        """
        self.net.eval()
        device = model_device(self.net)
        out = [self.net.features(_pixels(x[i:i + batch_size].to(device))).float().cpu()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def predict(self, x: Tensor, batch_size: int = 500, tta: bool = True) -> Tensor:
        """Class probabilities (softmax) or attribute probabilities (independent sigmoids), [N, L] on CPU."""
        z = self.logits(x, batch_size, tta)
        return z.softmax(dim=1) if self.spec.task == "classes" else z.sigmoid()

    def label_index(self, name: str) -> int:
        if name not in self.labels:
            raise JudgeError(f"this judge has no label {name!r}; it knows {', '.join(self.labels)}")
        return self.labels.index(name)


def celeba_judge_path(judges_dir: str | os.PathLike, image_size: int) -> Path:
    """The attribute judge for faces of ``image_size`` in ``judges_dir``: the one trained at that size when the
    folder has it, else the 64 px judge (which resizes; reports record which judge scored)."""
    own = Path(judges_dir) / CELEBA_JUDGES.get(int(image_size), CELEBA_JUDGE)
    return own if own.is_file() else Path(judges_dir) / CELEBA_JUDGE


def _pixels(x: Tensor) -> Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def diversity(features: Tensor) -> float:
    """Mean pairwise Euclidean distance between feature rows [N, C] (0: all samples look the same to the judge)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (n * (n - 1)))


def save_judge(net: JudgeNet, path: str | os.PathLike, info: dict[str, Any] | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
    """Write a judge as one safetensors file: weights (``dtype``; integer buffers kept) + spec/info metadata."""
    from ..weights import write_safetensors_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "spec": json.dumps(asdict(net.spec)),
            "info": json.dumps(info or {}, sort_keys=True)}
    write_safetensors_atomic(state, path, metadata=meta)
    return path


def load_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """Rebuild a judge saved by :func:`save_judge` (float32, eval mode, on ``device``)."""
    from ..weights import read_tagged_safetensors

    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"{path}: judge weights not found; train them with `python scripts/train_judges.py` "
                         f"(see docs/evaluation.md)")
    state, meta = read_tagged_safetensors(path, FORMAT, "judge", JudgeError)
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise JudgeError(f"{path}: judge format_version {meta['format_version']} is newer than this clel supports")
    try:
        spec = JudgeSpec(**json.loads(meta["spec"]))
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise JudgeError(f"{path}: malformed judge metadata ({e})") from None
    net = JudgeNet(spec)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise JudgeError(f"{path}: weights do not match the judge architecture in its metadata ({e})") from None
    return Judge(net.to(device).eval(), info, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class TrainRecipe:
    """The judges' training recipe (defaults: the CIFAR-10 judge)."""

    epochs: float = 8.0
    batch_size: int = 256
    lr: float = 0.2  # peak SGD learning rate (per batch of 256; scaled linearly with the batch)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.2  # fraction of the steps spent warming up
    label_smoothing: float = 0.2
    translate: int = 2  # random translation in pixels (reflect padding)
    flip: bool = True
    bf16: bool | None = None  # None: on CUDA with bf16 support, and on CPUs with native bf16 (AVX512-BF16/AMX)
    channels_last: bool = True
    seed: int = 0
    degrade: float = 0.0  # share of each batch degraded like samples (degrade_batch); 0: photographs only


def augment_batch(x: Tensor, translate: int, flip: bool, generator: torch.Generator | None = None) -> Tensor:
    """Random translate (reflect-padded crop, one offset per image) and horizontal flip, batched on x's device."""
    n, _, h, w = x.shape
    if translate > 0:
        p = translate
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # [N, H]
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # [N, W]
        idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    return x.contiguous()


def _use_bf16(recipe: TrainRecipe, device: torch.device) -> bool:
    if recipe.bf16 is not None:
        return recipe.bf16
    return native_bf16(device)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _targets_loss(task: str, logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    if task == "classes":
        return F.cross_entropy(logits, y, label_smoothing=smoothing)
    target = y.float() * (1 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def evaluate_judge(judge: Judge, images: Tensor, targets: Tensor, batch_size: int = 500) -> dict[str, Any]:
    """Accuracy on a labelled set: overall (classes) or per attribute plus their mean (attributes)."""
    probs = judge.predict(images, batch_size)
    if judge.spec.task == "classes":
        acc = float((probs.argmax(1) == targets.cpu()).float().mean())
        return {"accuracy": acc, "n": int(len(targets))}
    correct = ((probs > 0.5) == targets.cpu().bool()).float().mean(0)
    per = {name: float(c) for name, c in zip(judge.labels, correct)}
    return {"accuracy": per, "mean_accuracy": float(correct.mean()), "n": int(len(targets))}


# How samples differ from photographs: blurred, noisy, low in detail, blocky. A judge is only trusted on samples if
# it still recognises real test images degraded this way (measure/judge_robustness.py, docs/evaluation.md).
DEGRADATIONS: tuple[str, ...] = ("none", "blur 1", "blur 2", "noise 0.05", "noise 0.1", "down-up 2", "down-up 4",
                                 "jpeg 30", "jpeg 10")


def degrade(images: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images [N, 3, H, W] degraded by ``kind`` (one of :data:`DEGRADATIONS`: Gaussian blur of σ pixels,
    Gaussian noise of σ in [0, 1] units, bilinear down- then up-sampling by a factor, JPEG at a quality)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; use one of {', '.join(DEGRADATIONS)}")
    if kind == "none":
        return images
    return (_degrade_float(images.float() / 255, kind, generator) * 255).round().to(torch.uint8)


def _degrade_float(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    import math

    name, _, amount = kind.partition(" ")
    v = float(amount)
    if name == "jpeg":
        from torchvision.io import decode_jpeg, encode_jpeg

        x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        return torch.stack([decode_jpeg(encode_jpeg(im, quality=int(v))) for im in x8]).to(x.device).float() / 255
    if name == "blur":
        from torchvision.transforms.functional import gaussian_blur

        x = gaussian_blur(x, [2 * math.ceil(3 * v) + 1] * 2, [v, v])
    elif name == "noise":
        x = x + v * torch.randn(x.shape, generator=generator).to(x.device)
    else:  # down-up
        small = F.interpolate(x, scale_factor=1 / v, mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def degrade_batch(x: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Training augmentation: a random ``prob`` share of the [0, 1] batch gets one degradation (drawn per batch
    from :data:`DEGRADATIONS`), so the judge learns to see through the look of samples."""
    mask = torch.rand(x.shape[0], generator=generator) < prob
    if not bool(mask.any()):
        return x
    kinds = DEGRADATIONS[1:]
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
    x = x.clone()
    idx = mask.nonzero().squeeze(1).to(x.device)
    x[idx] = _degrade_float(x[idx], kind, generator).to(x.dtype)
    return x


def robustness(judge: Judge, images: Tensor, targets: Tensor, kinds: Sequence[str] = DEGRADATIONS,
               seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_judge` on ``images`` under each degradation (seeded noise), keyed by degradation."""
    g = torch.Generator().manual_seed(seed)
    return {k: evaluate_judge(judge, degrade(images, k, g), targets) for k in kinds}


def _training_batch(x8: Tensor, recipe: "TrainRecipe", g: torch.Generator) -> Tensor:
    """uint8 images → the augmented (and, with ``recipe.degrade``, partly degraded) float batch a judge trains on."""
    xb = augment_batch(x8.float() / 255, recipe.translate, recipe.flip, g)
    if recipe.degrade > 0:
        xb = degrade_batch(xb, recipe.degrade, g)
    return xb.contiguous(memory_format=torch.channels_last) if recipe.channels_last else xb


def _sgd(net: nn.Module, recipe: "TrainRecipe", lr: float) -> torch.optim.Optimizer:
    """Nesterov SGD with weight decay on weights only (not on biases and norm scales)."""
    decay, no_decay = [], []
    for _, p in net.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=recipe.momentum,
                           nesterov=True)


@torch.no_grad()
def _round_weights(net: nn.Module, dtype: torch.dtype) -> None:
    """Round every float tensor to ``dtype`` and back, so a held-out test measures the weights as saved."""
    for t in net.state_dict().values():
        if t.is_floating_point():
            t.copy_(t.to(dtype).to(t.dtype))


def fit(spec: JudgeSpec, train_x: Tensor, train_y: Tensor, test_x: Tensor | None = None, test_y: Tensor | None = None,
        recipe: TrainRecipe | None = None, device: str | torch.device = "cpu",
        log: Callable[[str], None] | None = None, max_minutes: float | None = None,
        store_dtype: torch.dtype | None = torch.float16, init: Judge | None = None) -> tuple[Judge, dict[str, Any]]:
    """Train a judge from uint8 images [N, 3, H, W] and targets (class ids [N] or 0/1 attributes [N, L]).

    Returns the judge (eval mode) and a report: recipe, per-epoch loss, throughput, wall time and the
    held-out accuracy when a test set is given. ``max_minutes`` stops early (the LR schedule is not
    shortened, so an early stop under-trains: it exists to probe throughput). ``store_dtype``: the weights are
    rounded to this dtype before the held-out evaluation, so the reported accuracy is that of the saved file.
    ``init``: start from this judge's weights (fine-tuning, e.g. with ``recipe.degrade``); same spec.
    """
    recipe, device = recipe or TrainRecipe(), torch.device(device)
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    net = _new_net(spec, recipe, device, init)
    bf16 = _use_bf16(recipe, device)
    n = train_x.shape[0]
    bs, steps_per_epoch, total, lr = _schedule(recipe, n)
    lr_at = _one_cycle(lr, max(1, int(recipe.warmup * total)), total)
    opt = _sgd(net, recipe, lr)
    x_dev, y_dev = train_x.to(device), train_y.to(device)
    report: dict[str, Any] = {"recipe": asdict(recipe), "bf16": bf16, "device": str(device), "steps": total,
                              "train_images": int(n), "epoch_loss": []}
    t0 = time.perf_counter()
    step, stopped_early = 0, False
    net.train()
    while step < total and not stopped_early:
        perm = torch.randperm(n, generator=g).to(device)
        losses = []
        for b in range(min(steps_per_epoch, total - step)):
            idx = perm[b * bs:(b + 1) * bs]
            xb = _training_batch(x_dev[idx], recipe, g)
            losses.append(_train_step(net, opt, lr_at(step), xb, y_dev[idx], spec.task, recipe, bf16))
            step += 1
            stopped_early = max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes
            if stopped_early:
                break
        report["epoch_loss"].append(float(torch.stack(losses).mean()) if losses else float("nan"))
        elapsed = time.perf_counter() - t0
        if log:
            log(f"epoch {len(report['epoch_loss'])}: step {step}/{total}, loss {report['epoch_loss'][-1]:.4f}, "
                f"{step * bs / elapsed:.0f} img/s, {elapsed / 60:.1f} min")
    wall = time.perf_counter() - t0
    report.update(wall_s=wall, images_per_s=step * bs / max(wall, 1e-9), steps_done=step,
                  stopped_early=stopped_early)
    judge = Judge(_trained_net(net, recipe, store_dtype))
    if test_x is not None and test_y is not None:
        report["test"] = evaluate_judge(judge, test_x, test_y)
        if log:
            log(f"held-out: {report['test']}")
    return judge, report


def _new_net(spec: JudgeSpec, recipe: TrainRecipe, device: torch.device, init: Judge | None) -> JudgeNet:
    """A fresh judge network on ``device`` (or a copy of ``init``'s weights), laid out for training."""
    net = JudgeNet(spec).to(device)
    if init is not None:
        net.load_state_dict(init.net.state_dict())
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _schedule(recipe: TrainRecipe, n: int) -> tuple[int, int, int, float]:
    """Batch size, steps per epoch and in all, and the peak learning rate (scaled linearly with the batch)."""
    bs = min(recipe.batch_size, n)
    steps_per_epoch = n // bs
    return bs, steps_per_epoch, max(1, int(round(recipe.epochs * steps_per_epoch))), recipe.lr * bs / 256


def _one_cycle(lr: float, warm: int, total: int) -> Callable[[int], float]:
    """The learning rate at a step: linear warm-up to ``lr`` over ``warm`` steps, then linear decay to 0."""
    def lr_at(step: int) -> float:
        return lr * (step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))

    return lr_at


def _train_step(net: JudgeNet, opt: torch.optim.Optimizer, lr: float, xb: Tensor, yb: Tensor, task: str,
                recipe: TrainRecipe, bf16: bool) -> Tensor:
    """One SGD step on a batch; returns its loss (detached, on the device: no sync per step)."""
    for group in opt.param_groups:
        group["lr"] = lr
    with _autocast(xb.device, bf16):
        logits = net(xb)
    loss = _targets_loss(task, logits.float(), yb, recipe.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _trained_net(net: JudgeNet, recipe: TrainRecipe, store_dtype: torch.dtype | None) -> JudgeNet:
    """The trained network in eval mode and the usual memory layout, its weights rounded as they will be saved."""
    net.eval()
    if recipe.channels_last:
        net = net.to(memory_format=torch.contiguous_format)
    if store_dtype is not None:
        _round_weights(net, store_dtype)
    return net


# ----------------------------------------------------------------------------------------------------------------
# The two judges of the paper's evaluation
# ----------------------------------------------------------------------------------------------------------------

def cifar10_judge_data(data_root: str | os.PathLike) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Shared CIFAR-10 train and test sets: uint8 images and labels, and the class names."""
    from ..data import load_cifar10

    root = Path(data_root)
    root = root / "cifar10" if (root / "cifar10").is_dir() else root
    train, test = load_cifar10(root, "train"), load_cifar10(root, "test")
    return train.images, train.labels, test.images, test.labels, list(train.classes)


def celeba_judge_data(data_root: str | os.PathLike, attributes: Sequence[str] = CELEBA_ATTRIBUTES,
                      image_size: int = 64, holdout: int = 1000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CelebA faces at ``image_size`` and the 0/1 columns of ``attributes``; the last ``holdout`` faces held out."""
    from ..data import load_celeba

    root = Path(data_root)
    root = root / "celeba" if (root / "celeba").is_dir() else root
    data = load_celeba(root, image_size=image_size)
    y = torch.stack([data.attr(a) for a in attributes], dim=1).to(torch.uint8)
    if not 0 < holdout < len(data):
        raise ValueError(f"holdout must be between 1 and {len(data) - 1}, got {holdout}")
    return data.images[:-holdout], y[:-holdout], data.images[-holdout:], y[-holdout:]


CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CELEBA_MEAN_STD = ((0.5087, 0.4230, 0.3778), (0.3032, 0.2819, 0.2807))


def train_cifar10_judge(data_root: str | os.PathLike, out: str | os.PathLike | None = None,
                        recipe: TrainRecipe | None = None, widths: Sequence[int] = (64, 256, 256),
                        device: str | torch.device = "cpu", log: Callable[[str], None] | None = None,
                        max_minutes: float | None = None, train_limit: int | None = None,
                        test_limit: int | None = None, store_dtype: torch.dtype = torch.float16,
                        init: Judge | None = None) -> tuple[Judge, dict]:
    """Train the CIFAR-10 judge on the shared train set; accuracy on the shared test set. Saves to ``out``.

    ``train_limit`` / ``test_limit``: seeded subsets (smoke tests only; the reported accuracy is then not the
    judge's test accuracy on the whole set).
    """
    xtr, ytr, xte, yte, classes = cifar10_judge_data(data_root)
    g = torch.Generator().manual_seed(0)
    if train_limit is not None and train_limit < len(xtr):
        keep = torch.randperm(len(xtr), generator=g)[:train_limit]
        xtr, ytr = xtr[keep], ytr[keep]
    if test_limit is not None and test_limit < len(xte):
        keep = torch.randperm(len(xte), generator=g)[:test_limit]
        xte, yte = xte[keep], yte[keep]
    spec = init.spec if init is not None else JudgeSpec("classes", classes, 32, tuple(widths),
                                                        mean=CIFAR10_MEAN_STD[0], std=CIFAR10_MEAN_STD[1])
    judge, report = fit(spec, xtr, ytr, xte, yte, recipe or TrainRecipe(), device, log, max_minutes, store_dtype,
                        init)
    if init is not None:
        report["init"] = str(init.path)
    return _record(judge, report, {"train": f"shared cifar10/train (JPEG copy), {len(xtr)} images",
                                   "test": f"shared cifar10/test, {len(xte)} images"}, out, store_dtype)


def _record(judge: Judge, report: dict[str, Any], data: dict[str, str], out: str | os.PathLike | None,
            store_dtype: torch.dtype) -> tuple[Judge, dict]:
    """The report (with what the judge was trained and measured on) becomes the judge's info; saved to ``out``."""
    report["data"] = data
    judge.info = report
    if out is not None:
        judge.path = str(save_judge(judge.net, out, report, store_dtype))
    return judge, report


CELEBA_RECIPE = TrainRecipe(epochs=16, batch_size=128, lr=0.1, label_smoothing=0.0, translate=4)


def celeba_recipe(image_size: int = 64) -> TrainRecipe:
    """:data:`CELEBA_RECIPE` with the random translation scaled to the faces' size (4 px at 64, 2 px at 32)."""
    from dataclasses import replace

    return replace(CELEBA_RECIPE, translate=max(1, CELEBA_RECIPE.translate * image_size // 64))


def train_celeba_judge(data_root: str | os.PathLike, out: str | os.PathLike | None = None,
                       recipe: TrainRecipe | None = None, widths: Sequence[int] = (64, 128, 256, 256),
                       attributes: Sequence[str] = CELEBA_ATTRIBUTES, holdout: int = 1000, image_size: int = 64,
                       device: str | torch.device = "cpu", log: Callable[[str], None] | None = None,
                       max_minutes: float | None = None, store_dtype: torch.dtype = torch.float16,
                       ) -> tuple[Judge, dict]:
    """Train a CelebA attribute judge (Young, Male, Smiling at ``image_size``); the last ``holdout`` faces measure
    it."""
    xtr, ytr, xte, yte = celeba_judge_data(data_root, attributes, image_size, holdout)
    spec = JudgeSpec("attributes", list(attributes), image_size, tuple(widths), mean=CELEBA_MEAN_STD[0],
                     std=CELEBA_MEAN_STD[1])
    judge, report = fit(spec, xtr, ytr, xte, yte, recipe or celeba_recipe(image_size), device, log, max_minutes,
                        store_dtype)
    return _record(judge, report, {"train": f"shared CelebA faces 1..{len(xtr)} at {image_size}x{image_size}",
                                   "test": f"the last {holdout} shared CelebA faces"}, out, store_dtype)

