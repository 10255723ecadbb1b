"""The Gradio page: the header naming each model, five tabs (each a chain's inputs, its settings, Sample and Stop,
and the live view) wired to a :class:`clel_app.live.LiveChains`, and the model-card page."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gradio as gr

from clel.config import CLELConfig as SPEC  # SPEC's chain constants are the config's defaults
from clel.data import CIFAR10_CLASSES
from clel.sampling import ChainSettings, chain_fields
from clel_app.chains import ATTRIBUTE_CHOICES
from clel_app.limits import DEFAULT_SAMPLES
from clel_app.live import EMPTY_CURVE, LiveChains
from clel_app.messages import DemoError
from clel_app.models import MODEL_CHOICES

EXAMPLES = Path(__file__).resolve().parent / "examples"
CARDS_PATH = "model-cards"  # the model-card page; linked relatively from the header
DEFAULT_FACES = {"Young": "AND", "Female": "off", "Smiling": "AND"}  # opens on a composition, not on "all off"
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
which clears the pixel noise a single chain keeps. **Start from** the model's own long-run chains (the replay
buffer shipped with its weights, continued by training for thousands of steps) to see what the model has learned
beyond what one chain from noise shows. Pixels are upscaled for display; the full-resolution grid is downloadable at
the end.
"""


def _example(name: str) -> str:
    return str(EXAMPLES / name)


class Layout:
    """The demo's Blocks over the handlers of ``live`` (its store says which weights each tab may offer)."""

    def __init__(self, live: LiveChains):
        self.live = live
        self.store = live.store
        self.limits = live.limits

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

    # -- the header and the model-card page (visitors see these: no server paths) ----------------------------
    def _header(self) -> str:
        """Each model's name, size, training and model card."""
        lines = []
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except DemoError as e:
                lines.append(f"- **{label}**: not available: {e}")
                continue
            title, _, _ = lm.card()
            parts = [title, lm.size()]
            if lm.iteration is not None:
                parts.append(f"{lm.iteration:,} training iterations")
            if not lm.has_encoder:
                parts.append("no encoder h, so no look-alikes or interpolation")
            if lm.buffer_images:
                parts.append(f"replay buffer of {lm.buffer_images:,} long-run chains")
            parts.append(lm.where())
            if lm.hub_url:
                parts.append(f"[model card]({lm.hub_url})")
            elif lm.card_path() is not None:
                parts.append(f"[model card]({CARDS_PATH}#card-{kind})")
            else:
                parts.append("no model card")
            lines.append(f"- **{label}**: " + " · ".join(parts))
        return "**Models**  \n" + "\n".join(lines)

    def _model_cards(self) -> None:
        """The model-card page: each export's README.md, its images served as image components."""
        gr.Markdown("# Model cards\nThe README.md shipped with each model's weights. [Back to the demo](./)")
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except DemoError as e:
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

    # -- the tabs ---------------------------------------------------------------------------------------------
    def _tab_unconditional(self) -> None:
        gr.Markdown("SGLD on the marginal energy E(x): what the model believes images look like.")
        (weights,), ctl = self._chain_tab(
            "unconditional", self.live.unconditional,
            lambda: ([gr.Radio(list(MODEL_CHOICES), value="CIFAR-10", label="Weights")], True))
        gr.Examples([["CIFAR-10", 16, 20, 5], ["CIFAR-10", 16, 60, 1], ["CIFAR-10", 16, 20, 10],
                     ["CelebA", 9, 10, 5], ["CIFAR-10", 64, 20, 10]],
                    inputs=[weights, ctl[0], ctl[1], ctl[7]], label="Settings to try",
                    example_labels=["CIFAR-10, 5 sweeps x 20 steps (default)",
                                    "one chain of 60 steps from noise (no sweeps)",
                                    "the FID's sampler: 10 sweeps x 20 steps",
                                    "Faces, 9 x 5 sweeps x 10 steps",
                                    "CIFAR-10, 64 x 10 sweeps x 20 steps (slow on CPU)"])

    def _tab_lookalikes(self) -> None:
        gr.Markdown("Upload one or more photos: their encoder latents z̄ guide SGLD on E(x, z̄), so the "
                    "samples share what the photos have in common.")
        offered, note = self._encoding_choices()

        def choose() -> tuple[list, bool]:
            files = gr.File(file_count="multiple", file_types=["image"], label="Reference images",
                            elem_id="lookalikes-files")
            return [files, self._encoding_weights("lookalikes", offered, note)], bool(offered)

        inputs, _ = self._chain_tab("lookalikes", self.live.lookalikes, choose, "instance",
                                    seen="What the model sees")
        self._examples([([_example("cifar10_cat.jpg")], "CIFAR-10", "a cat"),
                        ([_example("cifar10_ship.jpg"), _example("cifar10_airplane.jpg")], "CIFAR-10",
                         "a ship and a plane"),
                        ([_example("cifar10_horse.jpg")], "CIFAR-10", "a horse"),
                        ([_example("celeba_000001.jpg"), _example("celeba_000018.jpg")], "CelebA",
                         "two smiling women")], inputs, offered)

    def _tab_classes(self) -> None:
        gr.Markdown("Guide SGLD toward a CIFAR-10 class: its encoder latents, shipped with the weights, "
                    + ("as the mean latent of the class minus the mean of all images (what sets the class apart, "
                       "which judged best)" if ChainSettings.measured(None, "class").direction == "contrast" else
                       "as the mean latent of the class") + ".")
        names = self._class_names()
        (cls,), _ = self._chain_tab(
            "classes", self.live.classes,
            lambda: ([gr.Radio(names, value=names[3] if len(names) > 3 else names[0], label="Class",
                               elem_id="classes-class")], True), "class")
        examples = [c for c in CLASS_EXAMPLES if c in names]
        if examples:
            gr.Examples([[c] for c in examples], inputs=[cls], label="Classes to try",
                        example_labels=examples)

    def _tab_faces(self) -> None:
        gr.Markdown("Compose attributes on the CelebA weights: AND pulls the samples toward an "
                    "attribute's latent, NOT pushes them away (energy ½‖f‖² − β Σ ±cos).")

        def choose() -> tuple[list, bool]:
            with gr.Row():
                return [gr.Radio(list(ATTRIBUTE_CHOICES), value=value, label=attr, elem_id=f"faces-{attr.lower()}")
                        for attr, value in DEFAULT_FACES.items()], True

        radios, _ = self._chain_tab("faces", self.live.faces, choose, "attributes")
        gr.Examples([["AND", "off", "AND"], ["AND", "AND", "AND"], ["off", "NOT", "AND"],
                     ["NOT", "off", "NOT"]],
                    inputs=radios, label="Combinations",
                    example_labels=["young AND smiling (the default)", "young AND female AND smiling",
                                    "male (NOT female) AND smiling", "NOT young, NOT smiling"])

    def _tab_interpolate(self) -> None:
        gr.Markdown("Two images, and samples whose latents walk the sphere from A's to B's (slerp): "
                    "one chain per point of the path.")
        offered, note = self._encoding_choices()

        def choose() -> tuple[list, bool]:
            with gr.Row():
                files = [gr.File(file_count="single", file_types=["image"], label=f"Image {ab}",
                                 elem_id=f"interpolate-{ab.lower()}") for ab in "AB"]
            return [*files, self._encoding_weights("interpolate", offered, note)], bool(offered)

        inputs, _ = self._chain_tab("interpolate", self.live.interpolate, choose, "interpolate", n=8,
                                    seen="What the model sees (A, B)")
        self._examples([(_example("cifar10_cat.jpg"), _example("cifar10_ship.jpg"), "CIFAR-10",
                         "cat → ship"),
                        (_example("cifar10_horse.jpg"), _example("cifar10_automobile.jpg"), "CIFAR-10",
                         "horse → car"),
                        (_example("celeba_000003.jpg"), _example("celeba_000001.jpg"), "CelebA",
                         "face → face")], inputs, offered)

    # -- what every tab has -----------------------------------------------------------------------------------
    def _chain_tab(self, prefix: str, handler: Callable, choose: Callable[[], tuple[list, bool]],
                   mode: str = "unconditional", n: int = DEFAULT_SAMPLES,
                   seen: str | None = None) -> tuple[list, list]:
        """A tab's two columns, wired to ``handler`` (its API endpoint is ``/prefix``): what to sample (``choose``
        makes those inputs and says whether Sample can work), the chain settings and the buttons; beside them
        what the model sees of the uploads (``seen``: its label, for tabs that read photos) and the live view.
        Returns the inputs and the chain settings."""
        with gr.Row():
            with gr.Column(scale=2):
                inputs, usable = choose()
                ctl = self._controls(prefix, mode, n)
                run, stop = self._buttons(prefix, usable)
            with gr.Column(scale=4):
                extra = [self._seen(seen, f"{prefix}-seen")] if seen else []
                outs = self._outputs(prefix)
        settings = [*ctl[:4], *ctl[5:]] if mode == "unconditional" else ctl  # the hidden slider is no input
        self._wire(run, stop, handler, [*inputs, *settings], outs, ctl[5], prefix, extra)
        return inputs, ctl

    def _controls(self, prefix: str, mode: str = "unconditional", n: int = DEFAULT_SAMPLES,
                  ) -> list[gr.components.Component]:
        lim = self.limits
        defaults = ChainSettings.demo(None, mode)
        with gr.Accordion("Chain settings", open=True):
            with gr.Row():
                c_n = gr.Slider(1, lim.max_samples, value=min(n, lim.max_samples), step=1, label="Samples",
                                elem_id=f"{prefix}-n")
                c_steps, c_sweeps = (self._setting(prefix, name, defaults) for name in ("steps", "sweeps"))
            with gr.Row():
                c_size, c_noise = (self._setting(prefix, name, defaults) for name in ("step_size", "noise"))
            # no guidance without a condition
            c_guid = self._setting(prefix, "guidance", defaults, visible=mode != "unconditional")
            c_start = self._choice(prefix, "start", defaults)
            with gr.Row():
                c_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                c_rand = gr.Checkbox(value=True, label="Randomize seed")
        return [c_n, c_steps, c_size, c_noise, c_guid, c_seed, c_rand, c_sweeps, c_start]

    def _setting(self, prefix: str, name: str, defaults: ChainSettings, **kw) -> gr.Slider:
        """The slider of a chain setting, made from its field: label, range, help and the demo's default."""
        f = chain_fields()[name]
        meta = f.metadata
        low, high, step = meta.get("slider") or (*self.limits.range(f), 1)
        info = meta.get("info", "").format(default=f.default, training_beta=SPEC.beta)
        if meta.get("bounded") and defaults.guidance_bound:
            info += meta["bounded"].format(**vars(defaults))
        return gr.Slider(low, high, value=min(getattr(defaults, name), high), step=step, label=meta["label"],
                         elem_id=f"{prefix}-{name}" if meta.get("elem_id") else None, info=info or None, **kw)

    @staticmethod
    def _choice(prefix: str, name: str, defaults: ChainSettings) -> gr.Radio:
        """The radio of a chain setting with choices, made from its field: label, the choices' labels, help."""
        meta = chain_fields()[name].metadata
        return gr.Radio([(meta["labels"][c], c) for c in meta["choices"]], value=getattr(defaults, name),
                        label=meta["label"], elem_id=f"{prefix}-{name}" if meta.get("elem_id") else None)

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

    @staticmethod
    def _buttons(prefix: str, usable: bool = True) -> tuple[gr.Button, gr.Button]:
        with gr.Row():
            run = gr.Button("Sample", variant="primary", elem_id=f"{prefix}-sample", interactive=usable)
            stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
        return run, stop

    def _wire(self, run: gr.Button, stop: gr.Button, fn: Callable, inputs: list, outputs: list, seed: gr.Number,
              api_name: str, extra_outputs: list) -> None:
        img, plot, download, status = outputs
        # Sample first clears this session's Stop request (instantly, outside the queue), then queues the chain.
        # Stop asks the running chain to end after its current step: the chain itself then shows its last
        # samples as the final frame, marked Stopped, with the download. Stopping from inside rather than
        # cancelling the event leaves no half-finished request for the page to report as an error.
        run.click(self.live.arm, None, None, queue=False, show_progress="hidden", api_visibility="private").then(
            fn, inputs=inputs, outputs=[img, plot, download, status, seed, *extra_outputs],
            api_name=api_name, concurrency_id="sgld", concurrency_limit=1, show_progress="minimal")
        stop.click(self.live.request_stop, None, None, queue=False, show_progress="hidden",
                   api_visibility="private")

    @staticmethod
    def _seen(label: str, elem_id: str) -> gr.Gallery:
        """Thumbnails at their own (square) aspect: fixed columns, no stretching to the row's width, no cropping."""
        return gr.Gallery(label=label, columns=8, rows=1, height=180, object_fit="contain", fit_columns=False,
                          allow_preview=True, elem_id=elem_id)

    # -- which weights and examples a tab may offer -----------------------------------------------------------
    def _encoding_choices(self) -> tuple[list[str], str]:
        """The weights that can encode photos (look-alikes, interpolation), and a note on the ones left out."""
        offered, left_out = [], []
        for label, kind in MODEL_CHOICES.items():
            try:
                lm = self.store.get(kind)
            except DemoError:
                left_out.append(f"{label} is not offered: its weights could not be loaded (see the header).")
                continue
            if lm.has_encoder:
                offered.append(label)
            else:
                left_out.append(f"{label} is not offered: its export has no encoder h (config.json lists only "
                                f"{', '.join(lm.extras.get('parts', ['f', 'g']))}), and encoding a photo needs "
                                f"it. Weights that include h will appear here.")
        return offered, "  \n".join(f"ℹ {m}" for m in left_out)

    @staticmethod
    def _encoding_weights(prefix: str, offered: list[str], note: str) -> gr.Radio:
        """The Weights radio of a tab that encodes photos, with the note saying which weights are missing and why."""
        choices = offered or list(MODEL_CHOICES)
        radio = gr.Radio(choices, value=choices[0], label="Weights", interactive=bool(offered),
                         elem_id=f"{prefix}-weights")
        gr.Markdown(note, visible=bool(note), elem_id=f"{prefix}-weights-note")
        return radio

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
        except DemoError:
            names = []
        return names or list(CIFAR10_CLASSES)
