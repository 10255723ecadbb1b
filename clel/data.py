"""Image data sets for CLEL: loading, caching, dequantisation and random batches.

Every loader returns an :class:`ImageSet` whose images are a uint8 tensor
``[N, 3, H, W]`` held in memory. Images are decoded once and the decoded tensor
is cached (safetensors, never pickle) under :func:`cache_dir`, so later runs
load 50,000 CIFAR-10 images in about a second instead of decoding JPEGs again.

Supported layouts:

* CIFAR-10: an ImageFolder root with ``train/`` and ``test/`` (one folder per
  class), or a torchvision root holding ``cifar-10-batches-py``.
* CelebA: aligned faces (178x218 or the 89x109 half-size copy) plus the
  official ``list_attr_celeba.txt``; centre square crop, resized to 64x64.
* DTD: an ImageFolder of textures; the top-left ``size`` x ``size`` pixels.
* SVHN, CIFAR-100: torchvision roots (``download=False``).
* ImageNet 32x32: the official ``*_data_batch_*.npz`` / ``val_data.npz`` files,
  or an ImageFolder ``<root>/<split>/<class>/``.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "CIFAR10_CLASSES", "DataError", "ImageSet", "RandomBatches", "cache_dir", "cifar10_interpolation", "dequantize",
    "load_celeba", "load_cifar10", "load_dataset", "load_dtd", "resize_images", "to_float", "to_uint8",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
CACHE_VERSION = "2"  # bump when the decoding changes, so old caches are not reused
POOL_MIN_IMAGES = 2000  # below this, starting worker processes costs more than it saves


class DataError(ValueError):
    """A data root is missing or malformed; the message names the path and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# The in-memory data set
# ----------------------------------------------------------------------------------------------------------------

# The one home of "Female = not Male": CelebA labels Male only; each name here is the other's complement.
OPPOSITE_ATTRIBUTE = {"Female": "Male", "Male": "Female"}


def with_opposites(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` plus the complements that OPPOSITE_ATTRIBUTE derives from them (Male → Female)."""
    names = list(names)
    return names + [OPPOSITE_ATTRIBUTE[n] for n in names if n in OPPOSITE_ATTRIBUTE
                    and OPPOSITE_ATTRIBUTE[n] not in names]


@dataclass
class ImageSet:
    """Decoded images (uint8 ``[N, 3, H, W]``) with optional class labels and binary attributes."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    attrs: torch.Tensor | None = None
    attr_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if self.attrs is not None:
            if self.attr_names is None or self.attrs.shape != (n, len(self.attr_names)):
                raise ValueError("attrs must be [N, len(attr_names)] and attr_names must be given")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: Any, generator: torch.Generator | None = None,
              dequant: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float images in [0, 1) for the given indices (dequantised unless ``dequant=False``) and their labels."""
        x = self.images[idx]
        x = dequantize(x, generator) if dequant else to_float(x)
        return x, (self.labels[idx] if self.labels is not None else None)

    def attr(self, name: str) -> torch.Tensor:
        """Boolean ``[N]`` column of attribute ``name``; ``"Female"`` is derived as not ``"Male"``."""
        names = self.attr_names or []
        if self.attrs is not None and name in names:
            return self.attrs[:, names.index(name)].bool()
        if self.attrs is not None and OPPOSITE_ATTRIBUTE.get(name) in names:
            return ~self.attrs[:, names.index(OPPOSITE_ATTRIBUTE[name])].bool()
        valid = with_opposites(names)
        raise KeyError(f"unknown attribute {name!r}; valid names: {', '.join(valid) or '(this set has none)'}")

    def subset(self, idx: Any) -> "ImageSet":
        """A new ImageSet with the rows ``idx`` (e.g. a seeded random subset for quick tests)."""
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx] if self.labels is not None else None,
            classes=self.classes,
            attrs=self.attrs[idx] if self.attrs is not None else None,
            attr_names=self.attr_names,
        )


# ----------------------------------------------------------------------------------------------------------------
# Pixel value conversions
# ----------------------------------------------------------------------------------------------------------------

# Largest noise that keeps k + u below k + 1 in float32 for every k <= 255 (8 integer + 16 fraction bits fit in
# float32's 24-bit mantissa), so floor(x * 256) always gives back the original uint8 and x stays below 1.
_MAX_NOISE = 1.0 - 2.0 ** -16


def dequantize(x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation: ``(x + u) / 256`` with ``u ~ U[0, 1)``, a float32 tensor in [0, 1).

    Equivalent to ``x/255 * 255/256 + U(0, 1/256)``. The noise is drawn on the generator's device (CPU by default)
    so a seeded CPU generator gives the same numbers whatever device the images are on.
    """
    device = generator.device if generator is not None else x_uint8.device
    u = torch.rand(x_uint8.shape, generator=generator, device=device).clamp_(max=_MAX_NOISE).to(x_uint8.device)
    return (x_uint8.float() + u) / 256.0


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """Deterministic ``x / 255`` in [0, 1], for evaluation."""
    return x_uint8.float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 with rounding, the inverse of :func:`to_float` (PNG files, FID samples, compact
    replay buffers); stays on its device."""
    return (x.detach().float().clamp(0, 1) * 255).round_().to(torch.uint8)


def resize_images(images_uint8: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 ``[N, 3, H, W]`` images (e.g. CelebA 64 -> 32 for OOD tests)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images_uint8.shape[-2:]) == hw:
        return images_uint8.clone()
    out = []
    for chunk in images_uint8.split(1024):  # bounded float32 memory for large sets
        y = F.interpolate(chunk.float(), size=hw, mode="bicubic", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images_uint8.new_zeros((0, 3, *hw))


def cifar10_interpolation(images: torch.Tensor) -> torch.Tensor:
    """The "CIFAR-10 interpolation" OOD set: ``(x_i + x_{(i + 100) mod N}) / 2`` for every i, N outputs.

    uint8 in, uint8 out; the mean is rounded half up (``(a + b + 1) // 2``). Pairs are taken in the order given:
    with a class-sorted ImageFolder order most pairs share a class, so shuffle first (with a seed) to mix classes.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    a = images.to(torch.int16)
    b = torch.roll(a, shifts=-100, dims=0)  # b[i] = a[(i + 100) % N]
    return ((a + b + 1) // 2).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Decoding (in parallel) and caching
# ----------------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where decoded tensors are cached: ``$CLEL_CACHE`` or ``~/.cache/clel`` (data roots stay read-only)."""
    return Path(os.environ.get("CLEL_CACHE", Path.home() / ".cache" / "clel"))


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
    """Decode images into uint8 ``[N, 3, H, W]``; large sets use a forked process pool (threads measured no faster with PIL)."""
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


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------------------------

def _check_split(split: str, allowed: Sequence[str] = ("train", "test")) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")


def load_cifar10(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """CIFAR-10 from an ImageFolder root (``train/``, ``test/``) or a torchvision root (``cifar-10-batches-py``).

    Classes are in the standard order (airplane ... truck). From an ImageFolder the images are grouped by class,
    in file-name order within a class; from a torchvision root they are in the official order.
    """
    _check_split(split)
    root = Path(root)
    if root.name == "cifar-10-batches-py":
        root = root.parent
    if (root / "cifar-10-batches-py").is_dir():
        from torchvision.datasets import CIFAR10
        return _from_torchvision(lambda: CIFAR10(str(root), train=split == "train", download=False), root, "CIFAR-10")

    what = "a CIFAR-10 ImageFolder root with train/ and test/ class folders, or a folder with cifar-10-batches-py"
    _require_dir(root, what)
    split_dir = _require_dir(root / split, what)
    classes, files, labels = _scan_image_folder(split_dir, what)
    if classes != sorted(CIFAR10_CLASSES):
        raise DataError(f"{split_dir}: expected the class folders {CIFAR10_CLASSES}, found {classes}")
    # map folder order to the standard CIFAR-10 label order (they coincide, but do not rely on it)
    remap = [CIFAR10_CLASSES.index(c) for c in classes]

    def build() -> ImageSet:
        return ImageSet(images=_decode_all(files, partial(_decode_full, size=32)),
                        labels=torch.tensor([remap[l] for l in labels], dtype=torch.int64),
                        classes=list(CIFAR10_CLASSES))

    return _cached("cifar10", files, {"root": split_dir, "split": split, "size": 32}, build)


def _from_torchvision(make: Callable[[], Any], root: Path, name: str) -> ImageSet:
    """Wrap a torchvision data set (CIFAR-10/100: ``.data`` NHWC, SVHN: ``.data`` NCHW) as an ImageSet."""
    try:
        ds = make()
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"{root}: {name} not found or corrupted ({e})") from None
    data = torch.from_numpy(np.asarray(ds.data))
    if data.shape[-1] == 3:
        data = data.permute(0, 3, 1, 2)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = ds.labels
    classes = list(getattr(ds, "classes", [])) or None
    return ImageSet(images=data.contiguous(), labels=torch.as_tensor(np.asarray(targets), dtype=torch.int64),
                    classes=classes)


# ----------------------------------------------------------------------------------------------------------------
# CelebA
# ----------------------------------------------------------------------------------------------------------------

def _find_celeba_images(root: Path) -> Path:
    for sub in ("img_align_celeba_89x109", "img_align_celeba", "img_align_celeba/img_align_celeba"):
        if (root / sub).is_dir():
            return root / sub
    if any(p.suffix.lower() in (".jpg", ".png") for p in root.iterdir()):
        return root
    raise DataError(f"{root}: no CelebA images found (expected img_align_celeba_89x109/ or img_align_celeba/ "
                    f"with NNNNNN.jpg files, or a folder of such files)")


def _parse_celeba_attrs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse the official ``list_attr_celeba.txt``: a count line, a names line, then ``NNNNNN.jpg ±1 ...`` rows."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read attribute file ({e})") from None
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path}: malformed attribute file: expected the image count on line 1 and attribute names "
                        f"on line 2 (official list_attr_celeba.txt format)")
    count = int(lines[0])
    names = lines[1].split()
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    if len(rows) != count:
        raise DataError(f"{path}: malformed attribute file: line 1 says {count} images but {len(rows)} rows follow")
    files, values = [], []
    for lineno, row in enumerate(rows, start=3):
        if len(row) != len(names) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise DataError(f"{path}: malformed attribute file at line {lineno}: expected a file name and "
                            f"{len(names)} values of 1 or -1, got {' '.join(row)[:80]!r}")
        files.append(row[0])
        values.append([v == "1" for v in row[1:]])
    return names, files, np.array(values, dtype=bool).reshape(len(files), len(names))


def load_celeba(root: str | os.PathLike, image_size: int = 64, attr_file: str | os.PathLike | None = None) -> ImageSet:
    """Aligned CelebA faces, centre-cropped to a square and resized to ``image_size``, with their 40 attributes.

    ``root`` holds ``img_align_celeba_89x109/`` (or ``img_align_celeba/``) and ``list_attr_celeba.txt``, or is the
    image folder itself. Only images listed in the attribute file that exist on disk are loaded, in file order.
    """
    root = _require_dir(Path(root), "a CelebA folder with aligned images and list_attr_celeba.txt")
    image_dir = _find_celeba_images(root)
    if attr_file is None:
        candidates = [root / "list_attr_celeba.txt", root / "Anno" / "list_attr_celeba.txt",
                      image_dir.parent / "list_attr_celeba.txt"]
        attr_path = next((c for c in candidates if c.is_file()), None)
        if attr_path is None:
            raise DataError(f"{root}: list_attr_celeba.txt not found (looked in {', '.join(map(str, candidates))})")
    else:
        attr_path = Path(attr_file)
        if not attr_path.is_file():
            raise DataError(f"{attr_path}: attribute file does not exist (expected list_attr_celeba.txt)")
    names, listed, values = _parse_celeba_attrs(attr_path)

    present = set(os.listdir(image_dir))  # one listing instead of a stat per listed file
    keep = [i for i, f in enumerate(listed) if f in present]
    if not keep:
        raise DataError(f"{image_dir}: none of the {len(listed)} images listed in {attr_path} exist here")
    files = [image_dir / listed[i] for i in keep]

    def build() -> ImageSet:
        return ImageSet(images=_decode_all(files, partial(_decode_celeba, size=image_size)),
                        attrs=torch.from_numpy(values[keep]), attr_names=names)

    extra = {"root": image_dir, "attr_file": attr_path.resolve(), "attr_mtime": os.stat(attr_path).st_mtime_ns,
             "size": image_size}
    return _cached("celeba", files, extra, build)


# ----------------------------------------------------------------------------------------------------------------
# DTD (Describable Textures), used as out-of-distribution data
# ----------------------------------------------------------------------------------------------------------------

def load_dtd(root: str | os.PathLike, size: int = 32) -> ImageSet:
    """Every image of a DTD ImageFolder (``<class>/<image>``), cut to its top-left ``size`` x ``size`` pixels."""
    what = "a DTD ImageFolder root with one folder of images per texture class"
    root = _require_dir(Path(root), what)
    if (root / "images").is_dir() and not _image_files(root):  # the official archive nests classes in images/
        root = root / "images"
    classes, files, labels = _scan_image_folder(root, what)

    def build() -> ImageSet:
        return ImageSet(images=_decode_all(files, partial(_decode_top_left, size=size)),
                        labels=torch.tensor(labels, dtype=torch.int64), classes=classes)

    return _cached("dtd", files, {"root": root, "size": size}, build)


# ----------------------------------------------------------------------------------------------------------------
# Data sets that are not available offline here (code paths for users with the data)
# ----------------------------------------------------------------------------------------------------------------

_WHERE = {
    "svhn": "torchvision.datasets.SVHN(root, split=..., download=True) on a machine with a network "
            "(files train_32x32.mat / test_32x32.mat from http://ufldl.stanford.edu/housenumbers/)",
    "cifar100": "torchvision.datasets.CIFAR100(root, download=True) on a machine with a network "
                "(cifar-100-python from https://www.cs.toronto.edu/~kriz/cifar.html)",
    "imagenet32": "the 'Downsampled ImageNet 32x32' npz files from https://image-net.org/download-images "
                  "(train_data_batch_1..10.npz, val_data.npz)",
}


def _offline_error(name: str, root: Path, detail: str) -> DataError:
    return DataError(f"{root}: {name} is not available ({detail}); it cannot be downloaded offline. "
                     f"Get it with {_WHERE[name]} and pass its folder as root.")


def _load_svhn(root: Path, split: str) -> ImageSet:
    _check_split(split, ("train", "test", "extra"))
    if not (root / f"{split}_32x32.mat").is_file():
        raise _offline_error("svhn", root, f"{split}_32x32.mat missing")
    from torchvision.datasets import SVHN
    data = _from_torchvision(lambda: SVHN(str(root), split=split, download=False), root, "SVHN")
    data.classes = [str(d) for d in range(10)]
    return data


def _load_cifar100(root: Path, split: str) -> ImageSet:
    _check_split(split)
    if root.name == "cifar-100-python":
        root = root.parent
    if not (root / "cifar-100-python").is_dir():
        raise _offline_error("cifar100", root, "cifar-100-python/ missing")
    from torchvision.datasets import CIFAR100
    return _from_torchvision(lambda: CIFAR100(str(root), train=split == "train", download=False), root, "CIFAR-100")


def _load_imagenet32(root: Path, split: str) -> ImageSet:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017): npz batches, or an ImageFolder ``<split>/<class>``."""
    _check_split(split, ("train", "val", "test"))
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data*.npz"
    batches = sorted(root.glob(pattern)) if root.is_dir() else []
    folder = root / ("val" if split == "test" else split)
    if batches:
        images, labels = [], []
        for b in batches:
            with np.load(b, allow_pickle=False) as z:  # never unpickle data files
                images.append(z["data"].reshape(-1, 3, 32, 32))
                labels.append(z["labels"].astype(np.int64) - 1)  # the files number classes from 1
        return ImageSet(images=torch.from_numpy(np.concatenate(images)).contiguous(),
                        labels=torch.from_numpy(np.concatenate(labels)))
    if folder.is_dir():
        classes, files, lab = _scan_image_folder(folder, "an ImageFolder of 32x32 ImageNet images")
        return _cached("imagenet32", files, {"root": folder.resolve(), "size": 32},
                       lambda: ImageSet(images=_decode_all(files, partial(_decode_full, size=32)),
                                        labels=torch.tensor(lab, dtype=torch.int64), classes=classes))
    raise _offline_error("imagenet32", root, f"no {pattern} files and no {folder.name}/ ImageFolder")


def load_dataset(name: str, root: str | os.PathLike, split: str = "train", image_size: int | None = None) -> ImageSet:
    """Load a data set by name: cifar10, celeba, dtd, svhn, cifar100 or imagenet32.

    ``image_size`` is the CelebA output size (default 64), the DTD crop size (default 32), and for the 32x32 sets an
    optional antialiased resize. ``split`` is ignored by CelebA and DTD (used whole, as in the paper).
    """
    name = name.lower().replace("-", "").replace("_", "")
    root = Path(root)
    if name == "celeba":
        return load_celeba(root, image_size=image_size or 64)
    if name in ("dtd", "textures"):
        return load_dtd(root, size=image_size or 32)
    loaders = {"cifar10": load_cifar10, "svhn": _load_svhn, "cifar100": _load_cifar100, "imagenet32": _load_imagenet32}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; known: cifar10, celeba, dtd, svhn, cifar100, imagenet32")
    if name != "cifar10" and not root.is_dir():
        raise _offline_error(name, root, "folder missing")
    data = loaders[name](root, split)
    if image_size is not None and image_size != data.images.shape[-1]:
        data.images = resize_images(data.images, image_size)
    return data


# ----------------------------------------------------------------------------------------------------------------
# Random batches for training
# ----------------------------------------------------------------------------------------------------------------

class RandomBatches:
    """Endless, reproducible random batches ``(x, y)`` from an ImageSet.

    Each epoch is a fresh permutation drawn from ``generator``; batches are taken from it without replacement.
    With ``drop_last=True`` (default) every batch has exactly ``batch_size`` images and the incomplete tail of an
    epoch is skipped. ``x`` is dequantised float32 in [0, 1) on ``device`` (noise from the same generator);
    ``y`` is the int64 labels on ``device`` or None. :meth:`state_dict` captures the generator state, the
    permutation and the position, so a resumed run continues with exactly the same batches.
    """

    def __init__(self, imageset: ImageSet, batch_size: int, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", drop_last: bool = True, dequant: bool = True) -> None:
        if batch_size < 1 or (drop_last and batch_size > len(imageset)):
            raise ValueError(f"batch_size must be in [1, {len(imageset)}] for this set, got {batch_size}")
        self.data = imageset
        self.batch_size = batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.dequant = dequant
        self.epoch = 0
        self.position = 0
        self.perm = torch.randperm(len(imageset), generator=self.generator)

    def __iter__(self) -> "RandomBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = len(self.data)
        remaining = n - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.perm = torch.randperm(n, generator=self.generator)
            self.position = 0
            self.epoch += 1
        idx = self.perm[self.position:self.position + self.batch_size]
        self.position += len(idx)
        x, y = self.data.batch(idx, generator=self.generator if self.dequant else None, dequant=self.dequant)
        return x.to(self.device), (y.to(self.device) if y is not None else None)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "position": self.position,
                "epoch": self.epoch, "batch_size": self.batch_size, "n": len(self.data)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != len(self.data) or state["batch_size"] != self.batch_size:
            raise ValueError(f"state is for {state['n']} images in batches of {state['batch_size']}, "
                             f"this iterator has {len(self.data)} in batches of {self.batch_size}")
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
