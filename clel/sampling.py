"""Sampling from a trained CLEL model: unconditional, conditional, compositional, interpolation.

Every mode is SGLD (``clel.sgld.sgld_chain``) on one energy, started from uniform
noise (one plain chain, or the reference sampler's augmented sweeps, see
``ChainSettings``); only the energy differs:

- unconditional: the marginal E(x) = ½‖f(x)‖²;
- instance- or class-conditional, attributes: ``compositional_energy`` over one
  or more concept latents z̄ with a weight each (AND > 0, NOT < 0);
- interpolation: the joint energy with a different z per sample, z slerped
  between two images' latents.

``guidance`` is the sampling-time β; it defaults to the model's training β.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .energy import compositional_energy, energy, joint_energy, latent, mean_latent
from .models import CLEL
from .fast import FastPath, fast_chain
from .sgld import EnergyFn, SGLDStep


@dataclass
class ChainSettings:
    """SGLD knobs exposed to users (defaults: the model's training chain, one sweep from uniform noise).

    ``sweeps`` runs the chain that many times, each sweep continuing from the previous one's images. With
    ``augment`` every sweep starts with the strong augmentation, and with ``reinit_prob`` the training reset,
    which is what a chain drawn from the training replay buffer goes through; 10 such sweeps are the reference
    implementation's sampler (``reference``). Its crops upsample the images, which clears the pixel noise that
    a plain chain from uniform noise keeps for hundreds of steps.
    """

    steps: int = 60
    step_size: float = 100.0
    noise: float = 0.001
    grad_clip: float | None = 100.0
    sweeps: int = 1
    augment: bool = False
    reinit_prob: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.sweeps * self.steps

    @classmethod
    def from_model(cls, model: CLEL, **overrides) -> "ChainSettings":
        c = model.cfg
        base = cls(c.sgld_steps, c.sgld_step_size, c.sgld_noise, c.sgld_grad_clip)
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        return base

    @classmethod
    def reference(cls, model: CLEL, sweeps: int = 10, **overrides) -> "ChainSettings":
        """The reference sampler: ``sweeps`` training chains, each after the augmentation and the reset."""
        return cls.from_model(model, **{"sweeps": sweeps, "augment": True, "reinit_prob": model.cfg.reinit_prob,
                                        **overrides})


@dataclass(frozen=True)
class SamplingDefaults:
    """What a conditional chain asks for unless told otherwise: guidance per mode and chain, and the direction.

    ``SAMPLING["measured"]`` is chosen by ``scripts/sweep_sampling.py`` on the bundled weights (the table and the
    command are in docs/evaluation.md); ``SAMPLING["paper"]`` samples E(x, z̄) with the training β and the mean
    direction. The demo, ``scripts/sample.py`` and ``scripts/evaluate.py`` all read ``DEFAULTS``.
    ``reference``: guidance for the augmented sweeps (the demo's chain); ``plain``: for one chain from noise.
    """

    reference: dict[str, float] = field(default_factory=lambda: {"instance": 1.0, "class": 1.0, "attributes": 1.0,
                                                                 "interpolate": 1.0})
    plain: dict[str, float] = field(default_factory=lambda: {"instance": 1.0, "class": 1.0, "attributes": 1.0,
                                                             "interpolate": 1.0})
    # per mode: "mean" (z̄, the paper's) or "contrast" (z̄ of the concept minus z̄ of the rest)
    directions: dict[str, str] = field(default_factory=lambda: {"class": "mean", "attributes": "mean"})

    def direction(self, mode: str) -> str:
        """Concept direction of the class or attributes mode (the other modes use an image's latent)."""
        return self.directions.get(mode, "mean")

    def guidance(self, mode: str, chain: str = "reference") -> float:
        """Guidance of a sampling mode (instance, class, attributes, interpolate; unconditional: 0) on a chain."""
        if chain not in ("reference", "plain"):
            raise ValueError(f"unknown chain {chain!r}; use reference or plain")
        table = {**(self.reference if chain == "reference" else self.plain), "unconditional": 0.0}
        if mode not in table:
            raise ValueError(f"unknown sampling mode {mode!r}; use one of {', '.join(table)}")
        return table[mode]


def _every(v: float) -> dict[str, float]:
    return {"instance": v, "class": v, "attributes": v, "interpolate": v}


SAMPLING: dict[str, SamplingDefaults] = {
    # docs/evaluation.md, "The sampling sweep" (bundled weights of run 5); values no cell measured keep 1.0
    "measured": SamplingDefaults(
        reference={"instance": 0.1, "class": 0.3, "attributes": 1.0, "interpolate": 0.1},
        plain={"instance": 1.0, "class": 1.0, "attributes": 1.0, "interpolate": 1.0},
        directions={"class": "contrast", "attributes": "mean"}),
    "paper": SamplingDefaults(_every(0.01), _every(0.01), {"class": "mean", "attributes": "mean"}),  # β = 0.01
}
DEFAULTS = SAMPLING["measured"]


def uniform_noise(model: CLEL, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n starting images U(0, 1) at the model's resolution, on the model's device."""
    s = model.cfg.image_size
    device = next(model.parameters()).device
    return torch.rand(n, 3, s, s, generator=generator, device=device)


def image_latent(model: CLEL, images: Tensor) -> Tensor:
    """z̄ of one or many reference images [N, 3, H, W] in [0, 1] → [D]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    s = model.cfg.image_size
    if images.shape[-2:] != (s, s):
        images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return mean_latent(latent(model, images))


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between unit vectors z0, z1 [D] at times t [T] → [T, D]."""
    z0, z1 = F.normalize(z0, dim=0), F.normalize(z1, dim=0)
    omega = torch.arccos((z0 @ z1).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.to(z0).unsqueeze(1)
    out = (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
    return F.normalize(out, dim=1)


def energy_fn(model: CLEL, latents: Tensor | None = None, weights: Sequence[float] | None = None,
              guidance: float | None = None) -> EnergyFn:
    """The energy a sampling mode runs SGLD on.

    No latents: the marginal. ``latents`` [A, D], shared by the whole batch: the
    compositional energy with ``weights`` (default all 1). For a latent per sample
    use ``per_sample_energy_fn``.
    """
    beta = model.cfg.beta if guidance is None else guidance
    if latents is None:
        return lambda x: energy(model, x)
    latents = latents.reshape(-1, latents.shape[-1])
    w = [1.0] * latents.shape[0] if weights is None else list(weights)
    return lambda x: compositional_energy(model, x, latents, w, beta)


def per_sample_energy_fn(model: CLEL, z: Tensor, guidance: float | None = None) -> EnergyFn:
    """Joint energy with its own latent for each sample of the batch (z [N, D])."""
    beta = model.cfg.beta if guidance is None else guidance
    return lambda x: joint_energy(model, x, z, beta)


def sample_chain(model: CLEL, n: int, latents: Tensor | None = None, weights: Sequence[float] | None = None,
                 guidance: float | None = None, settings: ChainSettings | None = None,
                 generator: torch.Generator | None = None, x0: Tensor | None = None,
                 fn: EnergyFn | None = None, fast: FastPath | None = None) -> Iterator[SGLDStep]:
    """Yield every SGLD step of n samples from uniform noise (or ``x0``).

    Runs the model in eval mode (spectral-norm vectors frozen), so sampling never
    changes the weights it samples from. ``fast`` defaults to every fast-path switch
    that helps on the model's device (``FastPath.best``); ``FastPath.plain()`` turns it off.
    """
    model.eval()
    st = settings or ChainSettings.from_model(model)
    if st.sweeps < 1 or st.steps < 1:
        raise ValueError(f"sweeps and steps must be at least 1, got {st.sweeps} and {st.steps}")
    x = uniform_noise(model, n, generator) if x0 is None else x0
    fn = fn or energy_fn(model, latents, weights, guidance)
    fast = fast or FastPath.best(x.device)
    if st.sweeps == 1 and not st.augment and not st.reinit_prob:
        return fast_chain(model, fn, x, st.steps, st.step_size, st.noise, st.grad_clip, fast, generator)
    return _sweeps(model, fn, x, st, fast, generator)


def _sweeps(model: CLEL, fn: EnergyFn, x: Tensor, st: ChainSettings, fast: FastPath,
            generator: torch.Generator | None) -> Iterator[SGLDStep]:
    """``st.sweeps`` chains in a row; steps are numbered across sweeps (0 … sweeps·steps − 1)."""
    from .augment import StrongAugment  # kornia: only needed by this sampler

    aug = StrongAugment(model.cfg.image_size).to(x.device) if st.augment else None
    # kornia draws its crops from the global RNG: a private stream seeded from the chain's generator makes a
    # seed reproduce the same samples, and leaves the caller's global RNG as it was.
    aug_seed = None
    if aug is not None and generator is not None:
        aug_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
    for sweep in range(st.sweeps):
        if aug is not None and aug_seed is not None:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(aug_seed + sweep)
                x = aug(x)
        elif aug is not None:  # no generator: the global RNG, like any unseeded torch call
            x = aug(x)
        if st.reinit_prob > 0:
            reset = torch.rand(x.shape[0], device=x.device, generator=generator) < st.reinit_prob
            x = torch.where(reset.view(-1, 1, 1, 1), torch.rand(x.shape, device=x.device, generator=generator), x)
        for s in fast_chain(model, fn, x, st.steps, st.step_size, st.noise, st.grad_clip, fast, generator):
            x = s.x
            yield SGLDStep(sweep * st.steps + s.step, s.x, s.energy)


def sample(model: CLEL, n: int, **kwargs) -> Tensor:
    """Final samples of ``sample_chain`` [n, 3, H, W] in [0, 1]."""
    x = None
    for s in sample_chain(model, n, **kwargs):
        x = s.x
    if x is None:
        raise ValueError("steps must be at least 1")
    return x


def interpolation_chain(model: CLEL, image_a: Tensor, image_b: Tensor, n: int, guidance: float | None = None,
                        settings: ChainSettings | None = None, generator: torch.Generator | None = None,
                        ) -> Iterator[SGLDStep]:
    """n samples whose latents walk the sphere from image_a's to image_b's (slerp)."""
    z = slerp(image_latent(model, image_a), image_latent(model, image_b), torch.linspace(0, 1, n))
    return sample_chain(model, n, settings=settings, generator=generator,
                        fn=per_sample_energy_fn(model, z, guidance))
