"""CLEL's energies, with the paper's names.

    marginal        E(x)      = ½‖f(x)‖²
    joint           E(x, z)   = ½‖f(x)‖² − β cos(g(f(x)), z)            (‖z‖ = 1)
    conditional     E(x, z̄)   with z̄ = Σ zᵢ / ‖Σ zᵢ‖ over one or many images
    compositional   E(x, {z̄ₐ}) = ½‖f(x)‖² − β Σₐ wₐ cos(g(f(x)), z̄ₐ)    (w > 0: AND, w < 0: NOT)
    OOD score       s(x)      = ½‖f(x)‖² − β cos(g(f(x)), h(x)/‖h(x)‖)   (eq. 5; higher = more OOD)

Why the marginal is ½‖f‖²: ∫ exp(β cos(g(f(x)), z)) dz over the unit sphere does
not depend on x (the sphere is rotation invariant), so integrating z out of the
joint leaves only the norm term. ``tests/test_energy.py`` checks this by Monte Carlo.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import CLEL


def marginal(fx: Tensor) -> Tensor:
    """½‖f(x)‖² from already computed features f(x): [N, D] → [N]."""
    return 0.5 * fx.pow(2).sum(dim=1)


def latent_cosine(model: CLEL, fx: Tensor, z: Tensor) -> Tensor:
    """cos(g(f(x)), z) per sample; z is [D] (broadcast) or [N, D]."""
    return F.cosine_similarity(model.g(fx), z.expand(fx.shape[0], -1), dim=1)


def energy(model: CLEL, x: Tensor) -> Tensor:
    """Marginal energy E(x) = ½‖f(x)‖², [N]."""
    return marginal(model.f(x))


def joint_energy(model: CLEL, x: Tensor, z: Tensor, guidance: float | Tensor, bound: float | None = None) -> Tensor:
    """E(x, z) = ½‖f(x)‖² − β cos(g(f(x)), z) with β = ``guidance`` (training: ``cfg.beta``); z unit-norm, [D] or
    [N, D]. ``bound``: see :func:`bounded`."""
    fx = model.f(x)
    return marginal(fx) - guidance * latent_cosine(model, bounded(fx, bound), z)


class _BoundedGrad(torch.autograd.Function):
    """Identity on f(x); on the way back, caps each sample's gradient at ``bound`` · ‖f(x)‖.

    ‖f(x)‖ is the norm of the marginal's gradient with respect to f(x) (∂½‖f‖²/∂f = f), so the latent term can
    pull at most ``bound`` times as hard as the marginal, in feature space, whatever the guidance.
    """

    @staticmethod
    def forward(ctx, fx: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(fx)
        ctx.bound = bound
        return fx.view_as(fx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (fx,) = ctx.saved_tensors
        limit = ctx.bound * fx.float().norm(dim=1, keepdim=True)
        scale = (limit / grad.float().norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return grad * scale.to(grad.dtype), None


def bounded(fx: Tensor, bound: float | None) -> Tensor:
    """f(x) as the latent term sees it: its gradient capped at ``bound`` times the marginal's (None: as is)."""
    return fx if bound is None else _BoundedGrad.apply(fx, float(bound))


def compositional_energy(model: CLEL, x: Tensor, latents: Tensor, weights: Sequence[float] | Tensor,
                         guidance: float | Tensor, bound: float | None = None) -> Tensor:
    """½‖f(x)‖² − guidance · Σₐ wₐ cos(g(f(x)), z̄ₐ) over concept latents [A, D].

    A positive weight asks for the concept (AND), a negative one pushes away from it (NOT).
    With a single concept of weight 1 this is the conditional energy E(x, z̄). ``bound`` caps the latent
    term's pull (see :func:`bounded`); the energy's value is unchanged, only its gradient.
    """
    fx = model.f(x)
    gfx = F.normalize(model.g(bounded(fx, bound)), dim=1)
    w = torch.as_tensor(weights, dtype=gfx.dtype, device=gfx.device)
    if latents.ndim != 2 or w.shape != (latents.shape[0],):
        raise ValueError(f"need latents [A, D] and one weight per concept; got {tuple(latents.shape)} and {tuple(w.shape)}")
    cos = gfx @ F.normalize(latents.to(gfx), dim=1).T  # [N, A]
    return marginal(fx) - guidance * (cos * w).sum(dim=1)


def conditional_energy(model: CLEL, x: Tensor, z_bar: Tensor, guidance: float) -> Tensor:
    """E(x, z̄) for a single concept latent z̄ (an image's, a set's or a class prototype)."""
    return joint_energy(model, x, F.normalize(z_bar, dim=-1), guidance)


@torch.no_grad()
def latent(model: CLEL, x: Tensor) -> Tensor:
    """z = h(x)/‖h(x)‖ for images in [0, 1], [N, D]. Call on the model in eval mode."""
    return F.normalize(model.h(x), dim=1)


def mean_latent(z: Tensor) -> Tensor:
    """z̄ = Σ zᵢ / ‖Σ zᵢ‖: the direction shared by a set of latents [N, D] → [D]."""
    return F.normalize(z.sum(dim=0), dim=0)


def class_prototypes(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class mean latent direction [C, D]; a class with no sample raises."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"no samples for classes {missing}")
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    return F.normalize(sums, dim=1)


def contrast_direction(z: Tensor, mask: Tensor) -> Tensor:
    """normalise(mean z of the set − mean z of the rest) [D]: what tells a concept apart, not what it shares.

    Mean directions of CelebA attributes all point at the mean face (pairwise cosines 0.95-0.998), so asking for
    "Smiling" by its mean asks for nearly the same as "Male"; the contrast removes that shared part.
    """
    mask = mask.bool()
    if bool(mask.all()) or not bool(mask.any()):
        raise ValueError("a contrast needs images with and without the concept")
    return F.normalize(z[mask].mean(0) - z[~mask].mean(0), dim=0)


def class_contrasts(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class contrast directions [C, D]: normalise(mean z of class c − mean z of all images)."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"no samples for classes {torch.nonzero(counts == 0).flatten().tolist()}")
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    return F.normalize(sums / counts[:, None].to(z.dtype) - z.mean(0), dim=1)


@torch.no_grad()
def ood_scores(model: CLEL, x: Tensor, beta: float = 0.1, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(s(x), E(x)) from one pass of f: the OOD score of eq. 5 and the marginal energy it refines.

    ``z``: the latents h(x)/‖h(x)‖ [N, D] when they are already known (a stored set's, through
    :func:`clel.concepts.encode_images`: the frozen encoder's come from its feature cache); else h runs on x.
    """
    fx = model.f(x)
    e = marginal(fx)
    z = latent(model, x) if z is None else z.to(fx)
    return e - beta * latent_cosine(model, fx, z), e


def ood_score(model: CLEL, x: Tensor, beta: float = 0.1, z: Tensor | None = None) -> Tensor:
    """s(x) = ½‖f(x)‖² − β cos(g(f(x)), h(x)/‖h(x)‖) (eq. 5); higher means more out-of-distribution.

    The reference evaluates it on the EMA model in eval mode, β = 0.1, x unaugmented.
    """
    return ood_scores(model, x, beta, z)[0]
