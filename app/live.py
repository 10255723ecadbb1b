"""The chains as the Gradio page streams them: one generator per tab (each also an API endpoint) that yields the
sample grid, the energy curve, the download, the status line and the seed after every frame, and turns any error
into a sentence for the visitor (the traceback goes to the server log only)."""
from __future__ import annotations

import html
import shutil
import tempfile
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from clel.images import save_png, upscale
from clel.sampling import DEMO_STEPS, DEMO_SWEEPS, chain_fields
from clel_app import chains
from clel_app.chains import ChainPlan, EnergyHistory, Frame, energy_figure, stream_frames
from clel_app.limits import ChainRequest, Limits, clamp_request, random_seed
from clel_app.messages import DemoError, redact_paths
from clel_app.models import MODEL_CHOICES, LoadedModel, ModelStore
from clel_app.uploads import read_uploads, thumbnails

# The energy curve is redrawn at most this often while a chain runs (and always with its first steps and at its
# end). The page rebuilds the whole plotly figure on every redraw, its costliest work per frame: redrawn with every
# frame it delayed the images behind it. The sample grid keeps every frame.
PLOT_EVERY_S = 2.0


def _plot_data(fig: Any) -> Any:
    """A figure serialised once: sent again unchanged, the page does not redraw it, nor the server re-encode it."""
    return gr.components.plot.PlotData(type="plotly", plot=fig.to_json())


# The curve each tab shows before its first chain, and each chain's first frame (before its first energies)
EMPTY_CURVE = _plot_data(energy_figure(EnergyHistory(), DEMO_STEPS * DEMO_SWEEPS))


def _user_error(e: BaseException, where: str) -> gr.Error:
    """A sentence for the visitor about an unexpected exception (the traceback goes to the server log only)."""
    traceback.print_exception(e)
    detail = redact_paths(str(e).strip()) or "no details"
    return gr.Error(html.escape(f"{where} failed ({type(e).__name__}: {detail}). Try again, perhaps with fewer "
                                f"samples or steps; the server log has the details.", quote=False),
                    duration=None, print_exception=False)


def _demo_error(e: DemoError) -> gr.Error:
    """A DemoError's message is written for the visitor: show it as it is (escaped: the modal renders HTML)."""
    return gr.Error(html.escape(str(e), quote=False), duration=None, print_exception=False)


class _Curve:
    """The energy curve of one chain as the page gets it: drawn with the first energies, then at most every
    PLOT_EVERY_S seconds and at the end. In between the same figure is sent again (the page keeps it as drawn):
    a skipped output (gr.skip()) makes Gradio keep a new copy of the component in the session's state, for as long
    as the session lives, one more with every chain."""

    def __init__(self, total_steps: int, label: str):
        self.total_steps, self.label = total_steps, label
        self.plot, self.drawn_at = EMPTY_CURVE, None  # drawn_at: None before the first drawing

    def update(self, frame: Frame) -> Any:
        now = time.perf_counter()
        if frame.final or (len(frame.history) and (self.drawn_at is None or now - self.drawn_at >= PLOT_EVERY_S)):
            self.plot = _plot_data(energy_figure(frame.history, self.total_steps, ylabel=self.label))
            self.drawn_at = now
        return self.plot


def _status(frame: Frame, req: ChainRequest, lm: LoadedModel, notes: list[str], zoom: int) -> str:
    """The status line under the live view: where the chain is, what it samples, and what was changed."""
    e = f" · mean energy {frame.history.mean[-1]:.4g}" if len(frame.history) else ""
    head = ("**Stopped**" if frame.stopped else "**Done**" if frame.final else "**Running**")
    head += f" · step {frame.step}/{frame.total}"
    st = req.settings
    if st.sweeps > 1:
        head += f" · sweep {min(st.sweeps, max(1, -(-frame.step // st.steps)))}/{st.sweeps}"
    start = " from the model's replay buffer" if st.start == "buffer" else ""
    return (f"{head}{e} · {frame.elapsed:.1f} s · seed {req.seed} · {req.n} samples{start} "
            f"({lm.cfg.image_size}px, shown x{zoom})  \n"
            f"Weights: {lm.describe()}" + "".join(f"  \n⚠ {m}" for m in notes))


def _controls(handler_locals: dict) -> dict:
    """A handler's request: its arguments that are the number of samples, the seed or chain settings."""
    return {k: v for k, v in handler_locals.items() if k in REQUEST_CONTROLS}


REQUEST_CONTROLS = {"n", "seed", "randomize", *chain_fields()}


class LiveChains:
    """The tabs' handlers over a :class:`clel_app.models.ModelStore`; every handler is a generator of live frames."""

    def __init__(self, store: ModelStore, limits: Limits | None = None, out_dir: str | None = None):
        self.store = store
        self.limits = limits or Limits.from_env()
        if out_dir is None:  # a folder of its own for the chains' downloads, removed with the app or at exit
            out_dir = tempfile.mkdtemp(prefix="clel-demo-")
            weakref.finalize(self, shutil.rmtree, out_dir, ignore_errors=True)
        self.out_dir = Path(out_dir)
        self._stop_requests: set[str] = set()  # browser sessions whose chain should end at the next step

    # -- tab handlers (also the API endpoints; their parameters are the API's, named as the chain settings) ------
    def unconditional(self, weights, n, steps, step_size, noise, seed, randomize, sweeps=1, start="noise",
                      request: gr.Request = None):
        controls = _controls(locals())
        kind = MODEL_CHOICES.get(weights, "cifar10")
        yield from self._live(kind, controls, chains.unconditional_plan, request=request)

    def lookalikes(self, files, weights, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
                   start="noise", request: gr.Request = None):
        controls = _controls(locals())
        kind, (x,), preview = self._uploads(weights, "Look-alikes", (files, "one or more images"))
        yield from self._live(kind, controls, lambda lm, req: chains.lookalike_plan(lm, x, req), "instance",
                              extra=(preview,), request=request)

    def classes(self, class_name, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1, start="noise",
                request: gr.Request = None):
        controls = _controls(locals())
        yield from self._live("cifar10", controls, lambda lm, req: chains.class_plan(lm, class_name, req), "class",
                              request=request)

    def faces(self, young, female, smiling, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
              start="noise", request: gr.Request = None):
        controls = _controls(locals())
        choices = {"Young": young, "Female": female, "Smiling": smiling}
        yield from self._live("celeba", controls, lambda lm, req: chains.attribute_plan(lm, choices, req),
                              "attributes", request=request)

    def interpolate(self, file_a, file_b, weights, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
                    start="noise", request: gr.Request = None):
        controls = _controls(locals())
        kind, (xa, xb), preview = self._uploads(weights, "Interpolation", (file_a, "image A"), (file_b, "image B"))
        yield from self._live(kind, controls, lambda lm, req: chains.interpolation_plan(lm, xa, xb, req),
                              "interpolate", extra=(preview,), request=request)

    # -- Sample and Stop --------------------------------------------------------------------------------------
    def arm(self, request: gr.Request = None) -> None:
        """Sample clears the session's Stop request before its chain is queued."""
        self._stop_requests.discard(getattr(request, "session_hash", None) or "")

    def request_stop(self, request: gr.Request = None) -> None:
        """Stop asks the session's running chain to end after its current step."""
        session = getattr(request, "session_hash", None)
        if session:
            self._stop_requests.add(session)

    # -- the shared live loop ---------------------------------------------------------------------------------
    def _live(self, kind: str, controls: dict, make_plan: Callable[[LoadedModel, ChainRequest], ChainPlan],
              mode: str = "unconditional", extra: tuple = (), request: gr.Request | None = None) -> Iterator[tuple]:
        req, lm, plan = self._prepare(kind, controls, make_plan, mode)
        notes = req.notes + plan.notes
        session = getattr(request, "session_hash", None)
        # Every frame sends every output (see _Curve): the thumbnails likewise, and the last grid when it fails.
        curve = _Curve(req.total_steps, plan.label)
        shown = None
        done = 0  # last SGLD step finished, for the failure message

        def on_step(step: int) -> None:
            nonlocal done
            done = step

        try:
            for frame in stream_frames(plan, req.total_steps, on_step=on_step,
                                       should_stop=lambda: session in self._stop_requests):
                grid = frame.grid(plan.nrow)
                shown = upscale(grid)
                plot = curve.update(frame)
                status = _status(frame, req, lm, notes, shown.shape[0] // grid.shape[0])
                download = None  # the full-resolution PNG appears when the chain is done
                if frame.stopped:
                    self._stop_requests.discard(session)
                if frame.final:
                    name = f"clel_{kind}_seed{req.seed}_{req.n}x{frame.step}steps.png"
                    download = str(save_png(grid, self._run_dir() / name))
                yield (shown, plot, download, status, req.seed, *extra)
        except DemoError as e:
            error = _demo_error(e)
        except Exception as e:  # never let a bug kill the worker silently; say what happened, and where
            error = _user_error(e, f"Sampling at step {done + 1} of {req.total_steps}")
        else:
            return
        # The status line keeps the sentence after the error modal is closed; the last samples stay shown.
        yield (gr.skip() if shown is None else shown, curve.plot, None,
               f"**Failed** · step {done}/{req.total_steps} · {error.message}", req.seed, *extra)
        raise error

    def _prepare(self, kind: str, controls: dict, make_plan: Callable[[LoadedModel, ChainRequest], ChainPlan],
                 mode: str) -> tuple[ChainRequest, LoadedModel, ChainPlan]:
        """The request clamped to the limits, the weights and the chain's plan; a sentence when any fails."""
        try:
            if controls.pop("randomize"):
                controls["seed"] = random_seed()
            req = clamp_request(controls, self.limits, mode)
            lm = self.store.get(kind)
            return req, lm, make_plan(lm, req)
        except DemoError as e:
            raise _demo_error(e) from None
        except Exception as e:  # a bug or a broken export: a sentence for the visitor, not a bare "Error"
            raise _user_error(e, "Preparing the chain") from None

    def _uploads(self, weights: str, what: str, *inputs: tuple[Any, str]) -> tuple[str, list, list[tuple[str, str]]]:
        """The chosen weights' kind, each file input (files, what it is) as the model's input, and the thumbnails
        of "What the model sees"; ``what`` (the tab) names the feature when the weights cannot encode photos."""
        kind = MODEL_CHOICES.get(weights, "cifar10")
        try:
            lm = self.store.get(kind)
            lm.encoder_or_error(what)
            read = [read_uploads(files, name, lm.cfg.image_size, self.limits) for files, name in inputs]
        except DemoError as e:
            raise _demo_error(e) from None
        except Exception as e:
            raise _user_error(e, "Reading the images") from None
        decoded = [d for _, ds in read for d in ds]
        return kind, [x for x, _ in read], thumbnails(decoded, lm.cfg.image_size, self._run_dir())

    def _run_dir(self) -> Path:
        """A folder of its own for one run's files (no clashes), after the old ones are pruned."""
        self._prune()
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))

    def _prune(self, max_age_s: float = 3600.0) -> None:
        """Delete downloads older than an hour (Gradio keeps its own copy for the page while it needs it)."""
        for d in self.out_dir.glob("run-*"):
            try:
                if time.time() - d.stat().st_mtime > max_age_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass
