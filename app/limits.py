"""What one request may ask for: the controls' defaults, the server's caps (whatever the client sends: the API can be
called directly), and the request as clamped to them."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from clel.config import CLELConfig
from clel.sampling import DEFAULTS, ChainSettings
from clel_app.messages import DemoError

DEFAULT_SAMPLES = 16
DEFAULT_STEPS = 20  # per sweep: the CIFAR-10 training chain
DEFAULT_SWEEPS = 5  # augmented sweeps clear the pixel noise one chain from noise keeps (see clel.sampling)


@dataclass(frozen=True)
class Limits:
    """What one request may cost, enforced on the server whatever the client sends."""

    max_samples: int = 64
    max_steps: int = 1000  # SGLD steps per request, all sweeps together
    max_sweeps: int = 20
    max_upload_bytes: int = 25 * 2**20
    max_pixels: int = 25_000_000  # 25 megapixels; PIL's own bomb check starts at ~89 MP
    max_reference_images: int = 32  # look-alikes: reference images per request
    max_ood_files: int = 200  # OOD page: files scored per run
    step_size: tuple[float, float] = (0.0, 1000.0)
    noise: tuple[float, float] = (0.0, 1.0)
    guidance: tuple[float, float] = (-100.0, 100.0)

    @classmethod
    def from_env(cls) -> "Limits":
        """Defaults, overridable with ``CLEL_DEMO_MAX_SAMPLES`` / ``CLEL_DEMO_MAX_STEPS`` (e.g. on a GPU host)."""
        kw = {}
        for key, env in (("max_samples", "CLEL_DEMO_MAX_SAMPLES"), ("max_steps", "CLEL_DEMO_MAX_STEPS")):
            if os.environ.get(env, "").strip():
                try:
                    kw[key] = max(1, int(os.environ[env]))
                except ValueError:
                    raise DemoError(f"{env}={os.environ[env]!r} is not an integer") from None
        return cls(**kw)


@dataclass
class ChainRequest:
    """One sampling request after clamping: what the chain will actually run."""

    n: int = 16
    steps: int = 60  # per sweep
    step_size: float = CLELConfig.sgld_step_size
    noise: float = CLELConfig.sgld_noise
    guidance: float = DEFAULTS.guidance("class")
    seed: int = 0
    sweeps: int = 1  # > 1: the reference sampler's augmented sweeps (no reset: a fresh-noise tile would puzzle)
    notes: list[str] = field(default_factory=list)  # what was changed, for the status line

    @property
    def total_steps(self) -> int:
        return self.sweeps * self.steps

    @property
    def settings(self) -> ChainSettings:
        return ChainSettings(steps=self.steps, step_size=self.step_size, noise=self.noise, sweeps=self.sweeps,
                             augment=self.sweeps > 1,
                             **DEFAULTS.controls("reference" if self.sweeps > 1 else "plain"))

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def _number(value: Any, name: str, kind: type = float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise DemoError(f"{name} must be finite, got {value!r}")
    return int(round(v)) if kind is int else v


def clamp_request(n: Any, steps: Any, step_size: Any = CLELConfig.sgld_step_size, noise: Any = CLELConfig.sgld_noise,
                  guidance: Any = DEFAULTS.guidance("class"),
                  seed: Any = 0, limits: Limits | None = None, sweeps: Any = 1) -> ChainRequest:
    """Validate and bound a request; out-of-range values are clamped and the clamping is noted.

    ``steps`` is per sweep; sweeps × steps may not exceed ``limits.max_steps`` (the steps per sweep give way).
    """
    lim = limits or Limits()
    req = ChainRequest()
    notes: list[str] = []

    def bound(name: str, v: float, lo: float, hi: float, label: str) -> float:
        if v < lo or v > hi:
            c = min(max(v, lo), hi)
            notes.append(f"{label} {v:g} is outside [{lo:g}, {hi:g}] (server limit); using {c:g}")
            return c
        return v

    req.n = int(bound("n", _number(n, "number of samples", int), 1, lim.max_samples, "number of samples"))
    req.steps = int(bound("steps", _number(steps, "steps", int), 1, lim.max_steps, "steps"))
    req.sweeps = int(bound("sweeps", _number(sweeps, "sweeps", int), 1, lim.max_sweeps, "sweeps"))
    if req.total_steps > lim.max_steps:
        per = max(1, lim.max_steps // req.sweeps)
        notes.append(f"{req.sweeps} sweeps x {req.steps} steps exceed {lim.max_steps} steps (server limit); "
                     f"using {per} steps per sweep")
        req.steps = per
    req.step_size = bound("step_size", _number(step_size, "step size"), *lim.step_size, "step size")
    req.noise = bound("noise", _number(noise, "noise"), *lim.noise, "noise")
    req.guidance = bound("guidance", _number(guidance, "guidance"), *lim.guidance, "guidance")
    req.seed = int(_number(seed, "seed", int)) % 2**63
    req.notes = notes
    return req


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") % 1_000_000_000
