"""SimCLR-style strong augmentation, batched on the device with kornia.

The same transform family serves the encoder's two views, the latent target of
L_EBM and the replay-buffer perturbation before each SGLD chain. Parameters are
drawn per sample; outputs stay in [0, 1].
"""
from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn

JITTERS = ("reference", "torchvision")


def color_jitter(kind: str = "reference", p: float = 0.8) -> nn.Module:
    """ColorJitter(0.4, 0.4, 0.4, 0.1) with the reference's or torchvision's semantics.

    "reference": the CLEL code pins kornia 0.6.3, whose ColorJitter is today's ``K.ColorJiggle``: brightness adds
    ``b - 1`` (b ~ U[0.6, 1.4]), contrast multiplies by c, then saturation and hue, in one random order per batch.
    "torchvision": today's ``K.ColorJitter``: brightness multiplies, contrast blends with the mean grey.
    """
    if kind == "reference":
        return K.ColorJiggle(0.4, 0.4, 0.4, 0.1, p=p)
    if kind == "torchvision":
        return K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=p)
    raise ValueError(f"jitter must be one of {JITTERS}, got {kind!r}")


class StrongAugment(nn.Module):
    """RandomResizedCrop(0.08–1, bicubic) · flip · ColorJitter(0.4, 0.4, 0.4, 0.1; p 0.8) · grayscale(p 0.2).

    ``jitter`` picks the colour jitter's semantics (see :func:`color_jitter`); the default follows the reference.
    """

    def __init__(self, size: int, jitter: str = "reference"):
        super().__init__()
        self.ops = nn.Sequential(
            # "resample" crops the whole batch with one warp instead of a loop over samples.
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0), resample="bicubic", cropping_mode="resample"),
            K.RandomHorizontalFlip(),
            color_jitter(jitter),
            K.RandomGrayscale(p=0.2),
        )

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        # Bicubic interpolation overshoots; pixels must stay valid for SGLD and the buffer.
        return self.ops(x).clamp_(0.0, 1.0)
