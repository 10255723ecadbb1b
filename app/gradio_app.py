"""CLEL live demo: watch SGLD turn noise into images, step by step.

    python app/gradio_app.py                      # bundled weights/cifar10 and weights/celeba64, port 7860
    python app/gradio_app.py --cifar10 DIR_OR_REPO --celeba DIR_OR_REPO --port 7861

Weights: ``--cifar10`` / ``--celeba`` or ``CLEL_WEIGHTS_CIFAR10`` / ``CLEL_WEIGHTS_CELEBA`` name an export folder
or a Hugging Face Hub repo id; the default is the bundled folder. A repo id that cannot be fetched (offline,
``HF_HUB_OFFLINE=1``, missing repo) falls back to the bundled copy, and the header says which was used.

Tabs (each one also an API endpoint for ``gradio_client``, named in brackets):
Unconditional [/unconditional] · Look-alikes [/lookalikes] · Classes [/classes] · Faces [/faces] ·
Interpolate [/interpolate]. Each streams the chain: the image grid and the energy curve update every few steps.
A second page, /model-cards, shows each model's README.md; the header links to it.

Test hook: ``CLEL_DEMO_FAIL_AT_STEP=N`` makes step N of every chain raise (see ``clel_app.demo``), to check what a
visitor sees when a chain fails. Leave it unset.
"""
from __future__ import annotations

import argparse
import atexit
import html
import os
import shutil
import signal
import tempfile
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
# The server's own files (uploads, cached outputs) go in one folder of its own, removed when it stops. Gradio reads
# the variable when it is imported, so it is set here; an importer (tests, another app) keeps its own setting.
# SIGTERM (docker stop, kill) ends the server as Ctrl-C does, so the folder goes either way, even mid-start.
SERVER_TMP = None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    if not os.environ.get("GRADIO_TEMP_DIR"):
        SERVER_TMP = tempfile.mkdtemp(prefix="clel-demo-")
        atexit.register(shutil.rmtree, SERVER_TMP, ignore_errors=True)
        os.environ["GRADIO_TEMP_DIR"] = SERVER_TMP
        # importing torchvision creates torch's compile cache in the temp folder, which the demo never uses
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(SERVER_TMP, "torchinductor"))

import gradio as gr  # noqa: E402  (after the analytics switch)

from clel_app import demo as D  # noqa: E402  (after the analytics switch)
from clel.config import CLELConfig as SPEC  # noqa: E402  (SPEC's chain constants are the config's defaults)
from clel.data import CIFAR10_CLASSES  # noqa: E402  (after the analytics switch)
from clel.sampling import DEFAULTS  # noqa: E402  (after the analytics switch)

EXAMPLES = REPO / "app" / "examples"
MODEL_CHOICES = {label: kind for kind, label in D.MODEL_LABELS.items()}  # {"CIFAR-10": "cifar10", ...}
CARDS_PATH = "model-cards"  # the model-card page; linked relatively from the header
DEFAULT_SAMPLES = 16
DEFAULT_STEPS = 20  # per sweep: the CIFAR-10 training chain
DEFAULT_SWEEPS = 5  # augmented sweeps clear the pixel noise one chain from noise keeps (see clel.sampling)
DEFAULT_FACES = {"Young": "AND", "Female": "off", "Smiling": "AND"}  # opens on a composition, not on "all off"
# The energy curve is redrawn at most this often while a chain runs (and always with its first steps and at its
# end). The page rebuilds the whole plotly figure on every redraw, its costliest work per frame: redrawn with every
# frame it delayed the images behind it. The sample grid keeps every frame.
PLOT_EVERY_S = 2.0


def _plot_data(fig: Any) -> Any:
    """A figure serialised once: sent again unchanged, the page does not redraw it, nor the server re-encode it."""
    return gr.components.plot.PlotData(type="plotly", plot=fig.to_json())


# The curve each tab shows before its first chain, and each chain's first frame (before its first energies)
EMPTY_CURVE = _plot_data(D.energy_figure(D.EnergyHistory(), DEFAULT_STEPS * DEFAULT_SWEEPS))
CLASS_EXAMPLES = ("cat", "ship", "horse", "airplane")
CSS = """
.live-grid img { image-rendering: pixelated; image-rendering: crisp-edges; }
.status-line { min-height: 3em; }
"""

INTRO = """# CLEL: energy-based models you can watch
An energy-based model scores images with an energy E(x) = ½‖f(x)‖²: low for images like its training data.
Sampling is **SGLD**, a noisy gradient descent on E starting from uniform noise; a contrastive encoder's latent
space lets the energy be guided toward a photo, a class or attributes
([Lee et al., ICLR 2023](https://openreview.net/forum?id=AHpmOPqzYt)). Press **Sample** and watch the chain;
**Stop** ends it after the current step. With **Sweeps** above 1 the chain restarts from its own images after a
random crop, flip and colour jitter, as training does with its replay buffer: the sampler the FID is measured with,
which clears the pixel noise a single chain keeps. Pixels are upscaled for display; the full-resolution grid is
downloadable at the end.
"""


def _example(name: str) -> str:
    return str(EXAMPLES / name)


def _user_error(e: BaseException, where: str) -> gr.Error:
    """A sentence for the visitor about an unexpected exception (the traceback goes to the server log only)."""
    traceback.print_exception(e)
    detail = D.redact_paths(str(e).strip()) or "no details"
    return gr.Error(html.escape(f"{where} failed ({type(e).__name__}: {detail}). Try again, perhaps with fewer "
                                f"samples or steps; the server log has the details.", quote=False),
                    duration=None, print_exception=False)


def _demo_error(e: D.DemoError) -> gr.Error:
    """A DemoError's message is written for the visitor: show it as it is (escaped: the modal renders HTML)."""
    return gr.Error(html.escape(str(e), quote=False), duration=None, print_exception=False)


class DemoApp:
    """The Gradio UI over a :class:`clel_app.demo.ModelStore`; every handler is a generator of live frames."""

    def __init__(self, store: D.ModelStore, limits: D.Limits | None = None, out_dir: str | None = None):
        self.store = store
        self.limits = limits or D.Limits.from_env()
        if out_dir is None:  # a folder of its own for the chains' downloads, removed with the app or at exit
            out_dir = tempfile.mkdtemp(prefix="clel-demo-")
            weakref.finalize(self, shutil.rmtree, out_dir, ignore_errors=True)
        self.out_dir = Path(out_dir)
        self._stop_requests: set[str] = set()  # browser sessions whose chain should end at the next step

    # -- the shared live loop ---------------------------------------------------------------------------------
    def _live(self, kind: str, controls: tuple, make_plan: Callable[[D.LoadedModel, D.ChainRequest], D.ChainPlan],
              extra: tuple = (), request: gr.Request | None = None) -> Iterator[tuple]:
        n, steps, step_size, noise, guidance, seed, randomize, sweeps = controls
        try:
            seed = D.random_seed() if randomize else seed
            req = D.clamp_request(n, steps, step_size, noise, guidance, seed, self.limits, sweeps)
            lm = self.store.get(kind)
            plan = make_plan(lm, req)
        except D.DemoError as e:
            raise _demo_error(e) from None
        except Exception as e:  # a bug or a broken export: a sentence for the visitor, not a bare "Error"
            raise _user_error(e, "Preparing the chain") from None
        notes = req.notes + plan.notes
        session = getattr(request, "session_hash", None)
        # Every frame sends every output: a skipped output (gr.skip()) makes Gradio keep a new copy of the
        # component in the session's state, for as long as the session lives, one more with every chain. Between
        # redraws the curve is sent again unchanged (the page keeps it as drawn), the thumbnails likewise.
        curve, curve_at = EMPTY_CURVE, None  # curve_at: when the curve was last redrawn, None before its first
        shown = None
        done = 0  # last SGLD step finished, for the failure message

        def on_step(step: int) -> None:
            nonlocal done
            done = step

        try:
            for frame in D.stream_frames(plan, req.total_steps, on_step=on_step,
                                         should_stop=lambda: session in self._stop_requests):
                grid = frame.grid(plan.nrow)
                shown = D.upscale(grid)
                now = time.perf_counter()
                if frame.final or (len(frame.history) and (curve_at is None or now - curve_at >= PLOT_EVERY_S)):
                    curve = _plot_data(D.energy_figure(frame.history, req.total_steps, ylabel=plan.label))
                    curve_at = now
                e = f" · mean energy {frame.history.mean[-1]:.4g}" if len(frame.history) else ""
                head = ("**Stopped**" if frame.stopped else "**Done**" if frame.final else "**Running**")
                head += f" · step {frame.step}/{frame.total}"
                if req.sweeps > 1:
                    head += f" · sweep {min(req.sweeps, max(1, -(-frame.step // req.steps)))}/{req.sweeps}"
                status = (f"{head}{e} · {frame.elapsed:.1f} s · seed {req.seed} · {req.n} samples "
                          f"({lm.cfg.image_size}px, shown x{shown.shape[0] // grid.shape[0]})  \n"
                          f"Weights: {lm.describe()}" + "".join(f"  \n⚠ {m}" for m in notes))
                download = None  # the full-resolution PNG appears when the chain is done
                if frame.stopped:
                    self._stop_requests.discard(session)
                if frame.final:
                    self._prune()
                    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))  # one per run: no clashes
                    path = run_dir / f"clel_{kind}_seed{req.seed}_{req.n}x{frame.step}steps.png"
                    download = str(D.save_png(grid, path))
                yield (shown, curve, download, status, req.seed, *extra)
        except D.DemoError as e:
            error = _demo_error(e)
        except Exception as e:  # never let a bug kill the worker silently; say what happened, and where
            error = _user_error(e, f"Sampling at step {done + 1} of {req.total_steps}")
        else:
            return
        # The status line keeps the sentence after the error modal is closed; the last samples stay shown.
        yield (gr.skip() if shown is None else shown, curve, None,
               f"**Failed** · step {done}/{req.total_steps} · {error.message}", req.seed, *extra)
        raise error

    def _prune(self, max_age_s: float = 3600.0) -> None:
        """Delete downloads older than an hour (Gradio keeps its own copy for the page while it needs it)."""
        import shutil

        for d in self.out_dir.glob("run-*"):
            try:
                if time.time() - d.stat().st_mtime > max_age_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass

    def _images(self, files: Any, what: str, size: int) -> tuple[Any, list[D.DecodedImage]]:
        paths = files if isinstance(files, (list, tuple)) else ([files] if files else [])
        paths = [p for p in paths if p]
        if not paths:
            raise D.DemoError(f"upload {what} first")
        if len(paths) > self.limits.max_reference_images:
            raise D.DemoError(f"{len(paths)} images uploaded; the limit is {self.limits.max_reference_images}")
        decoded = []
        for p in paths:
            path = getattr(p, "name", None) or str(p)
            decoded.append(D.decode_image(path, Path(path).name, self.limits))
        return D.images_to_tensor(decoded, size), decoded

    def _preview(self, decoded: list[D.DecodedImage], size: int) -> list[tuple[str, str]]:
        """The thumbnails of "What the model sees", as files written once: every frame sends them again, and
        Gradio rewrites an image array's cached file each time it is sent, under the page reading it."""
        self._prune()
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        return [(str(D.save_png(D.upscale(D.fit_square(d.image, size), target=128), run_dir / f"seen_{i}.png")),
                 d.name + (f" ({d.note})" if d.notes else "")) for i, d in enumerate(decoded)]

    # -- tab handlers (also the API endpoints) ----------------------------------------------------------------
    def unconditional(self, weights, n, steps, step_size, noise, seed, randomize, sweeps=1,
                      request: gr.Request = None):
        kind = MODEL_CHOICES.get(weights, "cifar10")
        yield from self._live(kind, (n, steps, step_size, noise, 0.0, seed, randomize, sweeps), D.unconditional_plan,
                              request=request)

    def lookalikes(self, files, weights, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
                   request: gr.Request = None):
        kind = MODEL_CHOICES.get(weights, "cifar10")
        try:
            lm = self.store.get(kind)
            lm.encoder_or_error("Look-alikes")
            x, decoded = self._images(files, "one or more images", lm.cfg.image_size)
        except D.DemoError as e:
            raise _demo_error(e) from None
        except Exception as e:
            raise _user_error(e, "Reading the images") from None
        preview = self._preview(decoded, lm.cfg.image_size)
        yield from self._live(kind, (n, steps, step_size, noise, guidance, seed, randomize, sweeps),
                              lambda lm, req: D.lookalike_plan(lm, x, req), extra=(preview,), request=request)

    def classes(self, class_name, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
                request: gr.Request = None):
        yield from self._live("cifar10", (n, steps, step_size, noise, guidance, seed, randomize, sweeps),
                              lambda lm, req: D.class_plan(lm, class_name, req), request=request)

    def faces(self, young, female, smiling, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
              request: gr.Request = None):
        choices = {"Young": young, "Female": female, "Smiling": smiling}
        yield from self._live("celeba", (n, steps, step_size, noise, guidance, seed, randomize, sweeps),
                              lambda lm, req: D.attribute_plan(lm, choices, req), request=request)

    def interpolate(self, file_a, file_b, weights, n, steps, step_size, noise, guidance, seed, randomize, sweeps=1,
                    request: gr.Request = None):
        kind = MODEL_CHOICES.get(weights, "cifar10")
        try:
            lm = self.store.get(kind)
            lm.encoder_or_error("Interpolation")
            xa, da = self._images(file_a, "image A", lm.cfg.image_size)
            xb, db = self._images(file_b, "image B", lm.cfg.image_size)
        except D.DemoError as e:
            raise _demo_error(e) from None
        except Exception as e:
            raise _user_error(e, "Reading the images") from None
        preview = self._preview(da + db, lm.cfg.image_size)
        yield from self._live(kind, (n, steps, step_size, noise, guidance, seed, randomize, sweeps),
                              lambda lm, req: D.interpolation_plan(lm, xa, xb, req), extra=(preview,),
                              request=request)

    # -- layout ------------------------------------------------------------------------------------------------
    def _controls(self, prefix: str, mode: str = "unconditional", n: int = DEFAULT_SAMPLES,
                  ) -> list[gr.components.Component]:
        guidance = mode != "unconditional"
        lim = self.limits
        with gr.Accordion("Chain settings", open=True):
            with gr.Row():
                c_n = gr.Slider(1, lim.max_samples, value=min(n, lim.max_samples), step=1, label="Samples",
                                elem_id=f"{prefix}-n")
                c_steps = gr.Slider(1, lim.max_steps, value=min(DEFAULT_STEPS, lim.max_steps), step=1,
                                    label="SGLD steps (per sweep)", elem_id=f"{prefix}-steps")
                c_sweeps = gr.Slider(1, lim.max_sweeps, value=min(DEFAULT_SWEEPS, lim.max_sweeps), step=1,
                                     label="Sweeps", elem_id=f"{prefix}-sweeps",
                                     info="each after a random crop, flip and colour jitter, as in training's "
                                          "replay buffer (the reference sampler: 10)")
            with gr.Row():
                c_size = gr.Slider(0, 300, value=SPEC.sgld_step_size, step=1, label="Step size",
                                   info=f"training: {SPEC.sgld_step_size:g}")
                c_noise = gr.Slider(0, 0.05, value=SPEC.sgld_noise, step=0.0005, label="Noise",
                                    info=f"training: {SPEC.sgld_noise:g}")
            c_guid = gr.Slider(0, 20, value=DEFAULTS.guidance(mode), step=0.01, label="Guidance β",
                               info="weight of the latent term (training β = 0.01); the default is the value "
                                    "that judged best on these weights (docs/evaluation.md)" + (
                                        f"; with sweeps the term never pulls harder than "
                                        f"{DEFAULTS.bound('reference'):g}x the marginal, so large values do not "
                                        "saturate" if DEFAULTS.bound("reference") else ""),
                               visible=guidance)
            with gr.Row():
                c_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                c_rand = gr.Checkbox(value=True, label="Randomize seed")
        return [c_n, c_steps, c_size, c_noise, c_guid, c_seed, c_rand, c_sweeps]

    def _outputs(self, prefix: str) -> list[gr.components.Component]:
        """The live view: the sample grid beside the energy curve, the status line and the download below it."""
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                img = gr.Image(label="Samples (live)", type="numpy", format="png", interactive=False,
                               elem_id=f"{prefix}-output", elem_classes=["live-grid"],
                               buttons=["download", "fullscreen"])
            with gr.Column(scale=1, min_width=320):
                # the figure carries its own title: Gradio's label badge would sit on top of it
                # An empty curve from the start: the page loads its plotting library with the page, not when
                # the first energies of a chain arrive (seconds of a frozen view on a slow machine)
                plot = gr.Plot(EMPTY_CURVE, label="Energy versus SGLD step", show_label=False,
                               elem_id=f"{prefix}-energy")
                status = gr.Markdown("Press **Sample** to start a chain.", elem_id=f"{prefix}-status",
                                     elem_classes=["status-line"])
                download = gr.File(label="Full-resolution grid (PNG)", interactive=False,
                                   elem_id=f"{prefix}-download")
        return [img, plot, download, status]

    def _buttons(self, prefix: str, usable: bool = True) -> tuple[gr.Button, gr.Button]:
        with gr.Row():
            run = gr.Button("Sample", variant="primary", elem_id=f"{prefix}-sample", interactive=usable)
            stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
        return run, stop

    def _wire(self, run: gr.Button, stop: gr.Button, fn: Callable, inputs: list, outputs: list, seed: gr.Number,
              api_name: str, extra_outputs: list | None = None) -> None:
        img, plot, download, status = outputs
        # Sample first clears this session's Stop request (instantly, outside the queue), then queues the chain.
        # Stop asks the running chain to end after its current step: the chain itself then shows its last
        # samples as the final frame, marked Stopped, with the download. Stopping from inside rather than
        # cancelling the event leaves no half-finished request for the page to report as an error.
        run.click(self._arm, None, None, queue=False, show_progress="hidden", api_visibility="private").then(
            fn, inputs=inputs, outputs=[img, plot, download, status, seed, *(extra_outputs or [])],
            api_name=api_name, concurrency_id="sgld", concurrency_limit=1, show_progress="minimal")
        stop.click(self._request_stop, None, None, queue=False, show_progress="hidden", api_visibility="private")

    def _arm(self, request: gr.Request = None) -> None:
        self._stop_requests.discard(getattr(request, "session_hash", None) or "")

    def _request_stop(self, request: gr.Request = None) -> None:
        session = getattr(request, "session_hash", None)
        if session:
            self._stop_requests.add(session)

    def _header(self) -> str:
        """Each model's name, size, training and model card: no server paths (visitors see this)."""
        lines = []
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except D.DemoError as e:
                lines.append(f"- **{label}**: not available: {e}")
                continue
            title, _, _ = lm.card()
            parts = [title, lm.size()]
            if lm.iteration is not None:
                parts.append(f"{lm.iteration:,} training iterations")
            if not lm.has_encoder:
                parts.append("no encoder h, so no look-alikes or interpolation")
            parts.append(lm.where())
            if lm.hub_url:
                parts.append(f"[model card]({lm.hub_url})")
            elif lm.card_path() is not None:
                parts.append(f"[model card]({CARDS_PATH}#card-{kind})")
            else:
                parts.append("no model card")
            lines.append(f"- **{label}**: " + " · ".join(parts))
        return "**Models**  \n" + "\n".join(lines)

    def _encoding_choices(self) -> tuple[list[str], str]:
        """The weights that can encode photos (look-alikes, interpolation), and a note on the ones left out."""
        offered, left_out = [], []
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except D.DemoError:
                left_out.append(f"{label} is not offered: its weights could not be loaded (see the header).")
                continue
            if lm.has_encoder:
                offered.append(label)
            else:
                left_out.append(f"{label} is not offered: its export has no encoder h (config.json lists only "
                                f"{', '.join(lm.extras.get('parts', ['f', 'g']))}), and encoding a photo needs "
                                f"it. Weights that include h will appear here.")
        return offered, "  \n".join(f"ℹ {m}" for m in left_out)

    def _encoding_weights(self, prefix: str) -> tuple[gr.Radio, list[str], bool]:
        """The Weights radio of a tab that encodes photos, with the note saying which weights are missing and why."""
        offered, note = self._encoding_choices()
        usable = bool(offered)
        radio = gr.Radio(offered or list(MODEL_CHOICES), value=(offered or list(MODEL_CHOICES))[0], label="Weights",
                         interactive=usable, elem_id=f"{prefix}-weights")
        gr.Markdown(note, visible=bool(note), elem_id=f"{prefix}-weights-note")
        return radio, offered, usable

    def _model_cards(self) -> None:
        """The model-card page: each export's README.md, its images served as image components."""
        gr.Markdown("# Model cards\nThe README.md shipped with each model's weights. [Back to the demo](./)")
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except D.DemoError as e:
                gr.Markdown(f"## {label}\nNot available: {e}", elem_id=f"card-{kind}")
                continue
            title, body, images = lm.card()
            if lm.hub_url:
                body = f"[On the Hugging Face Hub]({lm.hub_url})\n\n" + body
            gr.Markdown(body or f"## {label}\nThese weights come without a model card (README.md).",
                        elem_id=f"card-{kind}")
            if images:
                with gr.Row():
                    for path, caption in images:
                        gr.Image(str(path), label=f"{label}: {caption}", interactive=False, type="filepath",
                                 buttons=["fullscreen"])

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="CLEL: energy-based models, live", analytics_enabled=False,
                       delete_cache=(3600, 3600)) as demo:
            gr.Markdown(INTRO)
            gr.Markdown(self._header(), elem_id="weights-header")
            with gr.Tabs():
                with gr.Tab("Unconditional", id="unconditional"):
                    self._tab_unconditional()
                with gr.Tab("Look-alikes", id="lookalikes"):
                    self._tab_lookalikes()
                with gr.Tab("Classes", id="classes"):
                    self._tab_classes()
                with gr.Tab("Faces", id="faces"):
                    self._tab_faces()
                with gr.Tab("Interpolate", id="interpolate"):
                    self._tab_interpolate()
        with demo.route("Model cards", CARDS_PATH):
            self._model_cards()
        return demo

    def _tab_unconditional(self) -> None:
        """The Unconditional tab's controls, outputs, wiring and examples."""
        gr.Markdown("SGLD on the marginal energy E(x): what the model believes images look like.")
        with gr.Row():
            with gr.Column(scale=2):
                weights = gr.Radio(list(MODEL_CHOICES), value="CIFAR-10", label="Weights")
                ctl = self._controls("unconditional")
                run, stop = self._buttons("unconditional")
            with gr.Column(scale=4):
                outs = self._outputs("unconditional")
        inputs = [weights, *ctl[:4], *ctl[5:]]
        self._wire(run, stop, self.unconditional, inputs, outs, ctl[5], "unconditional")
        gr.Examples([["CIFAR-10", 16, 20, 5], ["CIFAR-10", 16, 60, 1], ["CIFAR-10", 16, 20, 10],
                     ["CelebA 64", 9, 10, 5], ["CIFAR-10", 64, 20, 10]],
                    inputs=[weights, ctl[0], ctl[1], ctl[7]], label="Settings to try",
                    example_labels=["CIFAR-10, 5 sweeps x 20 steps (default)",
                                    "one chain of 60 steps from noise (no sweeps)",
                                    "the FID's sampler: 10 sweeps x 20 steps",
                                    "Faces, 9 x 5 sweeps x 10 steps",
                                    "CIFAR-10, 64 x 10 sweeps x 20 steps (slow on CPU)"])

    def _tab_lookalikes(self) -> None:
        """The Look-alikes tab's controls, outputs, wiring and examples."""
        gr.Markdown("Upload one or more photos: their encoder latents z̄ guide SGLD on E(x, z̄), so the "
                    "samples share what the photos have in common.")
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(file_count="multiple", file_types=["image"], label="Reference images",
                                elem_id="lookalikes-files")
                weights, offered, usable = self._encoding_weights("lookalikes")
                ctl = self._controls("lookalikes", "instance")
                run, stop = self._buttons("lookalikes", usable)
            with gr.Column(scale=4):
                seen = self._seen("What the model sees", "lookalikes-seen")
                outs = self._outputs("lookalikes")
        inputs = [files, weights, *ctl]
        self._wire(run, stop, self.lookalikes, inputs, outs, ctl[5], "lookalikes", [seen])
        self._examples([([_example("cifar10_cat.jpg")], "CIFAR-10", "a cat"),
                        ([_example("cifar10_ship.jpg"), _example("cifar10_airplane.jpg")], "CIFAR-10",
                         "a ship and a plane"),
                        ([_example("cifar10_horse.jpg")], "CIFAR-10", "a horse"),
                        ([_example("celeba_000001.jpg"), _example("celeba_000018.jpg")], "CelebA 64",
                         "two smiling women")], [files, weights], offered)

    def _tab_classes(self) -> None:
        """The Classes tab's controls, outputs, wiring and examples."""
        gr.Markdown("Guide SGLD toward a CIFAR-10 class: its encoder latents, shipped with the weights, "
                    + ("as the mean latent of the class minus the mean of all images (what sets the class apart, "
                       "which judged best)" if DEFAULTS.direction("class") == "contrast" else
                       "as the mean latent of the class") + ".")
        with gr.Row():
            with gr.Column(scale=2):
                names = self._class_names()
                cls = gr.Radio(names, value=names[3] if len(names) > 3 else names[0], label="Class",
                               elem_id="classes-class")
                ctl = self._controls("classes", "class")
                run, stop = self._buttons("classes")
            with gr.Column(scale=4):
                outs = self._outputs("classes")
        self._wire(run, stop, self.classes, [cls, *ctl], outs, ctl[5], "classes")
        examples = [c for c in CLASS_EXAMPLES if c in names]
        if examples:
            gr.Examples([[c] for c in examples], inputs=[cls], label="Classes to try",
                        example_labels=examples)

    def _tab_faces(self) -> None:
        """The Faces tab's controls, outputs, wiring and examples."""
        gr.Markdown("Compose attributes on the CelebA weights: AND pulls the samples toward an "
                    "attribute's latent, NOT pushes them away (energy ½‖f‖² − β Σ ±cos).")
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row():
                    young = gr.Radio(list(D.ATTRIBUTE_CHOICES), value=DEFAULT_FACES["Young"], label="Young",
                                     elem_id="faces-young")
                    female = gr.Radio(list(D.ATTRIBUTE_CHOICES), value=DEFAULT_FACES["Female"], label="Female",
                                      elem_id="faces-female")
                    smiling = gr.Radio(list(D.ATTRIBUTE_CHOICES), value=DEFAULT_FACES["Smiling"], label="Smiling",
                                       elem_id="faces-smiling")
                ctl = self._controls("faces", "attributes")
                run, stop = self._buttons("faces")
            with gr.Column(scale=4):
                outs = self._outputs("faces")
        self._wire(run, stop, self.faces, [young, female, smiling, *ctl], outs, ctl[5], "faces")
        gr.Examples([["AND", "off", "AND"], ["AND", "AND", "AND"], ["off", "NOT", "AND"],
                     ["NOT", "off", "NOT"]],
                    inputs=[young, female, smiling], label="Combinations",
                    example_labels=["young AND smiling (the default)", "young AND female AND smiling",
                                    "male (NOT female) AND smiling", "NOT young, NOT smiling"])

    def _tab_interpolate(self) -> None:
        """The Interpolate tab's controls, outputs, wiring and examples."""
        gr.Markdown("Two images, and samples whose latents walk the sphere from A's to B's (slerp): "
                    "one chain per point of the path.")
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row():
                    fa = gr.File(file_count="single", file_types=["image"], label="Image A",
                                 elem_id="interpolate-a")
                    fb = gr.File(file_count="single", file_types=["image"], label="Image B",
                                 elem_id="interpolate-b")
                weights, offered, usable = self._encoding_weights("interpolate")
                ctl = self._controls("interpolate", "interpolate", n=8)
                run, stop = self._buttons("interpolate", usable)
            with gr.Column(scale=4):
                seen = self._seen("What the model sees (A, B)", "interpolate-seen")
                outs = self._outputs("interpolate")
        self._wire(run, stop, self.interpolate, [fa, fb, weights, *ctl], outs, ctl[5], "interpolate",
                   [seen])
        self._examples([(_example("cifar10_cat.jpg"), _example("cifar10_ship.jpg"), "CIFAR-10",
                         "cat → ship"),
                        (_example("cifar10_horse.jpg"), _example("cifar10_automobile.jpg"), "CIFAR-10",
                         "horse → car"),
                        (_example("celeba_000003.jpg"), _example("celeba_000001.jpg"), "CelebA 64",
                         "face → face")], [fa, fb, weights], offered)

    @staticmethod
    def _seen(label: str, elem_id: str) -> gr.Gallery:
        """Thumbnails at their own (square) aspect: fixed columns, no stretching to the row's width, no cropping."""
        return gr.Gallery(label=label, columns=8, rows=1, height=180, object_fit="contain", fit_columns=False,
                          allow_preview=True, elem_id=elem_id)

    @staticmethod
    def _examples(rows: list[tuple], inputs: list, offered: list[str]) -> None:
        """Examples whose weights (the row's second-to-last item) are offered; the others could not work."""
        rows = [r for r in rows if r[-2] in offered]
        if rows:
            gr.Examples([list(r[:-1]) for r in rows], inputs=inputs, label="Examples",
                        example_labels=[r[-1] for r in rows])

    def _class_names(self) -> list[str]:
        try:
            names = self.store.get("cifar10").class_names()
        except D.DemoError:
            names = []
        return names or list(CIFAR10_CLASSES)


def build_app(cifar10: str | None = None, celeba: str | None = None, limits: D.Limits | None = None,
              preload: bool = True) -> gr.Blocks:
    """The demo Blocks with its queue; weights default to the env variables, then the bundled folders."""
    store = D.ModelStore({"cifar10": cifar10, "celeba": celeba})
    if preload:  # load now, so the first click streams at once (a failure is remembered and shown)
        for kind in D.MODEL_SPECS:
            store.status(kind)
    app = DemoApp(store, limits)
    demo = app.build()
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.clel_app = app  # for tests: the store and limits behind the UI
    return demo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="CLEL live demo (Gradio)")
    p.add_argument("--cifar10", help="CIFAR-10 weights: export folder or Hub repo id (env CLEL_WEIGHTS_CIFAR10)")
    p.add_argument("--celeba", help="CelebA weights: export folder or Hub repo id (env CLEL_WEIGHTS_CELEBA)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = p.parse_args(argv)
    try:
        demo = build_app(args.cifar10, args.celeba)
        # the app keeps no gr.State, so old sessions can go: Gradio's default keeps 10,000 (about 0.3 MB each)
        demo.launch(server_name=args.host, server_port=args.port, max_file_size="25mb", css=CSS,
                    footer_links=["api", "settings"], state_session_capacity=256)
    except KeyboardInterrupt:  # stopped while loading the weights, before the server listened
        pass


if __name__ == "__main__":
    main()
