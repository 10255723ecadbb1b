"""Helpers shared by the demo apps (``app/gradio_app.py``, ``app/ood_page.py``), importable as ``clel_app.demo``.

The apps stay thin: everything here is plain Python and tested without a web server.

- **Uploads**: :func:`decode_image` turns untrusted bytes into an RGB image or raises :class:`ImageError` with a
  message meant for the person who uploaded the file (empty, not an image, truncated, too many pixels, ...).
  RGBA, palette, grayscale, 16-bit and CMYK images are converted to 8-bit RGB, and the conversion is reported.
- **Server-side caps**: :class:`Limits` and :func:`clamp_request` bound what a request may cost, whatever the UI
  sliders allow (a client can call the API directly).
- **Display**: :func:`make_grid` (full-resolution uint8 grid), :func:`upscale` (nearest-neighbour, so 32x32
  pixels stay crisp), :func:`energy_figure` (plotly energy-versus-step curve).
- **Weights**: :class:`ModelStore` loads each demo model once through :func:`clel.weights.load_pretrained`
  (local folder, Hugging Face Hub repo id, or the bundled ``weights/<name>``) and says which one was used.
- **Live chains**: :func:`stream_frames` runs a chain from :mod:`clel.sampling` and yields a :class:`Frame`
  (the starting noise at once, then every few steps). Sampling and energies come from :mod:`clel.sampling`
  and :mod:`clel.energy`; nothing here re-implements them. ``CLEL_DEMO_FAIL_AT_STEP=N`` (or
  :data:`FAIL_AT_STEP`) makes step N of every chain raise, so tests can check what a user sees when one fails.
- **What visitors may see**: :func:`shown_path` and :func:`redact_paths` keep the server's absolute paths out of
  the pages (the server log keeps them).
- **OOD page**: :func:`ood_histogram` (uploads over the reference scores of :mod:`clel.eval.ood`, with the threshold)
  and :func:`scores_csv`.
- **Trying things out**: :func:`make_demo_exports` writes tiny random exports shaped like the real ones.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from clel.config import CLELConfig
from clel.data import to_uint8 as _to_uint8
from clel.images import grid_array
from clel.sampling import DEFAULTS, ChainSettings, Condition, SamplingError, run_chain, uniform_noise
from clel.sgld import EnergyFn, SGLDStep
from clel.weights import BUNDLED_WEIGHTS, REPO_ROOT

__all__ = [
    "ATTRIBUTE_CHOICES", "ChainPlan", "ChainRequest", "DecodedImage", "DemoError", "EnergyHistory", "FAIL_AT_STEP",
    "FAIL_AT_STEP_ENV", "Frame", "ImageError", "InjectedFailure", "Limits", "LoadedModel", "MODEL_LABELS",
    "MODEL_SPECS", "ModelStore", "attribute_choices", "attribute_condition", "attribute_plan", "clamp_request",
    "class_plan", "decode_image",
    "default_weights", "energy_figure", "fit_square", "frame_every", "images_to_tensor", "interpolation_plan",
    "lookalike_plan", "make_demo_exports", "make_grid", "ood_histogram", "png_bytes", "redact_paths", "round_sig",
    "hwc_uint8", "plan_chain", "save_png", "scores_csv", "shown_path", "stream_frames", "unconditional_plan", "upscale",
]

log = logging.getLogger("clel_app.demo")
ATTRIBUTE_CHOICES = ("off", "AND", "NOT")


class DemoError(ValueError):
    """A request the demo cannot serve; the message is shown to the user as it is."""


class ImageError(DemoError):
    """An uploaded file cannot be used as an image; the message names the file and says why."""


# ----------------------------------------------------------------------------------------------------------------
# Paths in what visitors see
# ----------------------------------------------------------------------------------------------------------------

def shown_path(path: str | os.PathLike) -> str:
    """A path as a visitor may see it: relative to the repository when inside it, else only its last part.

    The server's layout (home folder, temporary folders, mount points) is nobody else's business.
    """
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return p.name or str(p)


# An absolute path's folders: "/" not preceded by a word character, ":" or "/" (so URLs and relative paths stay).
_ABS_DIRS = re.compile(r"(?<![\w.:/~-])/(?:[^\s/:'\"()<>,;|]+/)+")


def redact_paths(text: str) -> str:
    """``text`` with absolute paths shortened as :func:`shown_path` does (for messages shown on the pages)."""
    text = text.replace(str(REPO_ROOT) + os.sep, "")
    return _ABS_DIRS.sub("", text)


# ----------------------------------------------------------------------------------------------------------------
# Server-side limits
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What one request may cost, enforced on the server whatever the client sends."""

    max_samples: int = 64
    max_steps: int = 1000  # SGLD steps per request, all sweeps together
    max_sweeps: int = 20
    max_upload_bytes: int = 25 * 2**20
    max_pixels: int = 25_000_000  # 25 megapixels; PIL's own bomb check starts at ~89 MP
    max_reference_images: int = 32  # look-alikes: reference images per request
    max_ood_files: int = 200  # OOD page: files scored per run
    step_size: tuple[float, float] = (0.0, 1000.0)
    noise: tuple[float, float] = (0.0, 1.0)
    guidance: tuple[float, float] = (-100.0, 100.0)

    @classmethod
    def from_env(cls) -> "Limits":
        """Defaults, overridable with ``CLEL_DEMO_MAX_SAMPLES`` / ``CLEL_DEMO_MAX_STEPS`` (e.g. on a GPU host)."""
        kw = {}
        for key, env in (("max_samples", "CLEL_DEMO_MAX_SAMPLES"), ("max_steps", "CLEL_DEMO_MAX_STEPS")):
            if os.environ.get(env, "").strip():
                try:
                    kw[key] = max(1, int(os.environ[env]))
                except ValueError:
                    raise DemoError(f"{env}={os.environ[env]!r} is not an integer") from None
        return cls(**kw)


@dataclass
class ChainRequest:
    """One sampling request after clamping: what the chain will actually run."""

    n: int = 16
    steps: int = 60  # per sweep
    step_size: float = CLELConfig.sgld_step_size
    noise: float = CLELConfig.sgld_noise
    guidance: float = DEFAULTS.guidance("class")
    seed: int = 0
    sweeps: int = 1  # > 1: the reference sampler's augmented sweeps (no reset: a fresh-noise tile would puzzle)
    notes: list[str] = field(default_factory=list)  # what was changed, for the status line

    @property
    def total_steps(self) -> int:
        return self.sweeps * self.steps

    @property
    def settings(self) -> ChainSettings:
        return ChainSettings(steps=self.steps, step_size=self.step_size, noise=self.noise, sweeps=self.sweeps,
                             augment=self.sweeps > 1,
                             **DEFAULTS.controls("reference" if self.sweeps > 1 else "plain"))

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def _number(value: Any, name: str, kind: type = float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise DemoError(f"{name} must be finite, got {value!r}")
    return int(round(v)) if kind is int else v


def clamp_request(n: Any, steps: Any, step_size: Any = CLELConfig.sgld_step_size, noise: Any = CLELConfig.sgld_noise,
                  guidance: Any = DEFAULTS.guidance("class"),
                  seed: Any = 0, limits: Limits | None = None, sweeps: Any = 1) -> ChainRequest:
    """Validate and bound a request; out-of-range values are clamped and the clamping is noted.

    ``steps`` is per sweep; sweeps × steps may not exceed ``limits.max_steps`` (the steps per sweep give way).
    """
    lim = limits or Limits()
    req = ChainRequest()
    notes: list[str] = []

    def bound(name: str, v: float, lo: float, hi: float, label: str) -> float:
        if v < lo or v > hi:
            c = min(max(v, lo), hi)
            notes.append(f"{label} {v:g} is outside [{lo:g}, {hi:g}] (server limit); using {c:g}")
            return c
        return v

    req.n = int(bound("n", _number(n, "number of samples", int), 1, lim.max_samples, "number of samples"))
    req.steps = int(bound("steps", _number(steps, "steps", int), 1, lim.max_steps, "steps"))
    req.sweeps = int(bound("sweeps", _number(sweeps, "sweeps", int), 1, lim.max_sweeps, "sweeps"))
    if req.total_steps > lim.max_steps:
        per = max(1, lim.max_steps // req.sweeps)
        notes.append(f"{req.sweeps} sweeps x {req.steps} steps exceed {lim.max_steps} steps (server limit); "
                     f"using {per} steps per sweep")
        req.steps = per
    req.step_size = bound("step_size", _number(step_size, "step size"), *lim.step_size, "step size")
    req.noise = bound("noise", _number(noise, "noise"), *lim.noise, "noise")
    req.guidance = bound("guidance", _number(guidance, "guidance"), *lim.guidance, "guidance")
    req.seed = int(_number(seed, "seed", int)) % 2**63
    req.notes = notes
    return req


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") % 1_000_000_000


# ----------------------------------------------------------------------------------------------------------------
# Decoding untrusted images
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class DecodedImage:
    """An upload decoded to 8-bit RGB (at most ``max_side`` pixels on its longer side) and what was done to it."""

    name: str
    image: Image.Image  # mode RGB
    original_size: tuple[int, int]
    original_mode: str
    format: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


_FORMATS_HINT = "PNG, JPEG, WebP, GIF, BMP or TIFF"


def _read_bytes(source: bytes | str | os.PathLike, name: str, limits: Limits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageError(f"{name}: cannot read the file ({e.strerror or e})") from None
        if size > limits.max_upload_bytes:
            raise ImageError(f"{name}: the file is {size / 2**20:.1f} MiB; the limit is "
                             f"{limits.max_upload_bytes / 2**20:.0f} MiB")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{name}: cannot read the file ({e.strerror or e})") from None
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    if len(data) > limits.max_upload_bytes:
        raise ImageError(f"{name}: the file is {len(data) / 2**20:.1f} MiB; the limit is "
                         f"{limits.max_upload_bytes / 2**20:.0f} MiB")
    return data


def _too_many_pixels(name: str, w: int, h: int, limits: Limits) -> ImageError:
    return ImageError(f"{name}: the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                      f"{limits.max_pixels / 1e6:g} megapixels (a guard against decompression bombs). "
                      f"Downscale it and upload it again.")


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit RGB from any PIL mode: alpha over white, 16-bit and float scaled (not clipped), palette expanded."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16"):
            scale, what = 65535.0, "16-bit grayscale"
        elif mode == "F":
            scale, what = (1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0), "floating-point grayscale"
        else:  # 32-bit integers: PNG 16-bit images in older Pillow, TIFF; 8-bit content if it fits
            top = float(a.max()) if a.size else 0.0
            scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
            what = f"{'16-bit' if scale > 255 else '8-bit'} integer grayscale"
        a = np.nan_to_num(a, nan=0.0)
        g = np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"{what} converted to 8-bit RGB")
        return Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent pixels composited over white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append(f"{mode} converted to RGB")
        return out
    if mode in ("1", "L"):
        notes.append("grayscale converted to RGB")
    elif mode == "P":
        notes.append("palette image converted to RGB")
    else:
        notes.append(f"{mode} converted to RGB")
    return im.convert("RGB")


def decode_image(source: bytes | str | os.PathLike, name: str | None = None, limits: Limits | None = None,
                 max_side: int = 512) -> DecodedImage:
    """Decode an untrusted upload to RGB, or raise :class:`ImageError` with a message for the user.

    Refused: empty files, files over ``limits.max_upload_bytes``, anything PIL cannot identify, truncated or
    corrupt data, and images over ``limits.max_pixels`` (checked from the header, before decoding the pixels,
    so a decompression bomb costs nothing). Accepted images are EXIF-rotated, converted to 8-bit RGB and shrunk
    to at most ``max_side`` pixels on the longer side (enough for 32-64 pixel models and thumbnails).
    """
    lim = limits or Limits()
    name = name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "upload")
    data = _read_bytes(source, name, lim)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own, lower limit
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{name}: the image has no pixels ({w}x{h})")
            if w * h > lim.max_pixels:
                raise _too_many_pixels(name, w, h, lim)
            fmt, mode = im.format, im.mode
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"first of {im.n_frames} frames used")
            if fmt == "JPEG" and max(w, h) > 2 * max_side:
                im.draft("RGB", (max_side, max_side))  # decode JPEGs at a reduced scale: fast and small
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a malformed EXIF block is no reason to refuse the pixels
                pass
            rgb = _to_rgb(im, notes)
            if max(rgb.size) > max_side:
                rgb = rgb.copy()
                rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: the image has too many pixels ({e}); the limit is {lim.max_pixels / 1e6:g} "
                         f"megapixels (a guard against decompression bombs)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file that can be read (expected {_FORMATS_HINT})") from None
    except MemoryError:
        raise ImageError(f"{name}: the image is too large to decode") from None
    except Exception as e:  # OSError "image file is truncated", SyntaxError, zlib/struct errors, ...
        detail = str(e).strip() or type(e).__name__
        if "truncated" in detail.lower():
            raise ImageError(f"{name}: the image data is truncated (the file is incomplete or damaged)") from None
        raise ImageError(f"{name}: the image is corrupt or damaged and cannot be decoded ({detail})") from None
    return DecodedImage(name=name, image=rgb, original_size=(w, h), original_mode=mode, format=fmt, notes=notes)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` x ``size`` with antialiasing: uint8 [size, size, 3]."""
    return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def images_to_tensor(images: Sequence[DecodedImage | Image.Image], size: int) -> Tensor:
    """Decoded uploads as the model sees them: float [N, 3, size, size] in [0, 1]."""
    if not images:
        raise DemoError("no images given")
    arrs = [fit_square(im.image if isinstance(im, DecodedImage) else im, size) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)


# ----------------------------------------------------------------------------------------------------------------
# Grids, upscaling, PNG files
# ----------------------------------------------------------------------------------------------------------------

def hwc_uint8(x: Tensor) -> np.ndarray:
    """[N, 3, H, W] or [3, H, W] floats in [0, 1] → uint8 [..., H, W, 3] (what PIL and the browser show)."""
    x = _to_uint8(x).cpu()
    return (x.permute(0, 2, 3, 1) if x.ndim == 4 else x.permute(1, 2, 0)).numpy()


def make_grid(x: Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Full-resolution image grid, uint8 [H, W, 3] with white padding; ``nrow`` images per row (default: about
    square)."""
    if x.ndim != 4 or x.shape[0] == 0:
        raise DemoError(f"expected a batch of images [N, 3, H, W], got {tuple(x.shape)}")
    return grid_array(x, nrow, padding)


def upscale(image: np.ndarray, factor: int | None = None, target: int = 560, max_factor: int = 8) -> np.ndarray:
    """Nearest-neighbour enlargement for display (pixels stay square and sharp).

    With no ``factor``, the largest integer factor that keeps the longer side at most ``target`` pixels
    (at least 1, at most ``max_factor``).
    """
    if factor is None:
        factor = max(1, min(max_factor, target // max(image.shape[:2])))
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Energy curve
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class EnergyHistory:
    """Energy of the batch at each step of a chain: mean, min and max over the samples."""

    steps: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)

    def add(self, step: int, energies: Tensor) -> None:
        e = energies.detach().float().cpu()
        self.steps.append(int(step))
        self.mean.append(float(e.mean()))
        self.low.append(float(e.min()))
        self.high.append(float(e.max()))

    def __len__(self) -> int:
        return len(self.steps)


def energy_figure(history: EnergyHistory, total_steps: int | None = None, title: str = "Energy during SGLD",
                  ylabel: str = "E(x)"):
    """Plotly figure of the batch's energy versus step: the mean and a min-max band.

    ``ylabel`` (e.g. ``E(x, AND Young AND Smiling)``) goes into the title; the y axis is only "energy", so a long
    label cannot run up the axis into the title. The title sits in the top margin, above the plot area.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    if len(history):  # copies: the chain keeps appending to the history while the figure is being sent
        steps, mean, low, high = list(history.steps), list(history.mean), list(history.low), list(history.high)
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=high + low[::-1],
                                 fill="toself", fillcolor="rgba(99, 110, 250, 0.2)", line={"width": 0},
                                 hoverinfo="skip", name="min–max over samples"))
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines+markers" if len(steps) < 30
                                 else "lines", line={"color": "rgb(99, 110, 250)", "width": 2},
                                 name="mean energy"))
    text = f"{title}: {ylabel}" if ylabel else title
    fig.update_layout(title={"text": text, "x": 0.01, "xanchor": "left", "xref": "container",
                             "y": 0.98, "yanchor": "top", "yref": "container", "font": {"size": 14}},
                      xaxis_title="SGLD step", yaxis_title="energy",
                      margin={"l": 60, "r": 10, "t": 56, "b": 40}, height=320, template="plotly_white",
                      legend={"orientation": "h", "y": -0.25}, uirevision="energy")
    if total_steps:
        fig.update_xaxes(range=[-0.5, total_steps + 0.5])
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

# Each demo model: (environment variable naming a folder or Hub repo id, bundled default folder name).
MODEL_SPECS: dict[str, tuple[str, str]] = {
    "cifar10": ("CLEL_WEIGHTS_CIFAR10", "cifar10"),
    "celeba": ("CLEL_WEIGHTS_CELEBA", "celeba64"),
}
MODEL_LABELS: dict[str, str] = {"cifar10": "CIFAR-10", "celeba": "CelebA 64"}
MODEL_CARD = "README.md"


def default_weights(kind: str) -> str:
    """Where the demo loads ``kind`` ("cifar10" or "celeba") from: the env variable, else the bundled folder."""
    if kind not in MODEL_SPECS:
        raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_SPECS)}")
    env, bundled = MODEL_SPECS[kind]
    return os.environ.get(env, "").strip() or str(BUNDLED_WEIGHTS / bundled)


def human_count(n: int) -> str:
    """12,345,678 -> "12.3 M", 45,600 -> "45.6 k", 512 -> "512"."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)
_IMAGE_LINE = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+)\)\s*$", re.M)


@dataclass
class LoadedModel:
    kind: str
    model: Any  # clel.models.CLEL, in eval mode
    cfg: Any  # clel.config.CLELConfig
    extras: dict[str, Any]
    spec: str  # what was asked for (folder or repo id)

    @property
    def path(self) -> Path:
        return Path(self.extras.get("path", self.spec))

    @property
    def source(self) -> str:
        return str(self.extras.get("source", "local"))

    @property
    def label(self) -> str:
        return MODEL_LABELS.get(self.kind, self.kind)

    @property
    def has_encoder(self) -> bool:
        """Whether the export includes the encoder h (needed to encode photos: look-alikes, interpolation, s(x))."""
        from clel.weights import MissingEncoder

        return "h" in self.extras.get("parts", ["f", "g", "h"]) and not isinstance(self.model.h, MissingEncoder)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def iteration(self) -> int | None:
        it = self.extras.get("iteration")
        return int(it) if isinstance(it, (int, float)) else None

    @property
    def hub_url(self) -> str | None:
        """The model's Hugging Face page when it was loaded from the Hub."""
        return f"https://huggingface.co/{self.spec}" if self.source == "hub" else None

    def where(self) -> str:
        """Where the weights came from, without the server's absolute paths."""
        if self.source == "hub":
            return f"Hugging Face Hub {self.spec}"
        if self.source == "bundled":
            return (f"bundled copy (the Hub was unavailable or the repo is missing) {shown_path(self.path)}, "
                    f"not {self.spec}")
        return f"local folder {shown_path(self.path)}"

    def size(self) -> str:
        """Architecture, resolution and parameter count, e.g. "Small, 32 px, 14.2 M parameters"."""
        return (f"{str(self.cfg.arch).capitalize()}, {self.cfg.image_size} px, {human_count(self.parameters)} "
                f"parameters")

    def describe(self) -> str:
        """One line for the UI: which model, how big, how trained, from where (no absolute paths)."""
        it = self.iteration
        return (f"{self.cfg.dataset} ({self.size()}{'' if self.has_encoder else ', no encoder h'}), "
                + (f"{it:,} training iterations, " if it is not None else "") + f"from {self.where()}")

    def encoder_or_error(self, what: str) -> None:
        """Raise a :class:`DemoError` saying why ``what`` cannot run when the export has no encoder h."""
        if not self.has_encoder:
            raise DemoError(f"{what} needs the encoder h to read the photos, and the {self.label} weights were "
                            f"exported without it (their config.json lists only the networks "
                            f"{', '.join(self.extras.get('parts', ['f', 'g']))}). Choose weights that include h.")

    # the model card (README.md in the export folder) -------------------------------------------------------
    def card_path(self) -> Path | None:
        p = self.path / MODEL_CARD
        return p if p.is_file() else None

    def card(self) -> tuple[str, str, list[tuple[Path, str]]]:
        """(title, markdown without front matter or image lines, [(image path, caption)]) of the model card.

        Images are returned apart so the app can serve them as image components (the markdown's relative
        links would point nowhere on the app's pages); images missing from the folder are left out.
        """
        p = self.card_path()
        if p is None:
            return self.label, "", []
        text = _FRONT_MATTER.sub("", p.read_text(encoding="utf-8", errors="replace"), count=1)
        images = [(self.path / src, alt or src) for alt, src in _IMAGE_LINE.findall(text)
                  if "://" not in src and (self.path / src).is_file()]
        body = _IMAGE_LINE.sub("", text)
        title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), self.label)
        return title, re.sub(r"\n{3,}", "\n\n", body).strip(), images

    # concepts stored with the weights ---------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return list(self.extras.get("classes") or [])

    def class_latent(self, name: str, direction: str | None = None) -> Tensor:
        """The class's concept latent (``direction``: mean or contrast, default ``DEFAULTS.direction('class')``)."""
        from clel.sampling import class_latents, default_direction

        if self.extras.get("class_prototypes") is None or not self.class_names():
            raise DemoError(f"the {self.label} weights have no class prototypes; export them with "
                            f"extras={{'class_prototypes': ...}}")
        if name not in self.class_names():
            raise DemoError(f"unknown class {name!r}; choose one of {', '.join(self.class_names())}")
        try:
            return class_latents(self.extras, [name], direction or default_direction(self.extras, "class"))[0]
        except SamplingError as e:
            raise DemoError(str(e)) from None

    def attribute_names(self) -> list[str]:
        return list(self.extras.get("attributes") or [])


class ModelStore:
    """Loads each demo model once (thread-safe) and remembers failures so every request explains them."""

    def __init__(self, specs: Mapping[str, str] | None = None, device: str = "cpu"):
        self.specs = {k: (specs or {}).get(k) or default_weights(k) for k in MODEL_SPECS}
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> LoadedModel:
        if kind not in self.specs:
            raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(self.specs)}")
        with self._lock:
            if kind in self._models:
                return self._models[kind]
            if kind in self._errors:
                raise DemoError(self._errors[kind])
            from clel.weights import load_pretrained  # lazy: keeps `import clel_app.demo` light

            spec = self.specs[kind]
            try:
                model, cfg, extras = load_pretrained(spec, device=self.device)
            except Exception as e:  # WeightsError and anything a broken export raises: report, don't crash
                env = MODEL_SPECS[kind][0]
                msg = (f"cannot load the {kind} weights from {spec}: {e}. Train and export them into this folder, "
                       f"or point {env} at an export folder or a Hugging Face repo id.")
                log.warning(msg)  # the full message, paths included, for the server's log
                self._errors[kind] = redact_paths(msg)  # what visitors see
                raise DemoError(self._errors[kind]) from None
            model.eval().requires_grad_(False)
            lm = LoadedModel(kind, model, cfg, extras, spec)
            self._models[kind] = lm
            return lm

    def status(self, kind: str) -> str:
        """"loaded: ..." or the error, without raising (for page headers)."""
        try:
            return self.get(kind).describe()
        except DemoError as e:
            return f"not available: {e}"


# ----------------------------------------------------------------------------------------------------------------
# Chains for each demo mode (all built from clel.sampling)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class ChainPlan:
    """Everything a live chain needs: the start, the steps, and the energy they descend."""

    x0: Tensor
    chain: Iterator[SGLDStep]
    energy: EnergyFn
    nrow: int | None = None
    label: str = "E(x)"
    notes: list[str] = field(default_factory=list)


def plan_chain(lm: LoadedModel, condition: Condition, req: ChainRequest, nrow: int | None = None,
               notes: list[str] | None = None) -> ChainPlan:
    """The live chain of ``condition`` (clel.sampling's), with the starting noise drawn here so the first frame
    can show it."""
    g = req.generator()
    x0 = uniform_noise(lm.model, req.n, g)
    chain = run_chain(lm.model, req.n, condition, settings=req.settings, guidance=req.guidance, generator=g, x0=x0)
    return ChainPlan(x0, chain, condition.energy(lm.model, req.n, req.guidance), nrow, condition.label,
                     list(notes or []))


def unconditional_plan(lm: LoadedModel, req: ChainRequest) -> ChainPlan:
    """SGLD on the marginal energy E(x) = ½‖f(x)‖²."""
    return plan_chain(lm, Condition.unconditional(), req)


def lookalike_plan(lm: LoadedModel, images: Tensor, req: ChainRequest) -> ChainPlan:
    """Instance-conditional samples: SGLD on E(x, z̄) with z̄ the mean latent of the reference images."""
    lm.encoder_or_error("Look-alikes")
    return plan_chain(lm, Condition.instance(images), req)


def class_plan(lm: LoadedModel, class_name: str, req: ChainRequest) -> ChainPlan:
    """Class-conditional samples: SGLD on E(x, z̄_class) with the class's concept latent shipped with the weights."""
    lm.class_latent(class_name)  # a clear DemoError for an unknown class or weights without prototypes
    return plan_chain(lm, Condition.classes(lm.extras, [class_name]), req)


def attribute_choices(choices: Mapping[str, str]) -> list[tuple[str, float]]:
    """Terms (+1 AND, −1 NOT) of the Faces tab's choices like ``{"Female": "AND", "Young": "off"}``."""
    terms = []
    for attr, choice in choices.items():
        choice = (choice or "off").strip()
        if choice not in ATTRIBUTE_CHOICES:
            raise DemoError(f"{attr}: choose one of {', '.join(ATTRIBUTE_CHOICES)}, got {choice!r}")
        if choice != "off":
            terms.append((attr, 1.0 if choice == "AND" else -1.0))
    return terms


def attribute_condition(lm: LoadedModel, choices: Mapping[str, str]) -> Condition:
    """The Faces tab's condition (clel.sampling's lookup, with its Female = not Male rule); none ticked: E(x)."""
    terms = attribute_choices(choices)
    if not terms:
        return Condition.unconditional()
    try:
        return Condition.attributes(lm.extras, terms)
    except SamplingError as e:
        raise DemoError(f"the {lm.label} weights: {e}") from None


def attribute_plan(lm: LoadedModel, choices: Mapping[str, str], req: ChainRequest) -> ChainPlan:
    """Compositional samples: ½‖f‖² − guidance Σ wₐ cos(g(f(x)), z̄ₐ), AND = +1, NOT = −1 (no attribute: E(x))."""
    cond = attribute_condition(lm, choices)
    notes = ["no attribute selected: unconditional faces"] if cond.mode == "unconditional" else None
    return plan_chain(lm, cond, req, notes=notes)


def interpolation_plan(lm: LoadedModel, image_a: Tensor, image_b: Tensor, req: ChainRequest) -> ChainPlan:
    """Samples whose latents walk the sphere from image A's to image B's (slerp), one latent per sample."""
    lm.encoder_or_error("Interpolation")
    return plan_chain(lm, Condition.interpolate(image_a, image_b), req, nrow=min(req.n, 8))


# ----------------------------------------------------------------------------------------------------------------
# Live frames
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Frame:
    """What the live view shows after ``step`` of ``total`` steps."""

    step: int
    total: int
    x: Tensor  # [N, 3, H, W] in [0, 1]
    history: EnergyHistory
    elapsed: float
    final: bool = False
    stopped: bool = False  # final because the user asked the chain to stop early

    def grid(self, nrow: int | None = None) -> np.ndarray:
        return make_grid(self.x, nrow)


def frame_every(steps: int, target_frames: int = 20) -> int:
    """Steps between frames so that a chain streams about ``target_frames`` frames (at least 1 step)."""
    return max(1, steps // max(1, target_frames))


# Test hook: step N (1-based) of every chain raises InjectedFailure. Tests set the module variable, or the
# environment variable for a server started in a subprocess; both are unset in normal use.
FAIL_AT_STEP_ENV = "CLEL_DEMO_FAIL_AT_STEP"
FAIL_AT_STEP: int | None = None


class InjectedFailure(RuntimeError):
    """Raised by the test hook: stands for any unexpected error inside a chain."""


def _fail_at_step() -> int | None:
    if FAIL_AT_STEP is not None:
        return FAIL_AT_STEP
    raw = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    try:
        return int(raw) if raw else None
    except ValueError:
        raise DemoError(f"{FAIL_AT_STEP_ENV}={raw!r} is not an integer") from None


def _failing(chain: Iterator[SGLDStep], at: int) -> Iterator[SGLDStep]:
    for s in chain:
        if s.step + 1 >= at:
            raise InjectedFailure(f"injected failure at SGLD step {s.step + 1} ({FAIL_AT_STEP_ENV}={at}, a test hook)")
        yield s


# Live chains being iterated right now (for tests and the status line): id -> last step done.
ACTIVE_CHAINS: dict[int, int] = {}
_active_lock = threading.Lock()


def stream_frames(plan: ChainPlan, total: int, every: int | None = None, min_interval: float = 1.0,
                  on_step: Callable[[int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[Frame]:
    """Run ``plan.chain`` and yield frames: the starting noise at once, then every ``every`` steps.

    A frame is also yielded when ``min_interval`` seconds passed since the previous one (slow CPUs), and always
    after the last step, with the energy of the final samples added to the curve. ``should_stop`` is asked
    after every step: when it says yes the chain ends there with a final frame marked ``stopped`` (the Stop
    button). Closing the generator (a cancelled request) also stops the chain after the step in progress.
    An error inside the chain propagates to the caller after the frames already yielded.
    """
    every = every or frame_every(total)
    fail_at = _fail_at_step()
    chain = plan.chain if fail_at is None else _failing(plan.chain, fail_at)
    history = EnergyHistory()
    t0 = last = time.perf_counter()
    key = id(plan)
    with _active_lock:
        ACTIVE_CHAINS[key] = 0
    try:
        yield Frame(0, total, plan.x0, history, 0.0)
        x = plan.x0
        done = 0
        stopped = should_stop is not None and should_stop()  # stopped while it waited in the queue
        for s in () if stopped else chain:
            done = s.step + 1
            x = s.x
            history.add(s.step, s.energy)
            with _active_lock:
                ACTIVE_CHAINS[key] = done
            if on_step is not None:
                on_step(done)
            if should_stop is not None and should_stop():
                stopped = done < total
                break
            now = time.perf_counter()
            if done < total and (done % every == 0 or now - last >= min_interval):
                last = now
                yield Frame(done, total, x, history, now - t0)
        with torch.no_grad():
            history.add(done, plan.energy(x))
        yield Frame(done, total, x, history, time.perf_counter() - t0, final=True, stopped=stopped)
    finally:
        with _active_lock:
            ACTIVE_CHAINS.pop(key, None)


# ----------------------------------------------------------------------------------------------------------------
# Tiny random exports (tests, benchmarks, trying the apps before training)
# ----------------------------------------------------------------------------------------------------------------

FACE_ATTRIBUTES = ("Young", "Female", "Smiling")


def make_demo_exports(root: str | os.PathLike, preset: str = "tiny", seed: int = 0, celeba_size: int = 32,
                      reference_images: Mapping[str, Tensor] | None = None,
                      celeba_encoder: bool = True) -> dict[str, Path]:
    """Randomly initialised exports shaped like the real demo weights, under ``root/cifar10`` and ``root/celeba64``.

    The CIFAR-10 export carries 10 class prototypes, the CelebA one Young/Female/Smiling attribute latents (random
    unit vectors: the networks are untrained, so samples are noise; the apps' behaviour is what is exercised).
    With ``reference_images`` (uint8 sets as from :func:`clel.data.ood.reference_sets`) an ``ood_reference.safetensors``
    is written next to the CIFAR-10 weights. ``celeba_encoder=False`` leaves h out of the CelebA export, as in
    the bundled ``weights/celeba64``. Each folder gets a short model card (README.md).
    Returns ``{"cifar10": path, "celeba": path}``.
    """
    import torch.nn.functional as F

    from clel.config import CELEBA_MEAN, CELEBA_STD, get_preset
    from clel.data import CIFAR10_CLASSES
    from clel.models import CLEL
    from clel.weights import export_pretrained

    root = Path(root)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = get_preset(preset)
    cifar = CLEL(cfg).eval()
    protos = F.normalize(torch.randn(len(CIFAR10_CLASSES), cfg.feature_dim, generator=g), dim=1)
    cifar_dir = export_pretrained(cifar, root / "cifar10", extras={"class_prototypes": protos},
                                  extra_names={"class_prototypes": list(CIFAR10_CLASSES)},
                                  info={"weights": f"random init ({preset} preset, seed {seed})"})
    ccfg = cfg.replace(dataset="celeba", image_size=celeba_size, mean=CELEBA_MEAN, std=CELEBA_STD, num_classes=0)
    celeba = CLEL(ccfg).eval()
    attrs = F.normalize(torch.randn(len(FACE_ATTRIBUTES), cfg.feature_dim, generator=g), dim=1)
    celeba_dir = export_pretrained(celeba, root / "celeba64", extras={"attribute_latents": attrs},
                                   extra_names={"attribute_latents": list(FACE_ATTRIBUTES)},
                                   info={"weights": f"random init ({preset} preset, seed {seed})"},
                                   encoder=celeba_encoder)
    for folder, what in ((cifar_dir, "CIFAR-10"), (celeba_dir, f"CelebA {celeba_size}x{celeba_size}")):
        (folder / MODEL_CARD).write_text(
            f"# Random CLEL ({preset} preset) shaped like the {what} demo weights\n\n"
            f"Untrained (seed {seed}): samples are noise. Made by `clel_app.demo.make_demo_exports` to try the apps "
            f"and run their tests without trained weights.\n")
    if reference_images:
        from clel.eval.ood import compute_reference, save_reference

        ref = compute_reference(cifar, reference_images)
        save_reference(ref, cifar_dir)
    return {"cifar10": cifar_dir, "celeba": celeba_dir}


# ----------------------------------------------------------------------------------------------------------------
# OOD page: histogram of uploaded scores over the reference scores
# ----------------------------------------------------------------------------------------------------------------

UPLOADED_TRACE = "uploaded images"
_REFERENCE_COLORS = ["rgb(255, 127, 14)", "rgb(148, 103, 189)", "rgb(31, 119, 180)", "rgb(140, 86, 75)",
                     "rgb(227, 119, 194)"]


def ood_histogram(reference: Any | None, uploaded: Mapping[str, float], tpr: float = 0.95, nbins: int = 60):
    """Plotly histogram: each reference set's s(x) as a density (left axis), the uploads as counts (right axis),
    and the threshold at ``tpr`` of the in-distribution scores as a vertical line (its own legend entry).

    ``reference`` is a :class:`clel.eval.ood.OODReference` or None (then only the uploads are drawn).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    values = list(uploaded.values())
    lo_hi: list[float] = list(values)
    if reference is not None:
        for key, s in reference.scores.items():
            lo_hi += [float(np.min(s)), float(np.max(s))]
    if lo_hi:
        lo, hi = min(lo_hi), max(lo_hi)
        pad = (hi - lo) * 0.02 or abs(lo) * 0.05 or 1e-3
        bins = {"start": lo - pad, "end": hi + pad, "size": (hi - lo + 2 * pad) / nbins}
    else:
        bins = None
    if reference is not None:
        for i, (key, s) in enumerate(reference.scores.items()):
            ind = key == reference.in_distribution
            color = "rgb(44, 160, 44)" if ind else _REFERENCE_COLORS[i % len(_REFERENCE_COLORS)]
            fig.add_trace(go.Histogram(x=np.asarray(s, dtype=float), name=f"{reference.label(key)} (n={len(s)})",
                                       histnorm="probability density", opacity=0.7 if ind else 0.45,
                                       xbins=bins, marker={"color": color}))
    top = 1
    if values:
        if bins is not None:
            edges = np.arange(bins["start"], bins["end"] + bins["size"], bins["size"])
            top = max(1, int(np.histogram(values, bins=edges)[0].max()))
        fig.add_trace(go.Histogram(x=values, name=f"{UPLOADED_TRACE} (n={len(values)})", yaxis="y2", xbins=bins,
                                   marker={"color": "rgb(214, 39, 40)", "line": {"color": "black", "width": 1}},
                                   hovertext=list(uploaded), opacity=0.9))
        if bins is not None:
            for a in upload_labels(uploaded, edges):
                fig.add_annotation(a)
    if reference is not None and reference.in_distribution in reference.scores:
        t = reference.threshold(tpr)
        fig.add_trace(go.Scatter(x=[t, t], y=[0, 1], yaxis="y3", mode="lines", line={"color": "black", "dash": "dash"},
                                 name=f"threshold at {tpr:.0%} TPR ({t:.4g})", hoverinfo="name"))
    fig.update_layout(
        barmode="overlay", template="plotly_white", height=420, margin={"l": 50, "r": 50, "t": 40, "b": 40},
        title={"text": "OOD score s(x): uploads over the reference sets (higher = more out-of-distribution)",
               "x": 0.01},
        xaxis={"title": "s(x) = ½‖f(x)‖² − β cos(g(f(x)), h(x)/‖h(x)‖)"},
        yaxis={"title": "reference density"},
        # uploads on their own count axis, scaled so their tallest bar reaches a third of the height
        yaxis2={"title": "uploaded images (count)", "overlaying": "y", "side": "right", "range": [0, 3 * top],
                "tickformat": "d", "dtick": max(1, math.ceil(top / 2)), "showgrid": False},
        yaxis3={"overlaying": "y", "range": [0, 1], "visible": False},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def upload_labels(uploaded: Mapping[str, float], edges: np.ndarray, per_bin: int = 3,
                  max_chars: int = 26) -> list[dict[str, Any]]:
    """Plotly annotations naming the files in each bar of the uploads' histogram (on its count axis ``y2``).

    Written upright above the bar so neighbouring bars' labels do not run into each other; a bar with more than
    ``per_bin`` files names the first ones and counts the rest, and a label is cut at ``max_chars`` so it fits
    above the tallest bar (a third of the height) without reaching the title; hovering lists every file.
    """
    names = list(uploaded)
    idx = np.clip(np.searchsorted(edges, list(uploaded.values()), side="right") - 1, 0, len(edges) - 2)
    labels = []
    for b in sorted(set(idx.tolist())):
        files = [names[i] for i in np.flatnonzero(idx == b)]
        text = ", ".join(files[:per_bin]) + (f" +{len(files) - per_bin} more" if len(files) > per_bin else "")
        if len(text) > max_chars:
            text = text[:max_chars - 1] + "…"
        labels.append({"x": float((edges[b] + edges[b + 1]) / 2), "y": len(files), "xref": "x", "yref": "y2",
                       "text": text, "showarrow": False, "textangle": -90, "yanchor": "bottom", "yshift": 4,
                       "font": {"size": 11, "color": "rgb(150, 20, 20)"}, "bgcolor": "rgba(255, 255, 255, 0.7)",
                       "hovertext": "<br>".join(files),
                       "name": "upload label"})
    return labels


def round_sig(value: Any, digits: int = 7) -> Any:
    """Floats to ``digits`` significant digits (float32 scores carry about 7); anything else unchanged."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value != 0:
        return float(f"{float(value):.{digits}g}")
    return value


def scores_csv(rows: Sequence[Mapping[str, Any]], digits: int = 7) -> bytes:
    """CSV of the OOD page's table: one row per file, with its scores or its error.

    Floats are written with ``digits`` significant digits: binary noise such as 57.599999999999994 says
    nothing the scores (float32) or percentiles (counts) know.
    """
    import csv

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else round_sig(r.get(k), digits)) for k in columns})
    return buf.getvalue().encode()
