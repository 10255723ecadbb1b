"""Image files in and out: reference images from disk, sample grids as PNG, chains as GIF."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import to_uint8


class ImageFileError(ValueError):
    """An image file that is missing or cannot be decoded; the message names it."""



def load_images(paths: Sequence[str | os.PathLike], size: int) -> Tensor:
    """Decode image files to float RGB [N, 3, size, size] in [0, 1] (centre square crop, antialiased resize).

    A missing file or one that cannot be decoded raises :class:`ImageFileError` naming it.
    """
    from PIL import Image, ImageOps

    if not paths:
        raise ImageFileError("no reference images given")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ImageFileError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = im.convert("RGB")
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
            raise ImageFileError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
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
        raise ImageFileError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(grid_array(f, nrow, upscale=upscale)) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False)
    return path


