"""The demo's chains, all built from :mod:`clel.sampling`: a plan for each tab, the energy they descend recorded step by
step (and drawn), and :func:`stream_frames`, which runs a plan and yields the starting noise at once, then a frame
every few steps. Sampling and energies come from :mod:`clel.sampling` and :mod:`clel.energy`; nothing here
re-implements them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from clel.images import grid_array
from clel.sampling import Condition, SamplingError, start_chain
from clel.sgld import EnergyFn, SGLDStep
from clel_app.limits import ChainRequest
from clel_app.messages import DemoError
from clel_app.models import LoadedModel

ATTRIBUTE_CHOICES = ("off", "AND", "NOT")


# ----------------------------------------------------------------------------------------------------------------
# Plans: where a chain starts, its steps, and the energy they descend
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class ChainPlan:
    """Everything a live chain needs: the start, the steps, and the energy they descend."""

    x0: Tensor
    chain: Iterator[SGLDStep]
    energy: EnergyFn
    nrow: int | None = None
    label: str = "E(x)"
    notes: list[str] = field(default_factory=list)


def plan_chain(lm: LoadedModel, condition: Condition, req: ChainRequest, nrow: int | None = None,
               notes: list[str] | None = None) -> ChainPlan:
    """The live chain of ``condition`` (clel.sampling's): its start (noise or the model's replay buffer), for the
    first frame, its steps, and the energy they descend (built once, for the chain and the curve)."""
    if req.settings.start == "buffer":
        lm.buffer_or_error()
    chain = start_chain(lm.model, req.n, condition, req.settings, generator=req.generator())
    return ChainPlan(chain.x0, chain.sgld, chain.energy, nrow, condition.label, list(notes or []))


def unconditional_plan(lm: LoadedModel, req: ChainRequest) -> ChainPlan:
    """SGLD on the marginal energy E(x) = ½‖f(x)‖²."""
    return plan_chain(lm, Condition.unconditional(), req)


def lookalike_plan(lm: LoadedModel, images: Tensor, req: ChainRequest) -> ChainPlan:
    """Instance-conditional samples: SGLD on E(x, z̄) with z̄ the mean latent of the reference images."""
    lm.encoder_or_error("Look-alikes")
    return plan_chain(lm, Condition.instance(images), req)


def class_plan(lm: LoadedModel, class_name: str, req: ChainRequest) -> ChainPlan:
    """Class-conditional samples: SGLD on E(x, z̄_class) with the class's concept latent shipped with the weights."""
    lm.class_latent(class_name)  # a clear DemoError for an unknown class or weights without prototypes
    return plan_chain(lm, Condition.classes(lm.extras, [class_name]), req)


def attribute_choices(choices: Mapping[str, str]) -> list[tuple[str, float]]:
    """Terms (+1 AND, −1 NOT) of the Faces tab's choices like ``{"Female": "AND", "Young": "off"}``."""
    terms = []
    for attr, choice in choices.items():
        choice = (choice or "off").strip()
        if choice not in ATTRIBUTE_CHOICES:
            raise DemoError(f"{attr}: choose one of {', '.join(ATTRIBUTE_CHOICES)}, got {choice!r}")
        if choice != "off":
            terms.append((attr, 1.0 if choice == "AND" else -1.0))
    return terms


def attribute_condition(lm: LoadedModel, choices: Mapping[str, str]) -> Condition:
    """The Faces tab's condition (clel.sampling's lookup, with its Female = not Male rule); none ticked: E(x)."""
    terms = attribute_choices(choices)
    if not terms:
        return Condition.unconditional()
    try:
        return Condition.attributes(lm.extras, terms)
    except SamplingError as e:
        raise DemoError(f"the {lm.label} weights: {e}") from None


def attribute_plan(lm: LoadedModel, choices: Mapping[str, str], req: ChainRequest) -> ChainPlan:
    """Compositional samples: ½‖f‖² − β Σ wₐ cos(g(f(x)), z̄ₐ), AND = +1, NOT = −1 (no attribute: E(x))."""
    cond = attribute_condition(lm, choices)
    notes = ["no attribute selected: unconditional faces"] if cond.mode == "unconditional" else None
    return plan_chain(lm, cond, req, notes=notes)


def interpolation_plan(lm: LoadedModel, image_a: Tensor, image_b: Tensor, req: ChainRequest) -> ChainPlan:
    """Samples whose latents walk the sphere from image A's to image B's (slerp), one latent per sample."""
    lm.encoder_or_error("Interpolation")
    return plan_chain(lm, Condition.interpolate(image_a, image_b), req, nrow=min(req.n, 8))


# ----------------------------------------------------------------------------------------------------------------
# The energy along a chain
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class EnergyHistory:
    """Energy of the batch at each step of a chain: mean, min and max over the samples."""

    steps: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)

    def add(self, step: int, energies: Tensor) -> None:
        e = energies.detach().float().cpu()
        self.steps.append(int(step))
        self.mean.append(float(e.mean()))
        self.low.append(float(e.min()))
        self.high.append(float(e.max()))

    def __len__(self) -> int:
        return len(self.steps)


def energy_figure(history: EnergyHistory, total_steps: int | None = None, title: str = "Energy during SGLD",
                  ylabel: str = "E(x)"):
    """Plotly figure of the batch's energy versus step: the mean and a min-max band.

    ``ylabel`` (e.g. ``E(x, AND Young AND Smiling)``) goes into the title; the y axis is only "energy", so a long
    label cannot run up the axis into the title. The title sits in the top margin, above the plot area.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    if len(history):  # copies: the chain keeps appending to the history while the figure is being sent
        steps, mean, low, high = list(history.steps), list(history.mean), list(history.low), list(history.high)
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=high + low[::-1],
                                 fill="toself", fillcolor="rgba(99, 110, 250, 0.2)", line={"width": 0},
                                 hoverinfo="skip", name="min–max over samples"))
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines+markers" if len(steps) < 30
                                 else "lines", line={"color": "rgb(99, 110, 250)", "width": 2},
                                 name="mean energy"))
    text = f"{title}: {ylabel}" if ylabel else title
    fig.update_layout(title={"text": text, "x": 0.01, "xanchor": "left", "xref": "container",
                             "y": 0.98, "yanchor": "top", "yref": "container", "font": {"size": 14}},
                      xaxis_title="SGLD step", yaxis_title="energy",
                      margin={"l": 60, "r": 10, "t": 56, "b": 40}, height=320, template="plotly_white",
                      legend={"orientation": "h", "y": -0.25}, uirevision="energy")
    if total_steps:
        fig.update_xaxes(range=[-0.5, total_steps + 0.5])
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Live frames
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Frame:
    """What the live view shows after ``step`` of ``total`` steps."""

    step: int
    total: int
    x: Tensor  # [N, 3, H, W] in [0, 1]
    history: EnergyHistory
    elapsed: float
    final: bool = False
    stopped: bool = False  # final because the user asked the chain to stop early

    def grid(self, nrow: int | None = None) -> np.ndarray:
        return grid_array(self.x, nrow)


def frame_every(steps: int, target_frames: int = 20) -> int:
    """Steps between frames so that a chain streams about ``target_frames`` frames (at least 1 step)."""
    return max(1, steps // max(1, target_frames))


# Live chains being iterated right now (the tests and benchmarks wait on it): id -> last step done.
ACTIVE_CHAINS: dict[int, int] = {}
_active_lock = threading.Lock()


def stream_frames(plan: ChainPlan, total: int, every: int | None = None, min_interval: float = 1.0,
                  on_step: Callable[[int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[Frame]:
    """Run ``plan.chain`` and yield frames: the starting noise at once, then every ``every`` steps.

    A frame is also yielded when ``min_interval`` seconds passed since the previous one (slow CPUs), and always
    after the last step, with the energy of the final samples added to the curve. ``should_stop`` is asked
    after every step: when it says yes the chain ends there with a final frame marked ``stopped`` (the Stop
    button). Closing the generator (a cancelled request) also stops the chain after the step in progress.
    An error inside the chain propagates to the caller after the frames already yielded.
    """
    every = every or frame_every(total)
    history = EnergyHistory()
    t0 = last = time.perf_counter()
    key = id(plan)
    with _active_lock:
        ACTIVE_CHAINS[key] = 0
    try:
        yield Frame(0, total, plan.x0, history, 0.0)
        x = plan.x0
        done = 0
        stopped = should_stop is not None and should_stop()  # stopped while it waited in the queue
        for s in () if stopped else plan.chain:
            done = s.step + 1
            x = s.x
            history.add(s.step, s.energy)
            with _active_lock:
                ACTIVE_CHAINS[key] = done
            if on_step is not None:
                on_step(done)
            if should_stop is not None and should_stop():
                stopped = done < total
                break
            now = time.perf_counter()
            if done < total and (done % every == 0 or now - last >= min_interval):
                last = now
                yield Frame(done, total, x, history, now - t0)
        with torch.no_grad():
            history.add(done, plan.energy(x))
        yield Frame(done, total, x, history, time.perf_counter() - t0, final=True, stopped=stopped)
    finally:
        with _active_lock:
            ACTIVE_CHAINS.pop(key, None)
