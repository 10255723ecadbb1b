"""What to sample and how: one condition, one chain, one home for both.

Every sampling mode is SGLD (``clel.sgld``) on one energy, started from uniform noise; only the energy
differs, and :meth:`Condition.energy` is the one place that maps a mode to it:

- ``unconditional``: the marginal E(x) = ½‖f(x)‖²;
- ``instance`` (look-alikes): E(x, z̄) with z̄ the normalised mean latent of one or more reference images;
- ``class`` / ``attributes``: ``compositional_energy`` over concept latents stored with the weights, a weight
  each (AND > 0, NOT < 0; Female is NOT Male where only Male is stored);
- ``interpolate``: the joint energy with a latent per sample, slerped between two images' latents.

:class:`ChainSettings` says how the chain runs (the model's training chain, the reference sampler's augmented
sweeps, or the paper's long plain chain); :func:`run_chain` yields every step, :func:`sample` the final images
and :func:`draw` keeps frames too. ``guidance`` is the sampling-time β (default: the model's training β);
:data:`DEFAULTS` holds the measured guidance and concept direction per mode.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import CLELConfig
from .data import OPPOSITE_ATTRIBUTE, with_opposites
from .energy import compositional_energy, energy, joint_energy, latent, mean_latent
from .fast import FastPath, fast_chain, prepare
from .models import CLEL
from .sgld import EnergyFn, SGLDStep

MODES = ("unconditional", "instance", "class", "attributes", "interpolate")
DIRECTIONS = ("mean", "contrast")  # the paper's mean direction z̄; z̄ of the concept minus z̄ of the rest


class SamplingError(ValueError):
    """A sampling request that cannot run (unknown concept, missing images, bad settings), said in a sentence."""


@dataclass
class ChainSettings:
    """How a chain runs (defaults: the training chain of SPEC, one sweep from uniform noise).

    ``sweeps`` runs the chain that many times, each sweep continuing from the previous one's images. With
    ``augment`` every sweep starts with the strong augmentation, and with ``reinit_prob`` the training reset,
    which is what a chain drawn from the training replay buffer goes through; 10 such sweeps are the reference
    implementation's sampler (:meth:`reference`). Its crops upsample the images, which clears the pixel noise
    that a plain chain from uniform noise keeps for hundreds of steps.
    """

    steps: int = CLELConfig.sgld_steps
    step_size: float = CLELConfig.sgld_step_size
    noise: float = CLELConfig.sgld_noise
    grad_clip: float | None = CLELConfig.sgld_grad_clip
    sweeps: int = 1
    augment: bool = False
    reinit_prob: float = 0.0
    # Strong guidance turns chains adversarial (saturated "rainbow" pixels); two measured remedies:
    guidance_ramp: float = 0.0  # guidance grows linearly from 0 over this fraction of all steps (0: constant)
    guidance_bound: float | None = None  # the latent term pulls at most this many times the marginal (None: free)

    @property
    def total_steps(self) -> int:
        return self.sweeps * self.steps

    @property
    def plain(self) -> bool:
        """One chain from the start, without augmentation or resets."""
        return self.sweeps == 1 and not self.augment and not self.reinit_prob

    @classmethod
    def from_model(cls, model: CLEL, **overrides) -> "ChainSettings":
        """The model's training chain; ``overrides`` that are not None replace fields."""
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

    @classmethod
    def paper(cls, model: CLEL, **overrides) -> "ChainSettings":
        """The paper's protocol: one plain chain of 10x the training steps from uniform noise (600 for Base)."""
        return cls.from_model(model, **{"sweeps": 1, "steps": 10 * model.cfg.sgld_steps, "augment": False,
                                        "reinit_prob": 0.0, **overrides})


@dataclass(frozen=True)
class SamplingDefaults:
    """What a conditional chain asks for unless told otherwise: guidance per mode and chain, and the direction.

    ``SAMPLING["measured"]`` is chosen by ``measure/sweep_sampling.py`` on the bundled weights (the table and the
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
    ramp: float = 0.0  # ChainSettings.guidance_ramp of conditional chains
    # ChainSettings.guidance_bound per chain (None: no bound)
    bounds: dict[str, float | None] = field(default_factory=lambda: {"reference": None, "plain": None})

    def bound(self, chain: str = "reference") -> float | None:
        """The bound on the latent term's pull on a chain (reference or plain), or None."""
        if chain not in ("reference", "plain"):
            raise ValueError(f"unknown chain {chain!r}; use reference or plain")
        return self.bounds.get(chain)

    def controls(self, chain: str = "reference", ramp: float | None = None,
                 bound: float | None = None) -> dict[str, Any]:
        """ChainSettings fields for the guidance ramp and bound on ``chain``; arguments that are not None win
        (bound 0: none)."""
        bound = self.bound(chain) if bound is None else bound
        return {"guidance_ramp": self.ramp if ramp is None else ramp, "guidance_bound": bound or None}

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
    # docs/evaluation.md, "The sampling sweep" and "Guidance that does not blow up" (bundled weights); values no
    # cell measured keep 1.0. The bound keeps strong guidance from saturating pixels on the augmented sweeps; one
    # plain chain from noise needs the full pull (bounded, it judges worse); the ramp did not help.
    "measured": SamplingDefaults(
        reference={"instance": 0.1, "class": 0.3, "attributes": 0.3, "interpolate": 0.1},
        plain={"instance": 1.0, "class": 1.0, "attributes": 1.0, "interpolate": 1.0},
        directions={"class": "contrast", "attributes": "mean"}, bounds={"reference": 10.0, "plain": None}),
    "paper": SamplingDefaults(_every(0.01), _every(0.01), {"class": "mean", "attributes": "mean"}),  # β = 0.01
}
DEFAULTS = SAMPLING["measured"]


def default_direction(extras: Mapping[str, Any], mode: str, defaults: SamplingDefaults | None = None) -> str:
    """The default concept direction of ``mode`` (class or attributes) for these weights: ``defaults``'s
    (:data:`DEFAULTS`), or the paper's mean direction for an export that stores no contrasts."""
    direction = (defaults or DEFAULTS).direction(mode)
    key = "class_contrasts" if mode == "class" else "attribute_contrasts"
    return "mean" if direction == "contrast" and extras.get(key) is None else direction


# ----------------------------------------------------------------------------------------------------------------
# Concepts stored with the weights
# ----------------------------------------------------------------------------------------------------------------

def parse_term(spec: str, sign: float = 1.0) -> tuple[str, float]:
    """``"Smiling"`` → ("Smiling", sign); ``"Male:0.5"`` → ("Male", 0.5 · sign). Weights must be positive."""
    name, _, w = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise SamplingError(f"empty attribute in {spec!r}; use NAME or NAME:WEIGHT")
    try:
        weight = float(w) if w.strip() else 1.0
    except ValueError:
        raise SamplingError(f"{spec!r}: weight {w!r} is not a number; use NAME or NAME:WEIGHT") from None
    if not math.isfinite(weight) or weight <= 0:
        raise SamplingError(f"{spec!r}: the weight must be a positive number (use NOT for the opposite)")
    return name, sign * weight


def _concept_key(kind: str, direction: str, extras: Mapping[str, Any]) -> str:
    if direction not in DIRECTIONS:
        raise SamplingError(f"unknown concept direction {direction!r}; use {' or '.join(DIRECTIONS)}")
    key = {"mean": f"{kind}_prototypes" if kind == "class" else f"{kind}_latents",
           "contrast": f"{kind}_contrasts"}[direction]
    if direction == "contrast" and extras.get(key) is None and extras.get(_concept_key(kind, "mean", {})) is not None:
        raise SamplingError(f"these weights ({extras.get('path', '?')}) store no {kind} contrast directions (an "
                            f"export from before they existed); use the mean direction, or re-export them "
                            f"with scripts/bundle_weights.py")
    return key


def class_latents(extras: Mapping[str, Any], names: Sequence[str], direction: str = "mean") -> Tensor:
    """Concept latents [len(names), D] of the named classes: their prototypes (``mean``) or ``contrast``
    directions; unknown names raise, listing the known ones."""
    protos, known = extras.get(_concept_key("class", direction, extras)), list(extras.get("classes") or [])
    if protos is None:
        raise SamplingError(f"these weights ({extras.get('path', '?')}) carry no class prototypes; export them "
                            f"with extras={{'class_prototypes': ...}} (scripts/train.py does for labelled data)")
    if not known:
        known = [str(i) for i in range(protos.shape[0])]
    rows = []
    for name in names:
        if name in known:
            rows.append(known.index(name))
        elif name.isdigit() and int(name) < len(known):
            rows.append(int(name))
        else:
            raise SamplingError(f"unknown class {name!r}; these weights know: {', '.join(known)}")
    return protos[rows]


def attribute_latents(extras: Mapping[str, Any], terms: Sequence[tuple[str, float]],
                      direction: str = "mean") -> tuple[Tensor, list[float]]:
    """Attribute latents [A, D] and signed weights for terms like [("Young", 1), ("Male", -0.5)].

    A positive weight is AND, a negative one NOT. "Female" falls back to the "Male" latent with the opposite
    sign (and vice versa) when the weights store only one of the two. Unknown names raise, listing the known.
    ``direction``: the attributes' mean latents (the paper's) or their ``contrast`` directions.
    """
    latents = extras.get(_concept_key("attribute", direction, extras))
    known = list(extras.get("attributes") or [])
    if latents is None or not known:
        raise SamplingError(f"these weights ({extras.get('path', '?')}) carry no attribute latents; use a CelebA "
                            f"export (extras={{'attribute_latents': ...}})")
    if not terms:
        raise SamplingError("no attribute given; use --and NAME and/or --not NAME")
    rows, weights = [], []
    for name, w in terms:
        if name in known:
            rows.append(known.index(name))
            weights.append(float(w))
        elif OPPOSITE_ATTRIBUTE.get(name) in known:
            rows.append(known.index(OPPOSITE_ATTRIBUTE[name]))
            weights.append(-float(w))
        else:
            extra = with_opposites(known)[len(known):]
            raise SamplingError(f"unknown attribute {name!r}; these weights know: {', '.join(known + extra)}")
    return latents[rows], weights


def term_label(terms: Sequence[tuple[str, float]]) -> str:
    """"AND Young AND Smiling:2 NOT Male" for [("Young", 1), ("Smiling", 2), ("Male", -1)]."""
    parts = []
    for name, w in terms:
        op = "AND" if w > 0 else "NOT"
        parts.append(f"{op} {name}" + ("" if abs(w) == 1 else f":{abs(w):g}"))
    return " ".join(parts) if parts else "unconditional"


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


def _device(model: CLEL) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------------
# What to sample: a condition, and the energy it means
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """What a chain is asked for; :meth:`energy` turns it into the energy SGLD descends.

    Build one with a constructor: :meth:`unconditional`, :meth:`instance` (reference images),
    :meth:`classes` / :meth:`attributes` (concepts stored with the weights), :meth:`concepts` (any latents),
    :meth:`interpolate` (two images). ``label`` names the energy for plots, e.g. "E(x, z̄ cat)".
    """

    mode: str = "unconditional"
    latents: Tensor | None = None  # [A, D] concept latents shared by the batch
    weights: tuple[float, ...] = ()
    images: Tensor | None = None  # instance: the reference images; interpolate: image A
    images_b: Tensor | None = None  # interpolate: image B
    label: str = "E(x)"

    def __post_init__(self):
        if self.mode not in MODES:
            raise SamplingError(f"unknown sampling mode {self.mode!r}; use {', '.join(MODES)}")

    @classmethod
    def unconditional(cls) -> "Condition":
        return cls()

    @classmethod
    def instance(cls, images: Tensor) -> "Condition":
        """Look-alikes of one or more reference images [N, 3, H, W] in [0, 1] (any size: resized)."""
        if images is None or images.ndim != 4 or images.shape[0] < 1 or images.shape[1] != 3:
            raise SamplingError("instance-conditional sampling needs reference images [N, 3, H, W]")
        return cls("instance", images=images, label="E(x, z̄)")

    @classmethod
    def concepts(cls, latents: Tensor, weights: Sequence[float] | None = None, mode: str = "attributes",
                 label: str = "E(x, z̄)") -> "Condition":
        """Concept latents [A, D] (or [D]) with a weight each (default 1): the compositional energy."""
        latents = latents.reshape(-1, latents.shape[-1])
        w = (1.0,) * latents.shape[0] if weights is None else tuple(float(v) for v in weights)
        if len(w) != latents.shape[0]:
            raise SamplingError(f"{latents.shape[0]} concept latents but {len(w)} weights")
        return cls(mode, latents=latents, weights=w, label=label)

    @classmethod
    def classes(cls, extras: Mapping[str, Any], names: Sequence[str], direction: str | None = None) -> "Condition":
        """The named classes of an export (their prototypes or contrast directions, weight 1 each)."""
        direction = direction or default_direction(extras, "class")
        return cls.concepts(class_latents(extras, names, direction), mode="class",
                            label=f"E(x, z̄ {' + '.join(map(str, names))})")

    @classmethod
    def attributes(cls, extras: Mapping[str, Any], terms: Sequence[tuple[str, float]],
                   direction: str | None = None) -> "Condition":
        """AND / NOT attribute terms of an export, e.g. [("Young", 1), ("Female", 1), ("Smiling", -1)]."""
        direction = direction or default_direction(extras, "attributes")
        latents, weights = attribute_latents(extras, terms, direction)
        return cls.concepts(latents, weights, mode="attributes", label=f"E(x, {term_label(terms)})")

    @classmethod
    def interpolate(cls, image_a: Tensor, image_b: Tensor) -> "Condition":
        """Samples whose latents walk the sphere from image A's to image B's (slerp), one latent per sample."""
        if image_a is None or image_b is None:
            raise SamplingError("interpolation needs two images")
        return cls("interpolate", images=image_a, images_b=image_b, label="E(x, z_t)")

    def energy(self, model: CLEL, n: int, guidance: float | Tensor | None = None,
               bound: float | None = None) -> EnergyFn:
        """The energy of this condition for a batch of ``n`` samples.

        ``guidance`` is the sampling-time β (a 0-d tensor is read at every call, so a chain can change it in
        place); ``bound`` caps the latent term's gradient at that many times the marginal's
        (``clel.energy.bounded``).
        """
        beta = model.cfg.beta if guidance is None else guidance
        dev = _device(model)
        if self.mode == "unconditional":
            return lambda x: energy(model, x)
        if self.mode == "interpolate":
            z = slerp(image_latent(model, self.images.to(dev)), image_latent(model, self.images_b.to(dev)),
                      torch.linspace(0, 1, n, device=dev))
            return lambda x: joint_energy(model, x, z, beta, bound)
        if self.mode == "instance":
            latents, weights = image_latent(model, self.images.to(dev)).unsqueeze(0), [1.0]
        else:
            latents, weights = self.latents.to(dev), list(self.weights)
        return lambda x: compositional_energy(model, x, latents, weights, beta, bound)


# ----------------------------------------------------------------------------------------------------------------
# How: the chain
# ----------------------------------------------------------------------------------------------------------------

def run_chain(model: CLEL, n: int, condition: Condition | None = None, settings: ChainSettings | None = None,
              guidance: float | None = None, generator: torch.Generator | None = None, x0: Tensor | None = None,
              fast: FastPath | None = None) -> Iterator[SGLDStep]:
    """Yield every SGLD step of n samples of ``condition`` (default: unconditional) from uniform noise (or ``x0``).

    Runs the model in eval mode (spectral-norm vectors frozen), so sampling never changes the weights it samples
    from. ``fast`` defaults to every fast-path switch that helps on the model's device (``FastPath.best``);
    ``FastPath.plain()`` turns it off. Steps are numbered across sweeps (0 … sweeps·steps − 1).
    """
    model.eval()
    st = settings or ChainSettings.from_model(model)
    if st.sweeps < 1 or st.steps < 1:
        raise SamplingError(f"sweeps and steps must be at least 1, got {st.sweeps} and {st.steps}")
    if st.guidance_ramp < 0 or (st.guidance_bound is not None and st.guidance_bound <= 0):
        raise SamplingError(f"guidance_ramp must be >= 0 and guidance_bound > 0, got {st.guidance_ramp} and "
                            f"{st.guidance_bound}")
    x = uniform_noise(model, n, generator) if x0 is None else x0
    beta = model.cfg.beta if guidance is None else float(guidance)
    ramp = guidance_ramp(beta, st, x.device)
    fn = (condition or Condition()).energy(model, x.shape[0], beta if ramp is None else ramp[0], st.guidance_bound)
    fast = fast or FastPath.best(x.device)
    if st.plain:
        steps = fast_chain(model, fn, x, st.steps, st.step_size, st.noise, st.grad_clip, fast, generator)
    else:
        steps = _sweeps(model, fn, x, st, fast, generator)
    return steps if ramp is None else _ramped(steps, *ramp)


def guidance_ramp(beta: float, st: ChainSettings, device: torch.device | str = "cpu",
                  ) -> tuple[Tensor, list[float]] | None:
    """The guidance of every step when it ramps (``st.guidance_ramp`` > 0): a 0-d tensor the energy reads,
    set to step 0's value, and the values of all steps, β·min(1, (k + 1)/R) with R = ramp · total steps.
    The tensor lives on the chain's device, so a captured CUDA graph reads its new value at every replay."""
    if st.guidance_ramp <= 0:
        return None
    ramp_steps = max(1.0, st.guidance_ramp * st.total_steps)
    values = [beta * min(1.0, (k + 1) / ramp_steps) for k in range(st.total_steps)]
    return torch.tensor(values[0], device=device), values


def _ramped(steps: Iterator[SGLDStep], current: Tensor, values: list[float]) -> Iterator[SGLDStep]:
    """Pass the chain's steps through, setting the guidance of the next step in place after each."""
    for s in steps:
        yield s
        if s.step + 1 < len(values):
            current.fill_(values[s.step + 1])


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


def sample(model: CLEL, n: int, condition: Condition | None = None, **kwargs) -> Tensor:
    """Final samples of :func:`run_chain` [n, 3, H, W] in [0, 1]."""
    x = None
    for s in run_chain(model, n, condition, **kwargs):
        x = s.x
    return x


@dataclass
class Draw:
    """Final samples [N, 3, H, W] in [0, 1] (CPU), kept frames (step 0 = the start) and the seconds taken."""

    x: Tensor
    frames: list[Tensor] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0


def draw(model: CLEL, n: int, condition: Condition | None = None, settings: ChainSettings | None = None,
         seed: int = 0, guidance: float | None = None, fast: FastPath | None = None, frame_every: int = 0,
         x0: Tensor | None = None) -> Draw:
    """Run a seeded chain of ``n`` samples of ``condition`` and keep what a report or a GIF needs.

    ``seed`` fixes the start and the noise, and seeds the global generators too (kornia's crops, CUDA-graph
    noise). ``frame_every`` > 0 keeps the start and every k-th step (and the last) as CPU copies.
    """
    model.eval()
    dev = _device(model)
    st = settings or ChainSettings.from_model(model)
    fast = fast or FastPath.best(dev)
    prepare(model.f, fast)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = uniform_noise(model, n, gen) if x0 is None else x0.to(dev)
    frames, steps = ([x.detach().cpu().clone()], [0]) if frame_every > 0 else ([], [])
    t0 = time.perf_counter()
    last = x
    for step in run_chain(model, n, condition, settings=st, guidance=guidance, generator=gen, x0=x, fast=fast):
        last, done = step.x, step.step + 1
        if frame_every > 0 and (done % frame_every == 0 or done == st.total_steps):
            frames.append(last.detach().float().cpu().clone())
            steps.append(done)
    out = last.detach().float().cpu().clone().contiguous()
    return Draw(out, frames, steps, time.perf_counter() - t0)
