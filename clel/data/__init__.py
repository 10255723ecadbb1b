"""Image data sets for CLEL: loading, caching, dequantisation and random batches.

Every loader returns an :class:`ImageSet` whose images are a uint8 tensor ``[N, 3, H, W]`` held in memory.
Images are decoded once and the decoded tensor is cached (safetensors, never pickle) under :func:`cache_dir`,
so later runs load 50,000 CIFAR-10 images in about a second instead of decoding JPEGs again.

By role: :mod:`.core` (the image set, pixel conversions, random batches), :mod:`.files` (decoding and the
cache), :mod:`.sets` (one loader per data set), :mod:`.ood` (the out-of-distribution sets of Table 1c).

Supported layouts:

* CIFAR-10: an ImageFolder root with ``train/`` and ``test/`` (one folder per class), or a torchvision root
  holding ``cifar-10-batches-py``.
* CelebA: aligned faces (178x218 or the 89x109 half-size copy) plus the official ``list_attr_celeba.txt``;
  centre square crop, resized to 64x64.
* DTD: an ImageFolder of textures; the top-left ``size`` x ``size`` pixels.
* SVHN, CIFAR-100: torchvision roots (``download=False``).
* ImageNet 32x32: the official ``*_data_batch_*.npz`` / ``val_data.npz`` files, or an ImageFolder
  ``<root>/<split>/<class>/``.
"""
from .core import (CIFAR10_CLASSES, OPPOSITE_ATTRIBUTE, DataError, ImageSet, RandomBatches, cifar10_interpolation,
                   dequantize, resize_images, to_float, to_uint8, with_opposites)
from .files import cache_dir
from .sets import load_celeba, load_cifar10, load_dataset, load_dtd

__all__ = [
    "CIFAR10_CLASSES", "OPPOSITE_ATTRIBUTE", "DataError", "ImageSet", "RandomBatches", "cache_dir",
    "cifar10_interpolation", "dequantize", "load_celeba", "load_cifar10", "load_dataset", "load_dtd",
    "resize_images", "to_float", "to_uint8", "with_opposites",
]
