"""The strong augmentation's colour jitter: the reference's kornia 0.6.3 semantics against torchvision's."""
from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from clel.augment import StrongAugment, color_jitter


def params(n, brightness=1.0, contrast=1.0, order=(0, 1, 2, 3)):
    """Explicit jitter parameters: factors per sample, neutral saturation (1) and hue (0), every sample jittered."""
    full = lambda v: torch.as_tensor(v, dtype=torch.float32).expand(n).clone()
    return dict(brightness_factor=full(brightness), contrast_factor=full(contrast), saturation_factor=full(1.0),
                hue_factor=full(0.0), order=torch.tensor(order), batch_prob=torch.ones(n))


@pytest.fixture
def x():
    return torch.rand(2, 3, 8, 8)


def test_reference_brightness_adds_factor_minus_one(x):
    b = torch.tensor([0.7, 1.3])  # drawn from [0.6, 1.4]; kornia 0.6.3 adds b - 1
    out = StrongAugment(32).ops[2](x, params=params(2, brightness=b))
    want = (x + (b - 1).view(-1, 1, 1, 1)).clamp(0, 1)
    assert (out - want).abs().max() < 1e-6
    assert (out == 0).any() and (out == 1).any()  # both clamps were exercised


def test_reference_contrast_multiplies(x):
    c = torch.tensor([0.6, 1.4])
    out = StrongAugment(32).ops[2](x, params=params(2, contrast=c))
    want = (x * c.view(-1, 1, 1, 1)).clamp(0, 1)
    assert (out - want).abs().max() < 1e-6


def test_reference_follows_the_drawn_order(x):
    jit = color_jitter("reference", p=1.0)
    b, c = 1.3, 0.6
    bc = jit(x, params=params(2, b, c, order=(0, 1, 2, 3)))
    cb = jit(x, params=params(2, b, c, order=(1, 0, 2, 3)))
    assert (bc - ((x + (b - 1)).clamp(0, 1) * c).clamp(0, 1)).abs().max() < 1e-6
    assert (cb - (x * c + (b - 1)).clamp(0, 1)).abs().max() < 1e-6
    assert (bc - cb).abs().max() > 0.05


def test_torchvision_option_multiplies_brightness_so_differs_from_reference(x):
    b = torch.tensor([0.7, 1.3])
    p = params(2, brightness=b)
    tv = StrongAugment(32, jitter="torchvision").ops[2](x, params=p)
    ref = StrongAugment(32).ops[2](x, params=p)
    assert (tv - (x * b.view(-1, 1, 1, 1)).clamp(0, 1)).abs().max() < 1e-6
    assert (tv - ref).abs().mean() > 0.05
    c = torch.tensor([0.6, 1.4])  # torchvision blends with the mean grey instead of scaling
    p = params(2, contrast=c)
    assert (color_jitter("torchvision", 1.0)(x, params=p) - color_jitter("reference", 1.0)(x, params=p)).abs().max() > 0.05


def test_strong_augment_defaults_to_the_reference_jitter():
    aug = StrongAugment(32)
    assert isinstance(aug.ops[2], K.ColorJiggle) and aug.ops[2].p == 0.8
    assert isinstance(StrongAugment(32, jitter="torchvision").ops[2], K.ColorJitter)
    out = aug(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_unknown_jitter_raises():
    with pytest.raises(ValueError, match="reference.*torchvision"):
        StrongAugment(32, jitter="pil")
