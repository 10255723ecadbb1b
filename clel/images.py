"""Images in and out, for the scripts and the demo apps alike: a square model input from any picture, reference
images from disk, sample grids, nearest-neighbour enlargement, PNG files and bytes, chains as GIF."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import to_uint8

if TYPE_CHECKING:
    from PIL.Image import Image


class ImageFileError(ValueError):
    """An image file that is missing or cannot be decoded; the message names it."""


# ----------------------------------------------------------------------------------------------------------------
# Pictures in: the model's square input
# ----------------------------------------------------------------------------------------------------------------

def fit_square(image: Image, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` x ``size`` with antialiasing: uint8 [size, size, 3]."""
    from PIL import Image as PILImage, ImageOps

    return np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), PILImage.Resampling.BICUBIC), dtype=np.uint8)


def images_to_tensor(images: Sequence[Image], size: int) -> Tensor:
    """Pictures as the model sees them (:func:`fit_square`): float [N, 3, size, size] in [0, 1]."""
    if not images:
        raise ValueError("no images given")
    arrs = [fit_square(im, size) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)


def load_images(paths: Sequence[str | os.PathLike], size: int) -> Tensor:
    """Decode image files to float RGB [N, 3, size, size] in [0, 1] (centre square crop, antialiased resize).

    A missing file or one that cannot be decoded raises :class:`ImageFileError` naming it.
    """
    from PIL import Image as PILImage, ImageOps

    if not paths:
        raise ImageFileError("no reference images given")
    squares = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ImageFileError(f"{path}: no such image file")
        try:
            with PILImage.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = im.convert("RGB")
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
            raise ImageFileError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
        # the square on whole pixels: fit_square alone centres it between two pixels when the sides differ by an
        # odd count, and the scripts' references have always been cut on whole pixels
        w, h = rgb.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        squares.append(rgb.crop((left, top, left + side, top + side)))
    return images_to_tensor(squares, size)


# ----------------------------------------------------------------------------------------------------------------
# Pictures out: grids, enlargement, PNG, GIF
# ----------------------------------------------------------------------------------------------------------------

def grid_array(x: Tensor, nrow: int | None = None, padding: int = 2, upscale: int = 1) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] (or uint8) → H' x W' x 3 uint8 grid, white padding, nearest-neighbour upscale;
    ``nrow`` images per row (default: about square)."""
    from torchvision.utils import make_grid

    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of images [N, 3, H, W], got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = to_uint8(x)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid(x.cpu(), nrow=nrow, padding=padding, pad_value=255)
    arr = grid.permute(1, 2, 0).numpy()
    if upscale > 1:
        arr = _repeat_pixels(arr, upscale)
    return np.ascontiguousarray(arr)


def upscale(image: np.ndarray, factor: int | None = None, target: int = 560, max_factor: int = 8) -> np.ndarray:
    """Nearest-neighbour enlargement for display (pixels stay square and sharp).

    With no ``factor``, the largest integer factor that keeps the longer side at most ``target`` pixels
    (at least 1, at most ``max_factor``).
    """
    if factor is None:
        factor = max(1, min(max_factor, target // max(image.shape[:2])))
    return image if factor == 1 else _repeat_pixels(image, factor)


def _repeat_pixels(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 [H, W, 3] array as a PNG file (its folder made if needed)."""
    from PIL import Image as PILImage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(image).save(path, format="PNG")
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] array as the bytes of a PNG file."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, upscale: int = 1) -> Path:
    """Write samples as one PNG grid."""
    return save_png(grid_array(x, nrow, upscale=upscale), path)


def save_gif(frames: Sequence[Tensor], path: str | os.PathLike, nrow: int | None = None, upscale: int = 1,
             duration_ms: int = 100, hold_last_ms: int = 1000) -> Path:
    """Animated GIF of a chain: one grid per frame, looping, the last frame held a little longer."""
    from PIL import Image as PILImage

    if not frames:
        raise ImageFileError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [PILImage.fromarray(grid_array(f, nrow, upscale=upscale)) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path
