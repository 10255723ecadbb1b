"""CLEL live demo: watch SGLD turn noise into images, step by step.

    python app/gradio_app.py                      # bundled weights/cifar10 and weights/celeba32, port 7860
    python app/gradio_app.py --cifar10 DIR_OR_REPO --celeba DIR_OR_REPO --port 7861

Weights: ``--cifar10`` / ``--celeba`` or ``CLEL_WEIGHTS_CIFAR10`` / ``CLEL_WEIGHTS_CELEBA`` name an export folder
or a Hugging Face Hub repo id; the default is the bundled folder. A repo id that cannot be fetched (offline,
``HF_HUB_OFFLINE=1``, missing repo) falls back to the bundled copy, and the header says which was used.

Tabs (each one also an API endpoint for ``gradio_client``, named in brackets):
Unconditional [/unconditional] · Look-alikes [/lookalikes] · Classes [/classes] · Faces [/faces] ·
Interpolate [/interpolate]. Each streams the chain: the image grid and the energy curve update every few steps.
A second page, /model-cards, shows each model's README.md; the header links to it.

The page is :mod:`clel_app.layout`, its handlers :mod:`clel_app.live`; this file starts the server.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

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

from clel_app.layout import CSS, Layout  # noqa: E402  (imports Gradio: after the temp folder is set)
from clel_app.limits import Limits  # noqa: E402
from clel_app.live import LiveChains  # noqa: E402
from clel_app.models import MODEL_SPECS, ModelStore  # noqa: E402


def build_app(cifar10: str | None = None, celeba: str | None = None, limits: Limits | None = None,
              preload: bool = True) -> gr.Blocks:
    """The demo Blocks with its queue; weights default to the env variables, then the bundled folders."""
    store = ModelStore({"cifar10": cifar10, "celeba": celeba})
    if preload:  # load now, so the first click streams at once (a failure is remembered and shown)
        for kind in MODEL_SPECS:
            store.status(kind)
    live = LiveChains(store, limits)
    demo = Layout(live).build()
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.clel_app = live  # for tests and benchmarks: the handlers, store and limits behind the UI
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
