"""What to sample and how: one condition, one chain, one home for both.

Every sampling mode is SGLD (``clel.sgld``) on one energy, started from uniform noise or from the model's own
long-run chains (its replay buffer, shipped with its weights: :func:`chain_start`); only the energy differs, and :meth:`Condition.energy` is the one place that maps a mode to it:

- ``unconditional``: the marginal E(x) = ½‖f(x)‖²;
- ``instance`` (look-alikes): E(x, z̄) with z̄ the normalised mean latent of one or more reference images;
- ``class`` / ``attributes``: ``compositional_energy`` over concept latents stored with the weights, a weight
  each (AND > 0, NOT < 0; Female is NOT Male where only Male is stored);
- ``interpolate``: the joint energy with a latent per sample, slerped between two images' latents.

:class:`ChainSettings` says how the chain runs (the model's training chain, the reference sampler's augmented
sweeps, or the paper's long plain chain, or :meth:`ChainSettings.measured`: the defaults per mode, from the table
:data:`SAMPLING`) and with which ``guidance``, the sampling-time β (default: the model's training β);
:func:`run_chain` yields every step, :func:`sample` the final images and :func:`draw` keeps frames too.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import CLELConfig
from .data import OPPOSITE_ATTRIBUTE, to_float, with_opposites
from .energy import compositional_energy, energy, joint_energy, latent, mean_latent
from .fast import FastPath, fast_chain, prepare
from .models import CLEL
from .runtime import model_device
from .sgld import EnergyFn, SGLDStep

MODES = ("unconditional", "instance", "class", "attributes", "interpolate")
DIRECTIONS = ("mean", "contrast")  # the paper's mean direction z̄; z̄ of the concept minus z̄ of the rest
# Where a chain starts: uniform noise (the paper's), or images of the model's replay buffer shipped with its weights
# (its own long-run chains, which training has continued for thousands of steps)
STARTS = {"noise": "uniform noise", "buffer": "continue the model's own long-run chains (its replay buffer)"}


class SamplingError(ValueError):
    """A sampling request that cannot run (unknown concept, missing images, bad settings), said in a sentence."""


def setting(default: Any, help: str, label: str | None = None, **limits: Any) -> Any:
    """A chain setting: its default, its help, and for the controls that offer it a ``label`` and ``limits``
    (``min``/``max``: what a request may ask; ``slider``: (low, high, step) of the demo's slider; ``info``)."""
    return field(default=default, metadata={"help": help, "label": label, **limits})


@dataclass
class ChainSettings:
    """How a chain runs (defaults: the training chain of SPEC, one sweep from uniform noise).

    ``sweeps`` runs the chain that many times, each sweep continuing from the previous one's images. With
    ``augment`` every sweep starts with the strong augmentation, and with ``reinit_prob`` the training reset,
    which is what a chain drawn from the training replay buffer goes through; 10 such sweeps are the reference
    implementation's sampler (:meth:`reference`). Its crops upsample the images, which clears the pixel noise
    that a plain chain from uniform noise keeps for hundreds of steps.

    Each field's metadata is its help and limits: the demo's controls and server clamp and the commands' options
    are made from them, so a new setting is added here only. Constructors: :meth:`from_model` (the training
    chain), :meth:`reference`, :meth:`paper` and :meth:`measured` (the defaults per sampling mode).
    """

    steps: int = setting(CLELConfig.sgld_steps, "SGLD steps per sweep (default: 10 x the model's training steps "
                         "for one plain chain, the model's per sweep of several)", "SGLD steps (per sweep)", min=1,
                         elem_id=True)  # no max: a request's budget of steps caps it
    sweeps: int = setting(1, "the reference sampler: this many sweeps, each after the training augmentation (random "
                          "crop, flip, colour jitter) and reset (the FID protocol: 10; 1: one plain chain)",
                          "Sweeps", min=1, max=20, elem_id=True,
                          info="each after a random crop, flip and colour jitter, as in training's replay buffer "
                               "(the reference sampler: 10)")
    step_size: float = setting(CLELConfig.sgld_step_size, "SGLD step size (default: the model's, 100)", "Step size",
                               min=0.0, max=1000.0, slider=(0, 300, 1), info="training: {default:g}")
    noise: float = setting(CLELConfig.sgld_noise, "SGLD noise scale (default: the model's, 0.001)", "Noise",
                           min=0.0, max=1.0, slider=(0, 0.05, 0.0005), info="training: {default:g}")
    # the sampling-time β of the latent term (None: the model's training β, the paper's)
    guidance: float | None = setting(None, "sampling-time β multiplying the latent term (conditional modes; default: "
                                     "--sampling's for the mode)", "Guidance β", min=-100.0, max=100.0,
                                     slider=(0, 20, 0.01),
                                     info="weight of the latent term (training β = {training_beta:g}); the default "
                                          "is the value that judged best on these weights (docs/evaluation.md)",
                                     bounded="; with sweeps the term never pulls harder than {guidance_bound:g}x "
                                             "the marginal, so large values do not saturate")
    grad_clip: float | None = setting(CLELConfig.sgld_grad_clip, "clamp gradients to ±this (default: the model's, "
                                      "100)")
    augment: bool = setting(False, "the strong augmentation before every sweep")
    reinit_prob: float = setting(0.0, "the training reset before every sweep: each image restarts from noise with "
                                 "this probability")
    # Strong guidance turns chains adversarial (saturated "rainbow" pixels); two measured remedies:
    guidance_ramp: float = setting(0.0, "ramp the guidance up from 0 over this fraction of the chain (0: constant; "
                                   "default: --sampling's)")
    guidance_bound: float | None = setting(None, "cap the latent term's pull at this many times the marginal's, "
                                           "per sample (0: no cap; default: --sampling's)")
    start: str = setting("noise", "where the chain starts: noise (uniform noise) or buffer (images of the replay "
                         "buffer shipped with the weights: the model's own long-run chains, continued)",
                         "Start from", choices=tuple(STARTS), labels=STARTS, elem_id=True)
    direction: str | None = setting(None, "class / attribute latents: the paper's mean direction z̄, or the contrast "
                                    "z̄(concept) − z̄(rest), which removes what all concepts share (default: "
                                    "--sampling's for the weights)", choices=DIRECTIONS)

    @property
    def total_steps(self) -> int:
        return self.sweeps * self.steps

    @property
    def plain(self) -> bool:
        """One chain from the start, without augmentation or resets."""
        return self.sweeps == 1 and not self.augment and not self.reinit_prob

    @classmethod
    def from_model(cls, model: CLEL | None, **overrides) -> "ChainSettings":
        """The model's training chain (None: SPEC's); ``overrides`` that are not None replace fields."""
        c = model.cfg if model is not None else CLELConfig()
        base = cls(steps=c.sgld_steps, step_size=c.sgld_step_size, noise=c.sgld_noise, grad_clip=c.sgld_grad_clip)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def reference(cls, model: CLEL | None, sweeps: int = 10, **overrides) -> "ChainSettings":
        """The reference sampler: ``sweeps`` training chains, each after the augmentation and the reset."""
        reinit = (model.cfg if model is not None else CLELConfig()).reinit_prob
        return cls.from_model(model, **{"sweeps": sweeps, "augment": True, "reinit_prob": reinit, **overrides})

    @classmethod
    def paper(cls, model: CLEL | None, **overrides) -> "ChainSettings":
        """The paper's protocol: one plain chain of 10x the training steps from uniform noise (600 for Base)."""
        steps = 10 * (model.cfg if model is not None else CLELConfig()).sgld_steps
        return cls.from_model(model, **{"sweeps": 1, "steps": steps, "augment": False, "reinit_prob": 0.0,
                                        **overrides})

    @classmethod
    def demo(cls, model: CLEL | None, mode: str = "unconditional", **overrides) -> "ChainSettings":
        """What the demo's tabs start at: :meth:`measured` with ``DEMO_SWEEPS`` sweeps of ``DEMO_STEPS`` steps
        (``overrides`` that are not None win, these too)."""
        sweeps = overrides.pop("sweeps", None) or DEMO_SWEEPS
        return cls.measured(model, mode, sweeps, **{"steps": DEMO_STEPS, **overrides})

    @classmethod
    def measured(cls, model: CLEL | None, mode: str = "unconditional", sweeps: int | None = None,
                 table: str = "measured", extras: Mapping[str, Any] | None = None, **overrides) -> "ChainSettings":
        """What a ``mode`` chain asks for unless told otherwise (``table``: :data:`SAMPLING`'s measured defaults or
        the paper's): more than one sweep is the reference sampler (:meth:`reference`), else the paper's plain
        chain (:meth:`paper`), each with the table's guidance, ramp and bound for that chain. ``extras``: the
        weights' stored concepts, for the direction they allow (:func:`default_direction`). ``overrides`` that are
        not None win; a bound of 0 is none."""
        if mode not in MODES:
            raise SamplingError(f"unknown sampling mode {mode!r}; use one of {', '.join(MODES)}")
        if table not in SAMPLING:
            raise SamplingError(f"unknown sampling defaults {table!r}; use {' or '.join(SAMPLING)}")
        t, chain = SAMPLING[table], "reference" if (sweeps or 1) > 1 else "plain"
        direction = t["direction"].get(mode, "mean") if extras is None else default_direction(extras, mode, table)
        base = cls.reference(model, sweeps) if chain == "reference" else cls.paper(model, sweeps=sweeps)
        bound = overrides.pop("guidance_bound", None)
        base = replace(base, guidance=0.0 if mode == "unconditional" else t["guidance"][chain][mode],
                       guidance_ramp=t["ramp"], guidance_bound=t["bound"][chain] if bound is None else bound or None,
                       direction=direction)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def chain_fields() -> dict[str, Any]:
    """ChainSettings' fields by name (their metadata: help, label, limits)."""
    return {f.name: f for f in fields(ChainSettings)}


DEMO_STEPS = 20  # per sweep: the CIFAR-10 training chain
DEMO_SWEEPS = 5  # augmented sweeps clear the pixel noise one chain from noise keeps (docs/evaluation.md)


def _every(v: float) -> dict[str, float]:
    return {"instance": v, "class": v, "attributes": v, "interpolate": v}


# What a conditional chain asks for unless told otherwise: guidance per chain (reference: the augmented sweeps;
# plain: one chain from noise) and mode, the concept direction per mode ("mean": z̄, the paper's; "contrast": z̄
# of the concept minus z̄ of the rest), the guidance ramp, and the bound per chain (None: no bound).
SAMPLING: dict[str, dict[str, Any]] = {
    # docs/evaluation.md, "The sampling sweep" and "Guidance that does not blow up": chosen by
    # measure/sweep_sampling.py on the bundled weights; values no cell measured keep 1.0. The bound keeps strong
    # guidance from saturating pixels on the augmented sweeps; one plain chain from noise needs the full pull
    # (bounded, it judges worse); the ramp did not help.
    "measured": {"guidance": {"reference": {"instance": 0.1, "class": 0.3, "attributes": 0.3, "interpolate": 0.1},
                              "plain": _every(1.0)},
                 "direction": {"class": "contrast", "attributes": "mean"},
                 "ramp": 0.0, "bound": {"reference": 10.0, "plain": None}},
    # E(x, z̄) with the training β and the mean direction
    "paper": {"guidance": {"reference": _every(0.01), "plain": _every(0.01)},
              "direction": {"class": "mean", "attributes": "mean"},
              "ramp": 0.0, "bound": {"reference": None, "plain": None}},
}


def default_direction(extras: Mapping[str, Any], mode: str, table: str = "measured") -> str:
    """The default concept direction of ``mode`` (class or attributes) for these weights: ``table``'s, or the
    paper's mean direction for an export that stores no contrasts."""
    direction = SAMPLING[table]["direction"].get(mode, "mean")
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
    return torch.rand(n, 3, s, s, generator=generator, device=model_device(model))


def chain_start(model: CLEL, n: int, start: str = "noise", generator: torch.Generator | None = None) -> Tensor:
    """n starting images on the model's device: uniform noise, or (``start="buffer"``) a seeded draw of the
    model's replay buffer (``model.replay_buffer``), without repeats while it has enough images."""
    if start == "noise":
        return uniform_noise(model, n, generator)
    if start != "buffer":
        raise SamplingError(f"unknown chain start {start!r}; use {' or '.join(STARTS)}")
    buf = model.replay_buffer
    if buf is None or len(buf) == 0:
        raise SamplingError("these weights ship no replay buffer (replay_buffer.safetensors beside the export), "
                            "so there are no long-run chains to continue; start from noise")
    dev = generator.device if generator is not None else torch.device("cpu")
    pick = (torch.randperm(len(buf), generator=generator, device=dev)[:n] if n <= len(buf)
            else torch.randint(len(buf), (n,), generator=generator, device=dev))
    return to_float(buf[pick.cpu()]).to(model_device(model))


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

        ``guidance`` is the sampling-time β (default: the model's training β; a 0-d tensor is read at every call,
        so a chain can change it in place); ``bound`` caps the latent term's gradient at that many times the
        marginal's (``clel.energy.bounded``).
        """
        guidance = model.cfg.beta if guidance is None else guidance
        dev = model_device(model)
        if self.mode == "unconditional":
            return lambda x: energy(model, x)
        if self.mode == "interpolate":
            z = slerp(image_latent(model, self.images.to(dev)), image_latent(model, self.images_b.to(dev)),
                      torch.linspace(0, 1, n, device=dev))
            return lambda x: joint_energy(model, x, z, guidance, bound)
        if self.mode == "instance":
            latents, weights = image_latent(model, self.images.to(dev)).unsqueeze(0), [1.0]
        else:
            latents, weights = self.latents.to(dev), list(self.weights)
        return lambda x: compositional_energy(model, x, latents, weights, guidance, bound)


# ----------------------------------------------------------------------------------------------------------------
# How: the chain
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Chain:
    """A chain ready to run: its start, the energy it descends (built once: reference images are encoded once)
    and ``sgld``, its steps, a generator that runs them as they are asked for."""

    x0: Tensor
    energy: EnergyFn
    sgld: Iterator[SGLDStep]


def start_chain(model: CLEL, n: int, condition: Condition | None = None, settings: ChainSettings | None = None,
                guidance: float | None = None, generator: torch.Generator | None = None, x0: Tensor | None = None,
                fast: FastPath | None = None) -> Chain:
    """The chain of n samples of ``condition`` (default: unconditional) from ``settings.start`` (or ``x0``).

    ``guidance`` (if not None) replaces ``settings.guidance``; both None: the model's training β. Runs the model
    in eval mode (spectral-norm vectors frozen), so sampling never changes the weights it samples from. ``fast``
    defaults to every fast-path switch that helps on the model's device (``FastPath.best``); ``FastPath.plain()``
    turns it off. Steps are numbered across sweeps (0 … sweeps·steps − 1).
    """
    model.eval()
    st = settings or ChainSettings.from_model(model)
    if st.sweeps < 1 or st.steps < 1:
        raise SamplingError(f"sweeps and steps must be at least 1, got {st.sweeps} and {st.steps}")
    if st.guidance_ramp < 0 or (st.guidance_bound is not None and st.guidance_bound <= 0):
        raise SamplingError(f"guidance_ramp must be >= 0 and guidance_bound > 0, got {st.guidance_ramp} and "
                            f"{st.guidance_bound}")
    x = chain_start(model, n, st.start, generator) if x0 is None else x0
    guidance = st.guidance if guidance is None else guidance
    guidance = model.cfg.beta if guidance is None else float(guidance)
    ramp = guidance_ramp(guidance, st, x.device)
    fn = (condition or Condition()).energy(model, x.shape[0], guidance if ramp is None else ramp[0],
                                           st.guidance_bound)
    fast = fast or FastPath.best(x.device)
    if st.plain:
        steps = fast_chain(model, fn, x, st.steps, st.step_size, st.noise, st.grad_clip, fast, generator)
    else:
        steps = _sweeps(model, fn, x, st, fast, generator)
    return Chain(x, fn, steps if ramp is None else _ramped(steps, *ramp))


def run_chain(model: CLEL, n: int, condition: Condition | None = None, settings: ChainSettings | None = None,
              guidance: float | None = None, generator: torch.Generator | None = None, x0: Tensor | None = None,
              fast: FastPath | None = None) -> Iterator[SGLDStep]:
    """Yield every SGLD step of :func:`start_chain`'s chain."""
    return start_chain(model, n, condition, settings, guidance, generator, x0, fast).sgld


def guidance_ramp(guidance: float, st: ChainSettings, device: torch.device | str = "cpu",
                  ) -> tuple[Tensor, list[float]] | None:
    """The guidance of every step when it ramps (``st.guidance_ramp`` > 0): a 0-d tensor the energy reads,
    set to step 0's value, and the values of all steps, guidance·min(1, (k + 1)/R) with R = ramp · total steps.
    The tensor lives on the chain's device, so a captured CUDA graph reads its new value at every replay."""
    if st.guidance_ramp <= 0:
        return None
    ramp_steps = max(1.0, st.guidance_ramp * st.total_steps)
    values = [guidance * min(1.0, (k + 1) / ramp_steps) for k in range(st.total_steps)]
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
    dev = model_device(model)
    st = settings or ChainSettings.from_model(model)
    fast = fast or FastPath.best(dev)
    prepare(model.f, fast)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = chain_start(model, n, st.start, gen) if x0 is None else x0.to(dev)
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
