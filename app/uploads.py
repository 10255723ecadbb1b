"""Uploads: untrusted bytes decoded to an RGB picture within the server's limits, or a sentence that names the file and
says why not; then fitted to the model's input, with the thumbnails of what the model sees.

RGBA, palette, grayscale, 16-bit and CMYK images are converted to 8-bit RGB, and the conversion is reported.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from clel.images import fit_square, images_to_tensor, save_png, upscale
from clel_app.limits import Limits
from clel_app.messages import DemoError


class ImageError(DemoError):
    """An uploaded file cannot be used as an image; the message names the file and says why."""


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


def read_uploads(files: Any, what: str, size: int, limits: Limits) -> tuple[Tensor, list[DecodedImage]]:
    """A Gradio file input (one file, a list or nothing) decoded and fitted to the model's ``size``: float
    [N, 3, size, size] in [0, 1], and the decoded uploads. ``what`` names the input in the message when it is empty."""
    paths = files if isinstance(files, (list, tuple)) else ([files] if files else [])
    paths = [p for p in paths if p]
    if not paths:
        raise DemoError(f"upload {what} first")
    if len(paths) > limits.max_reference_images:
        raise DemoError(f"{len(paths)} images uploaded; the limit is {limits.max_reference_images}")
    decoded = []
    for p in paths:
        path = getattr(p, "name", None) or str(p)
        decoded.append(decode_image(path, Path(path).name, limits))
    return images_to_tensor([d.image for d in decoded], size), decoded


def thumbnails(decoded: list[DecodedImage], size: int, folder: Path) -> list[tuple[str, str]]:
    """(file, caption) of "What the model sees": each upload as the model's input, enlarged, written once into
    ``folder`` (every frame sends them again, and Gradio rewrites an image array's cached file each time it is
    sent, under the page reading it); the caption says how the upload was converted."""
    return [(str(save_png(upscale(fit_square(d.image, size), target=128), folder / f"seen_{i}.png")),
             d.name + (f" ({d.note})" if d.notes else "")) for i, d in enumerate(decoded)]
