"""Stochastic-gradient Langevin dynamics and the replay buffer it starts from.

    x ← clamp(x − step_size · clamp(∇ₓE(x), −c, c) + noise · ε, 0, 1),   ε ~ N(0, I)

SPEC's constants: 60 steps, step size 100, noise 0.001, c = 100. The step size
and the noise are decoupled on purpose (as in the reference), so the chain is a
noisy gradient descent rather than an exact Langevin sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .config import CLELConfig as _SPEC  # SPEC's constants are the config's defaults

EnergyFn = Callable[[Tensor], Tensor]


@dataclass
class SGLDStep:
    """One step of a chain: ``x`` after the update, ``energy`` [N] of the x it started from."""

    step: int
    x: Tensor
    energy: Tensor


def langevin_step(energy_fn: EnergyFn, x: Tensor, step_size: float, noise: float, grad_clip: float | None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One update of ``x`` (a leaf that requires grad); returns (new x, energy [N] at x)."""
    with torch.enable_grad():
        e = energy_fn(x)
        (grad,) = torch.autograd.grad(e.sum(), x)
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return (x.detach() - step_size * grad + noise * eps).clamp_(0.0, 1.0), e.detach()


def sgld_chain(energy_fn: EnergyFn, x: Tensor, steps: int = _SPEC.sgld_steps, step_size: float = _SPEC.sgld_step_size,
               noise: float = _SPEC.sgld_noise, grad_clip: float | None = _SPEC.sgld_grad_clip,
               generator: torch.Generator | None = None) -> Iterator[SGLDStep]:
    """Run SGLD from ``x`` (pixels in [0, 1]) and yield every step.

    ``energy_fn`` maps [N, ...] images to [N] energies; its gradient with respect
    to the images drives the chain. Parameters receive no gradient. The yielded
    tensors are detached; a consumer (live demo, FID sampler) may stop early.
    """
    x = x.detach().clone()
    for step in range(steps):
        # a fresh leaf: the tensor yielded last step stays as the consumer got it (no grad flag set on it)
        x, e = langevin_step(energy_fn, x.detach().requires_grad_(True), step_size, noise, grad_clip, generator)
        yield SGLDStep(step, x, e)


def sgld(energy_fn: EnergyFn, x: Tensor, steps: int = _SPEC.sgld_steps, step_size: float = _SPEC.sgld_step_size,
         noise: float = _SPEC.sgld_noise, grad_clip: float | None = _SPEC.sgld_grad_clip,
         generator: torch.Generator | None = None,
         callback: Callable[[SGLDStep], None] | None = None) -> Tensor:
    """Run the whole chain and return the final samples; ``callback`` sees every step."""
    for s in sgld_chain(energy_fn, x, steps, step_size, noise, grad_clip, generator):
        if callback is not None:
            callback(s)
        x = s.x
    return x.detach()


class ReplayBuffer:
    """Past SGLD samples to restart chains from (persistent contrastive divergence).

    Initialised with U(0, 1) noise; each drawn sample is reset to fresh noise with
    probability ``reinit_prob``. ``push`` writes finished chains back into the slots
    they came from.
    """

    def __init__(self, size: int, shape: tuple[int, ...], reinit_prob: float = _SPEC.reinit_prob,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None):
        self.reinit_prob = reinit_prob
        self.generator = generator
        self.images = torch.rand((size, *shape), device=device, generator=generator)

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Draw n samples (a copy) and the slot indices they came from."""
        dev = self.images.device
        # Distinct slots (a batch never holds one slot twice), so writing back is well defined and
        # deterministic; only a draw larger than the buffer repeats slots.
        if n <= len(self):
            idx = torch.randperm(len(self), device=dev, generator=self.generator)[:n]
        else:
            idx = torch.randint(len(self), (n,), device=dev, generator=self.generator)
        x = self.images[idx]
        reinit = torch.rand(n, device=dev, generator=self.generator) < self.reinit_prob
        fresh = torch.rand(x.shape, device=dev, generator=self.generator)
        x = torch.where(reinit.view(-1, *[1] * (x.ndim - 1)), fresh, x)
        return x, idx

    def push(self, x: Tensor, idx: Tensor) -> None:
        """Write samples back to their slots; gradients never reach the buffer."""
        self.images[idx] = x.detach().to(self.images)

    def state_dict(self) -> dict[str, Tensor]:
        return {"images": self.images}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        images = state["images"]
        if images.shape != self.images.shape:
            raise ValueError(f"replay buffer shape {tuple(images.shape)} does not match {tuple(self.images.shape)}")
        # uint8 buffers (compact checkpoints) come back as [0, 1] floats.
        self.images = (images.float() / 255 if images.dtype == torch.uint8 else images.float()).to(self.images.device)
