"""An encoder for an export that has none, distilled from the export's own EBM.

Training pulls g(f(x⁺)) toward the encoder's latent h(x⁺) (the cosine term of the joint energy), so on data the
two agree in direction (cos ≈ 0.9 late in training). An export saved without h keeps f, g and the concept latents
that the old h gave; a new h trained to point where g(f(x)) points on the training images therefore speaks the
latent language those f, g and concept latents were trained in. It gives look-alikes, interpolation and the OOD
score s(x) back to such an export, without retraining the EBM (so sampling is unchanged).

    h* = argmin_h  E_x [1 − cos(h(aug(x)), g(f(x')))],   x' = x or its mirror image, as aug flips it

The augmentation is a random horizontal flip (the target follows it) and a small random translation (the target
does not: h learns to ignore it, as the contrastive encoder learns to ignore crops).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .concepts import encode_images
from .data import to_float
from .models import CLEL, Encoder
from .runtime import model_device


@dataclass
class DistillRecipe:
    """SGD with Nesterov momentum and a cosine learning rate; the encoder's own training recipe, shorter."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 4  # random translation in pixels (reflect padding)
    seed: int = 0
    bf16: bool = False


@dataclass
class DistillReport:
    """Held-out agreement cos(h(x), g(f(x))) before and after, the loss curve and the time taken."""

    cos_before: float
    cos_after: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.inference_mode()
def ebm_latents(model: CLEL, images: Tensor, bf16: bool = False, batch_size: int = 500) -> Tensor:
    """g(f(x))/‖g(f(x))‖ of uint8 images [N, 3, H, W], [N, D] on CPU: where the energy's latent term points."""
    dev = model_device(model.f)
    out = []
    for chunk in images.split(batch_size):
        x = to_float(chunk).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out.append(F.normalize(model.g(model.f(x)).float(), dim=1).cpu())
    return torch.cat(out)


def _augment(x: Tensor, flip: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if shift:
        n, _, h, w = x.shape
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        dx, dy = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=gen))
        x = padded[:, :, dy:dy + h, dx:dx + w]
    return x


def _agreement(h: torch.nn.Module, images: Tensor, targets: Tensor, bf16: bool) -> float:
    dev = model_device(h)
    return float((encode_images(h, images, dev, bf16=bf16) * targets).sum(1).mean())


def distill_encoder(model: CLEL, images: Tensor, holdout: Tensor, recipe: DistillRecipe | None = None,
                    width: int | None = None, log=print) -> DistillReport:
    """Give ``model`` a fresh encoder (``width``: its base width, default the config's) trained to agree with
    g∘f on ``images`` (uint8); ``holdout`` images measure the agreement. f and g are not touched."""
    r = recipe or DistillRecipe()
    torch.manual_seed(r.seed)
    dev = model_device(model.f)
    if width is not None:
        model.cfg = model.cfg.replace(encoder_width=width)
    model.h = Encoder(model.cfg).to(dev, memory_format=torch.channels_last)
    targets = torch.stack([ebm_latents(model, images, r.bf16), ebm_latents(model, images.flip(3), r.bf16)])
    held = ebm_latents(model, holdout, r.bf16)
    report = DistillReport(_agreement(model.h, holdout, held, r.bf16), 0.0)
    params = [p for p in model.h.parameters()]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0}],
                          lr=r.lr, momentum=r.momentum, nesterov=True)
    steps = r.epochs * math.ceil(len(images) / r.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(r.seed)
    t0 = time.perf_counter()
    model.h.train()
    for epoch in range(r.epochs):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for idx in order.split(r.batch_size):
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = _augment(to_float(images[idx]), flip, r.shift, gen).to(dev)
            t = torch.where(flip.view(-1, 1), targets[1, idx], targets[0, idx]).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16) if r.bf16 else contextlib.nullcontext():
                z = model.h(x.contiguous(memory_format=torch.channels_last))
            loss = (1 - F.cosine_similarity(z.float(), t, dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        report.losses.append(total / len(images))
        log(f"distill: epoch {epoch + 1}/{r.epochs}, loss {report.losses[-1]:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    model.h.eval()
    report.cos_after = _agreement(model.h, holdout, held, r.bf16)
    report.seconds = time.perf_counter() - t0
    return report
