"""Loaders of each data set (CIFAR-10, CelebA, DTD; SVHN, CIFAR-100, ImageNet 32x32 for users with the files)."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .core import CIFAR10_CLASSES, DataError, ImageSet, resize_images
from .files import (_cached, _decode_all, _decode_celeba, _decode_full, _decode_top_left, _image_files,
                    _require_dir, _scan_image_folder)



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


