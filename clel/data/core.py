"""The in-memory image set, pixel conversions and random batches (uint8 [N, 3, H, W] everywhere)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
CACHE_VERSION = "2"  # bump when the decoding changes, so old caches are not reused


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
# Random batches for training
# ----------------------------------------------------------------------------------------------------------------

class RandomBatches:
    """Endless, reproducible random batches ``(x, y)`` from an ImageSet (:meth:`next_indexed`: and their rows).

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
        x, y, _ = self.next_indexed()
        return x, y

    def next_indexed(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The next ``(x, y)`` and the rows of the set they are (int64, CPU): what per-image data that is stored
        beside the set, such as the frozen encoder's cached features, is looked up by."""
        n = len(self.data)
        remaining = n - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.perm = torch.randperm(n, generator=self.generator)
            self.position = 0
            self.epoch += 1
        idx = self.perm[self.position:self.position + self.batch_size]
        self.position += len(idx)
        x, y = self.data.batch(idx, generator=self.generator if self.dequant else None, dequant=self.dequant)
        return x.to(self.device), (y.to(self.device) if y is not None else None), idx

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "position": self.position,
                "epoch": self.epoch, "batch_size": self.batch_size, "n": len(self.data)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` stopped; with another batch size, from the same image of the same epoch."""
        if state["n"] != len(self.data):
            raise ValueError(f"state is for {state['n']} images, this iterator has {len(self.data)}")
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
