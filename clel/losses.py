"""CLEL's two losses, one small class each (Algorithm 1).

    L_EBM = mean(E(x⁺) − E(x⁻)) + α·mean(E(x⁺)² + E(x⁻)²) − β·mean(cos(g(f(x⁺)), sg(z⁺)))
    L_LE  = NT-Xent(τ) over two views of x⁺, with sg(g(f(x⁻))) appended as extra negatives

The stop-gradients are what make the two networks teach each other without
collapsing: the encoder's latent is a fixed target for the EBM, and the EBM's
samples are fixed negatives for the encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .energy import marginal


class EBMLoss(nn.Module):
    """L_EBM from features f(x⁺), f(x⁻), projections g(f(x⁺)) and the encoder target z⁺."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.01):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, f_pos: Tensor, f_neg: Tensor, g_pos: Tensor, z_pos: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        e_pos, e_neg = marginal(f_pos), marginal(f_neg)
        cd = (e_pos - e_neg).mean()
        reg = (e_pos.pow(2) + e_neg.pow(2)).mean()
        # z⁺ is a target: no gradient to the encoder through L_EBM.
        cos = F.cosine_similarity(g_pos, z_pos.detach(), dim=1).mean()
        loss = cd + self.alpha * reg - self.beta * cos
        stats = {"e_pos": e_pos.mean().detach(), "e_neg": e_neg.mean().detach(), "cd": cd.detach(), "cos": cos.detach()}
        return loss, stats


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) over views z1, z2 [n, D], optionally with extra negatives [m, D].

    For anchor z_j⁽ⁱ⁾ the positive is z_{3-j}⁽ⁱ⁾ and the negatives are both views of
    every other sample plus every extra negative (eq. 4); averaged over all 2n anchors.
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor, negatives: Tensor | None = None) -> Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = z @ z.T / self.temperature
        # An anchor is never its own negative.
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        if negatives is not None:
            # Extra negatives are fixed vectors: no gradient flows back to whoever made them.
            neg = F.normalize(negatives.detach(), dim=1)
            logits = torch.cat([logits, z @ neg.T / self.temperature], dim=1)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, target)
