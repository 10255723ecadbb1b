"""Concept latents: the directions in the encoder's latent space that conditional sampling asks for.

For labelled data, per class: the prototype z̄_c (the paper's mean direction) and the contrast direction
(mean z of the class minus mean z of all images). For attributes (CelebA, with Female = not Male): the mean
latent of the faces with the attribute and the contrast with the faces without it. Exports store both
(``class_prototypes`` / ``class_contrasts``, ``attribute_latents`` / ``attribute_contrasts``).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSet, resize_images, to_float, with_opposites
from .energy import class_contrasts, class_prototypes, contrast_direction, mean_latent
from .inception import cached_features
from .models import FrozenEncoder


@torch.inference_mode()
def encode_images(h: nn.Module, images: Tensor, device: torch.device | str = "cpu", bf16: bool = False,
                  batch_size: int = 500, size: int | None = None, features: Tensor | None = None) -> Tensor:
    """z = h(x)/‖h(x)‖ of uint8 (or [0, 1] float) images, no augmentation or dequantisation, eval mode, [N, D] on
    CPU. ``size``: resize uint8 images of another size to it first (antialiased, as the data loaders do).

    With the frozen encoder the network's features of a set come from the feature cache (computed there the first
    time; ``features`` when the caller already holds them, e.g. the trainer) and only its head runs here.
    """
    if isinstance(h, FrozenEncoder):
        if features is None:
            if images.dtype == torch.uint8 and size is not None and images.shape[-1] != size:
                images = resize_images(images, size)
            features = cached_features(images, device)
        head = copy.deepcopy(h.head).eval().float().to(device)
        return torch.cat([F.normalize(head(chunk.to(device).float()), dim=1).cpu()
                          for chunk in features.split(batch_size)])
    # A channels-last copy of the encoder: 2-3x faster convolutions, and the model itself is left untouched.
    h = copy.deepcopy(h).eval().to(device, memory_format=torch.channels_last)
    kind = torch.device(device).type
    zs = []
    for chunk in images.split(batch_size):
        if chunk.dtype == torch.uint8 and size is not None and chunk.shape[-1] != size:
            chunk = resize_images(chunk, size)
        chunk = to_float(chunk) if chunk.dtype == torch.uint8 else chunk.float()
        x = chunk.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(kind, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            zs.append(F.normalize(h(x).float(), dim=1).cpu())
    return torch.cat(zs)


def attribute_names(data: ImageSet) -> list[str]:
    """The data's attributes, plus Female (= not Male) where only Male is labelled."""
    return with_opposites(data.attr_names or [])


def concept_latents(z: Tensor, data: ImageSet) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """(extras, names) of every concept in ``data`` from the latents ``z`` [N, D] of its images."""
    extras: dict[str, Tensor] = {}
    names: dict[str, list[str]] = {}
    if data.labels is not None:
        num = len(data.classes) if data.classes else int(data.labels.max()) + 1
        if bool((torch.bincount(data.labels, minlength=num) > 0).all()):
            extras["class_prototypes"] = class_prototypes(z, data.labels, num)
            extras["class_contrasts"] = class_contrasts(z, data.labels, num)
            names["class_prototypes"] = names["class_contrasts"] = list(data.classes or map(str, range(num)))
    if data.attrs is not None and data.attr_names:
        rows, contrasts, kept = [], [], []
        for a in attribute_names(data):
            mask = data.attr(a)
            if bool(mask.any()) and not bool(mask.all()):
                rows.append(mean_latent(z[mask]))
                contrasts.append(contrast_direction(z, mask))
                kept.append(a)
        if rows:
            extras["attribute_latents"] = torch.stack(rows)
            extras["attribute_contrasts"] = torch.stack(contrasts)
            names["attribute_latents"] = names["attribute_contrasts"] = kept
    return extras, names
