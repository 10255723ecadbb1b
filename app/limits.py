"""What one request may ask for: the controls' defaults, the server's caps (whatever the client sends: the API can be
called directly), and the request as clamped to them."""
from __future__ import annotations

import math
import os
from dataclasses import Field, dataclass, field
from typing import Any, Mapping

import torch

from clel.sampling import ChainSettings, chain_fields
from clel_app.messages import DemoError

DEFAULT_SAMPLES = 16


@dataclass(frozen=True)
class Limits:
    """What one request may cost, enforced on the server whatever the client sends (the chain settings' own ranges
    are their fields' metadata in :class:`clel.sampling.ChainSettings`)."""

    max_samples: int = 64
    max_steps: int = 1000  # SGLD steps per request, all sweeps together
    max_upload_bytes: int = 25 * 2**20
    max_pixels: int = 25_000_000  # 25 megapixels; PIL's own bomb check starts at ~89 MP
    max_reference_images: int = 32  # look-alikes: reference images per request
    max_ood_files: int = 200  # OOD page: files scored per run

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

    def range(self, f: Field) -> tuple[float, float]:
        """A chain setting's server range: its field's, a step count without a max capped by the request's budget."""
        return f.metadata["min"], f.metadata.get("max", self.max_steps)


@dataclass
class ChainRequest:
    """One sampling request after clamping: how many samples, their seed, and how the chain runs."""

    n: int = DEFAULT_SAMPLES
    seed: int = 0
    settings: ChainSettings = field(default_factory=ChainSettings)
    notes: list[str] = field(default_factory=list)  # what was changed, for the status line

    @property
    def total_steps(self) -> int:
        return self.settings.total_steps

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


def clamp_request(controls: Mapping[str, Any], limits: Limits | None = None,
                  mode: str = "unconditional") -> ChainRequest:
    """Validate and bound a request: ``n``, ``seed`` and any chain settings with limits or choices (by field name);
    out-of-range values are clamped and the clamping is noted, an unknown choice is refused. Settings not given keep ``mode``'s measured defaults.

    Steps are per sweep; sweeps × steps may not exceed ``limits.max_steps`` (the steps per sweep give way). A
    request of more than one sweep runs the augmented sweeps without the reset (a fresh-noise tile would puzzle).
    """
    lim = limits or Limits()
    notes: list[str] = []

    def bound(v: float, lo: float, hi: float, label: str) -> float:
        if v < lo or v > hi:
            c = min(max(v, lo), hi)
            notes.append(f"{label} {v:g} is outside [{lo:g}, {hi:g}] (server limit); using {c:g}")
            return c
        return v

    n = int(bound(_number(controls.get("n", DEFAULT_SAMPLES), "number of samples", int), 1, lim.max_samples,
                  "number of samples"))
    chain: dict[str, Any] = {}
    for name, f in chain_fields().items():
        if name in controls and "choices" in f.metadata:  # a choice is taken as it is, or refused
            if controls[name] not in f.metadata["choices"]:
                raise DemoError(f"{name.replace('_', ' ')} must be one of {', '.join(f.metadata['choices'])}, got "
                                f"{controls[name]!r}")
            chain[name] = controls[name]
        if name not in controls or "min" not in f.metadata:
            continue
        label = name.replace("_", " ")
        chain[name] = bound(_number(controls[name], label, int if f.type == "int" else float), *lim.range(f), label)
        if name == "sweeps" and chain.get("steps", 1) * chain[name] > lim.max_steps:
            per = max(1, lim.max_steps // chain[name])
            notes.append(f"{chain[name]} sweeps x {chain['steps']} steps exceed {lim.max_steps} steps (server "
                         f"limit); using {per} steps per sweep")
            chain["steps"] = per
    settings = ChainSettings.measured(None, mode, chain.pop("sweeps", 1), reinit_prob=0.0, **chain)
    seed = int(_number(controls.get("seed", 0), "seed", int)) % 2**63
    return ChainRequest(n, seed, settings, notes)


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") % 1_000_000_000
