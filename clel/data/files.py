"""Decoding image files (in parallel for large sets) and the safetensors cache of decoded sets."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .core import CACHE_VERSION, IMAGE_EXTENSIONS, DataError, ImageSet


POOL_MIN_IMAGES = 2000  # below this, starting worker processes costs more than it saves


# ----------------------------------------------------------------------------------------------------------------
# Decoding (in parallel) and caching
# ----------------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where decoded tensors are cached: ``$CLEL_CACHE`` or ``~/.cache/clel`` (data roots stay read-only)."""
    return Path(os.environ.get("CLEL_CACHE", Path.home() / ".cache" / "clel"))


def content_key(images: torch.Tensor | np.ndarray) -> str:
    """A set's identity from its content (dtype, shape and every byte), whatever its file or name: what the caches
    of results computed from a set (FID statistics, the frozen encoder's features) are keyed by."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def _open_rgb(path: Path) -> Image.Image:
    """Fully decode an image as RGB, turning any decoder failure into a DataError that names the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def _decode_full(path: Path, size: int) -> np.ndarray:
    """The whole image, which must be ``size`` x ``size`` (CIFAR-10)."""
    im = _open_rgb(path)
    if im.size != (size, size):
        raise DataError(f"{path}: expected a {size}x{size} image, got {im.size[0]}x{im.size[1]}")
    return np.asarray(im)


def _decode_top_left(path: Path, size: int) -> np.ndarray:
    """The top-left ``size`` x ``size`` pixels, no resizing (DTD as OOD data)."""
    im = _open_rgb(path)
    if im.size[0] < size or im.size[1] < size:
        raise DataError(f"{path}: expected at least {size}x{size} pixels, got {im.size[0]}x{im.size[1]}")
    return np.asarray(im.crop((0, 0, size, size)))


def _decode_celeba(path: Path, size: int) -> np.ndarray:
    """Centre square crop of an aligned CelebA face, resized with antialiasing.

    The standard crop of the 178x218 aligned image is 178x178 starting at row 20; for other widths it scales
    with the width (89x109 -> 89x89 at row 10).
    """
    im = _open_rgb(path)
    w, h = im.size
    top = round(20 * w / 178)
    if top + w > h:
        raise DataError(f"{path}: expected an aligned CelebA face (taller than wide, like 178x218), got {w}x{h}")
    # crop first: resize(box=...) would let the filter see rows outside the square
    return np.asarray(im.crop((0, top, w, top + w)).resize((size, size), Image.BICUBIC))


def _decode_chunk(paths: Sequence[Path], decode: Callable[[Path], np.ndarray]) -> np.ndarray:
    return np.stack([decode(p) for p in paths])


def _decode_all(paths: Sequence[Path], decode: Callable[[Path], np.ndarray]) -> torch.Tensor:
    """Decode images into uint8 ``[N, 3, H, W]``; large sets use a forked process pool (threads measured no faster
    with PIL)."""
    if not paths:
        raise ValueError("no images to decode")
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if workers > 1 and can_fork and len(paths) >= POOL_MIN_IMAGES:
        chunks = [paths[i:i + 1000] for i in range(0, len(paths), 1000)]
        # fork: the workers only run PIL/numpy, and fork avoids re-importing torch in every worker
        with ProcessPoolExecutor(min(workers, 8), mp_context=multiprocessing.get_context("fork")) as pool:
            arr = np.concatenate(list(pool.map(partial(_decode_chunk, decode=decode), chunks)))
    else:
        arr = _decode_chunk(paths, decode)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _cache_key(kind: str, files: Sequence[Path], extra: dict[str, Any]) -> str:
    """Cache file name from the data's identity: resolved paths, options, file count and newest mtime."""
    newest = max(os.stat(f).st_mtime_ns for f in files)
    ident = json.dumps({"version": CACHE_VERSION, "kind": kind, "count": len(files), "newest_mtime_ns": newest,
                        **extra}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.safetensors"


def _load_cache(name: str) -> ImageSet | None:
    path = cache_dir() / name
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return ImageSet(
            images=tensors["images"],
            labels=tensors.get("labels"),
            classes=json.loads(meta["classes"]) if "classes" in meta else None,
            attrs=tensors["attrs"].bool() if "attrs" in tensors else None,
            attr_names=json.loads(meta["attr_names"]) if "attr_names" in meta else None,
        )
    except (OSError, SafetensorError, KeyError, ValueError):
        return None  # a damaged or foreign cache file is simply rebuilt


def _save_cache(name: str, data: ImageSet) -> None:
    tensors = {"images": data.images}
    meta: dict[str, str] = {}
    if data.labels is not None:
        tensors["labels"] = data.labels
    if data.classes is not None:
        meta["classes"] = json.dumps(data.classes)
    if data.attrs is not None:
        tensors["attrs"] = data.attrs.to(torch.uint8)  # safetensors bool support varies; uint8 is portable
        meta["attr_names"] = json.dumps(data.attr_names)
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = cache_dir() / f".{name}.{os.getpid()}.tmp"
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, cache_dir() / name)  # atomic: concurrent readers never see a half-written file
    except OSError:
        pass  # caching is an optimisation; an unwritable cache dir must not break loading


def _cached(kind: str, files: Sequence[Path], extra: dict[str, Any], build: Callable[[], ImageSet]) -> ImageSet:
    name = _cache_key(kind, files, extra)
    data = _load_cache(name)
    if data is None:
        data = build()
        _save_cache(name, data)
    return data


# ----------------------------------------------------------------------------------------------------------------
# Folder helpers
# ----------------------------------------------------------------------------------------------------------------

def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: does not exist (expected {what})")
    if not path.is_dir():
        raise DataError(f"{path}: is not a folder (expected {what})")
    return path.resolve()


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (scandir: no stat per file, fast for 50k files)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
    return [folder / n for n in names]


def _scan_image_folder(root: Path, what: str) -> tuple[list[str], list[Path], list[int]]:
    """Class folders (sorted) of an ImageFolder root and their images (sorted by name within each class)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders found (expected {what})")
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        found = _image_files(root / c)
        if not found:
            raise DataError(f"{root / c}: no images found (expected {', '.join(IMAGE_EXTENSIONS)} files)")
        files += found
        labels += [i] * len(found)
    return classes, files, labels


