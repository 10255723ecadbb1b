"""SimCLR-style strong augmentation, batched on the device with kornia.

The same transform family serves the encoder's two views, the latent target of
L_EBM and the replay-buffer perturbation before each SGLD chain. Parameters are
drawn per sample; outputs stay in [0, 1].
"""
from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn


class StrongAugment(nn.Module):
    """RandomResizedCrop(0.08–1, bicubic) · flip · ColorJitter(0.4, 0.4, 0.4, 0.1; p 0.8) · grayscale(p 0.2)."""

    def __init__(self, size: int):
        super().__init__()
        self.ops = nn.Sequential(
            # "resample" crops the whole batch with one warp instead of a loop over samples.
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0), resample="bicubic", cropping_mode="resample"),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        )

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        # Bicubic interpolation overshoots; pixels must stay valid for SGLD and the buffer.
        return self.ops(x).clamp_(0.0, 1.0)
