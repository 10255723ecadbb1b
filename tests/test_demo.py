"""The apps' helpers (clel_app) and clel.eval.ood: upload validation, caps, grids, live frames, weights store, OOD
references."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from clel.data import to_uint8
from clel.energy import energy, ood_score
from clel.eval.metrics import tpr_threshold
from clel.eval.ood import (REFERENCE_NAME, OODReference, compute_reference, load_reference, model_fingerprint,
                      save_reference, score_images)
from clel.images import grid_array, images_to_tensor, upscale
from clel.sampling import ChainSettings, Condition, run_chain, sample
from clel.weights import REPO_ROOT
from clel_app import chains
from clel_app.chains import (ACTIVE_CHAINS, EnergyHistory, attribute_condition, attribute_plan, energy_figure,
                             frame_every, interpolation_plan, lookalike_plan, stream_frames, unconditional_plan)
from clel_app.limits import Limits, clamp_request as clamp_controls
from clel_app.messages import DemoError, redact_paths, shown_path
from clel_app.models import ModelStore, default_weights, make_demo_exports
from clel_app.ood_report import ood_histogram, round_sig, scores_csv
from clel_app.uploads import ImageError, decode_image


# ---------------------------------------------------------------------------------------------------------------
# Image files, good and bad (shared with the app tests)
# ---------------------------------------------------------------------------------------------------------------

def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg_bytes(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bad_files() -> dict[str, bytes]:
    """name -> content of uploads that must be refused."""
    jpg = jpeg_bytes((64, 64))
    return {
        "notes.png": b"this is not an image, just text\n" * 10,
        "truncated.jpg": jpg[: len(jpg) // 2],
        "empty.png": b"",
    }


def odd_files() -> dict[str, bytes]:
    """name -> content of unusual but valid images that must be converted to RGB."""
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 128))
    gray = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), "L")
    g16 = Image.fromarray((np.tile(np.linspace(0, 65535, 32), (32, 1))).astype(np.uint16))
    rgb16 = np.zeros((32, 32, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32896  # 128 * 257
    return {"rgba.png": png_bytes(rgba), "gray.png": png_bytes(gray), "gray16.png": png_bytes(g16),
            "rgb16.png": png16_rgb(rgb16)}


def huge_png(path, megapixels: float = 50.0) -> None:
    """A real ``megapixels`` grayscale PNG (compresses to a few hundred KB)."""
    side = int((megapixels * 1e6) ** 0.5) + 1
    Image.new("L", (side, side), 0).save(path, format="PNG", compress_level=1)


def clamp_request(n, steps, step_size=100, noise=0.001, guidance=None, seed=0, limits=None, sweeps=1):
    """The controls of a tab, in the order its handler takes them (guidance None: the unconditional tab's)."""
    controls = {"n": n, "steps": steps, "step_size": step_size, "noise": noise, "seed": seed, "sweeps": sweeps}
    return clamp_controls(controls if guidance is None else {**controls, "guidance": guidance}, limits)


# ---------------------------------------------------------------------------------------------------------------
# decode_image
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("notes.png", "not an image file"),
    ("truncated.jpg", "truncated"),
    ("empty.png", "empty (0 bytes)"),
])
def test_bad_uploads_get_clear_messages(name, expected):
    with pytest.raises(ImageError) as e:
        decode_image(bad_files()[name], name)
    assert name in str(e.value) and expected in str(e.value)


def test_decompression_bomb_refused_from_header(tmp_path):
    path = tmp_path / "huge.png"
    huge_png(path)
    with pytest.raises(ImageError, match=r"huge\.png: the image is 7072x7072 = 50\.0 megapixels; the limit is 25"):
        decode_image(path)


def test_upload_size_limit(tmp_path):
    lim = Limits(max_upload_bytes=1000)
    with pytest.raises(ImageError, match="the limit is 0 MiB|MiB; the limit"):
        decode_image(b"x" * 2000, "big.bin", lim)
    p = tmp_path / "big.png"
    p.write_bytes(b"x" * 2000)
    with pytest.raises(ImageError, match="big.png: the file is"):
        decode_image(p, limits=lim)


def test_rgba_composited_over_white():
    d = decode_image(odd_files()["rgba.png"], "rgba.png")
    px = np.asarray(d.image)[0, 0]
    assert d.image.mode == "RGB" and abs(int(px[0]) - 255) <= 1 and abs(int(px[1]) - 127) <= 2
    assert "transparent pixels composited over white" in d.note and d.original_mode == "RGBA"


def test_grayscale_and_16bit_scaled_not_clipped():
    g = np.asarray(decode_image(odd_files()["gray.png"], "gray.png").image)
    assert (g[..., 0] == g[..., 1]).all() and g[0, 1, 0] == 8
    d16 = decode_image(odd_files()["gray16.png"], "gray16.png")
    a = np.asarray(d16.image)[0, :, 0].astype(int)
    assert "16-bit grayscale converted to 8-bit RGB" in d16.note
    assert a[0] == 0 and a[-1] == 255 and 100 < a[16] < 160  # a ramp, not clipped to white
    rgb = np.asarray(decode_image(odd_files()["rgb16.png"], "rgb16.png").image)
    assert tuple(rgb[5, 5]) == (255, 128, 0)


def test_cmyk_and_transparent_palette():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, format="JPEG")
    d = decode_image(buf.getvalue(), "cmyk.jpg")
    r, g, b = np.asarray(d.image)[8, 8].astype(int)
    assert d.note == "CMYK converted to RGB" and r > 200 and g < 60 and b < 60
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    d = decode_image(png_bytes(p), "pal.png")
    assert tuple(np.asarray(d.image)[0, 0]) == (255, 255, 255) and "composited over white" in d.note


def test_large_photo_downscaled_and_cropped():
    d = decode_image(jpeg_bytes((2000, 1000)), "wide.jpg")
    assert max(d.image.size) <= 512 and d.original_size == (2000, 1000)
    x = images_to_tensor([d.image], 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert abs(float(x[0, 0].mean()) - 200 / 255) < 0.05  # the red of the photo survives


# ---------------------------------------------------------------------------------------------------------------
# Caps, grids, figures
# ---------------------------------------------------------------------------------------------------------------

def test_requests_are_capped_on_the_server():
    req = clamp_request(500, 5000, 100, 0.001, 1.0, 7)
    assert (req.n, req.settings.steps, req.seed) == (64, 1000, 7)
    assert any("number of samples 500" in n for n in req.notes) and any("steps 5000" in n for n in req.notes)
    assert clamp_request("3", 0.4, 1e9, -1, 0).settings.steps == 1
    assert clamp_request(1, 1, 1e9).settings.step_size == 1000
    with pytest.raises(DemoError, match="steps must be finite"):
        clamp_request(4, float("nan"))
    with pytest.raises(DemoError, match="number of samples must be a number"):
        clamp_request("many", 10)


def test_grid_and_upscale():
    x = torch.rand(5, 3, 32, 32)
    g = grid_array(x)  # 3 per row, 2 rows, 2-pixel white padding
    assert g.shape == (2 * 34 + 2, 3 * 34 + 2, 3) and g.dtype == np.uint8
    assert (g[:2] == 255).all()
    assert np.array_equal(g[2:34, 2:34], to_uint8(x)[0].permute(1, 2, 0).numpy())
    up = upscale(g)
    f = up.shape[0] // g.shape[0]
    assert f == 560 // g.shape[1] and np.array_equal(up[::f, ::f], g)
    assert grid_array(x, nrow=5).shape[1] == 5 * 34 + 2


def test_energy_figure_traces():
    h = EnergyHistory()
    for s in range(4):
        h.add(s, torch.tensor([1.0, 2.0, 3.0]) - s)
    fig = energy_figure(h, 10)
    names = [t.name for t in fig.data]
    assert names == ["min–max over samples", "mean energy"]
    assert list(fig.data[1].y) == [2.0, 1.0, 0.0, -1.0] and fig.layout.xaxis.range == (-0.5, 10.5)
    h.add(4, torch.zeros(3))  # the chain goes on while the figure is sent: the figure must not change
    assert len(fig.data[1].x) == 4 and len(fig.data[0].x) == 8


def test_energy_figure_long_label_stays_out_of_the_title():
    """A composition's label goes into the title; the rotated y label stays short, the title in the top margin."""
    label = "E(x, AND Young AND Female AND Smiling)"
    fig = energy_figure(EnergyHistory(), 100, ylabel=label)
    lay = fig.layout
    assert label in lay.title.text and lay.yaxis.title.text == "energy"
    plot_height = lay.height - lay.margin.t - lay.margin.b
    assert len(lay.yaxis.title.text) * 9 < plot_height  # ~9 px a character at 14 px: fits beside the plot area
    assert (lay.title.yref, lay.title.yanchor) == ("container", "top")
    title_bottom = (1 - lay.title.y) * lay.height + 1.5 * lay.title.font.size
    assert title_bottom < lay.margin.t  # the title ends above the plot area (where the y label starts)


# ---------------------------------------------------------------------------------------------------------------
# Live chains on a tiny random export
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    g = torch.Generator().manual_seed(1)
    sets = {k: torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
            for k in ("cifar10_test", "dtd", "cifar10_interp", "celeba32")}
    sets["dtd"] = sets["dtd"] // 4  # darker, so the sets differ
    return make_demo_exports(root, reference_images=sets)


@pytest.fixture(scope="module")
def store(exports):
    return ModelStore({"cifar10": str(exports["cifar10"]), "celeba": str(exports["celeba"])})


def test_stream_frames_noise_first_then_every_k(store):
    lm = store.get("cifar10")
    req = clamp_request(3, 12, 100, 0.001, 1.0, 5)
    frames = list(stream_frames(unconditional_plan(lm, req), req.settings.steps, every=4, min_interval=1e9))
    assert [f.step for f in frames] == [0, 4, 8, 12] and [f.final for f in frames] == [False] * 3 + [True]
    assert len(frames[-1].history) == 13  # E(x0) ... E(x12)
    # the first frame is the chain's starting noise, the last one the library's own samples for that seed
    g = torch.Generator().manual_seed(5)
    noise = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.equal(frames[0].x, noise)
    ref = sample(lm.model, 3, settings=ChainSettings(steps=12, step_size=100, noise=0.001),
                 generator=torch.Generator().manual_seed(5))
    assert torch.equal(frames[-1].x, ref)
    assert frame_energy_matches(lm, frames[-1])


def test_sweeps_stream_across_sweeps_and_match_the_library_sampler(store):
    lm = store.get("cifar10")
    req = clamp_request(2, 4, 100, 0.001, 1.0, 9, None, 3)
    assert (req.settings.sweeps, req.total_steps) == (3, 12) and req.settings.augment
    frames = list(stream_frames(unconditional_plan(lm, req), req.total_steps, every=4, min_interval=1e9))
    assert [f.step for f in frames] == [0, 4, 8, 12] and len(frames[-1].history) == 13
    st = ChainSettings(steps=4, step_size=100, noise=0.001, sweeps=3, augment=True)
    ref = sample(lm.model, 2, settings=st, generator=torch.Generator().manual_seed(9))
    assert torch.equal(frames[-1].x, ref)
    assert not clamp_request(2, 4).settings.augment  # one sweep: the plain chain


def test_sweeps_are_capped_and_share_the_step_budget():
    req = clamp_request(2, 600, 100, 0.001, 1.0, 0, None, 50)
    assert req.settings.sweeps == 20 and req.settings.steps == 50 and req.total_steps == 1000
    assert any("sweeps 50 is outside [1, 20]" in n for n in req.notes)
    assert any("using 50 steps per sweep" in n for n in req.notes)
    with pytest.raises(DemoError, match="sweeps must be a number"):
        clamp_request(2, 10, sweeps="lots")


def frame_energy_matches(lm, frame) -> bool:
    with torch.no_grad():
        return abs(float(energy(lm.model, frame.x).mean()) - frame.history.mean[-1]) < 1e-5


def test_default_frame_rate_gives_enough_frames():
    assert frame_every(60) == 3 and frame_every(10) == 1 and frame_every(1000) == 50


def test_closing_the_stream_stops_the_chain(store):
    lm = store.get("cifar10")
    req = clamp_request(2, 1000, 100, 0.001, 1.0, 0)
    gen = stream_frames(unconditional_plan(lm, req), req.settings.steps, every=1)
    for _ in range(3):
        next(gen)
    assert list(ACTIVE_CHAINS.values()) == [2]
    gen.close()
    assert ACTIVE_CHAINS == {}


def test_stop_request_ends_the_chain_with_its_samples_so_far(store):
    lm = store.get("cifar10")
    req = clamp_request(2, 1000, 100, 0.001, 1.0, 3)
    steps_done = []
    frames = list(stream_frames(unconditional_plan(lm, req), req.settings.steps, every=1, on_step=steps_done.append,
                                  should_stop=lambda: len(steps_done) >= 5))
    assert [f.step for f in frames] == [0, 1, 2, 3, 4, 5] and steps_done == [1, 2, 3, 4, 5]
    assert frames[-1].final and frames[-1].stopped and not any(f.stopped for f in frames[:-1])
    ref = sample(lm.model, 2, settings=ChainSettings(steps=5, step_size=100, noise=0.001),
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(frames[-1].x, ref)  # the samples after 5 steps of the same chain
    assert frame_energy_matches(lm, frames[-1]) and ACTIVE_CHAINS == {}
    # a stop requested before the chain started (while it was queued) gives the starting noise, no steps
    frames = list(stream_frames(unconditional_plan(lm, req), req.settings.steps, should_stop=lambda: True))
    assert [(f.step, f.final, f.stopped) for f in frames] == [(0, False, False), (0, True, True)]
    # a chain that finishes its last step is done, not stopped
    req = clamp_request(2, 3, 100, 0.001, 1.0, 3)
    *_, last = stream_frames(unconditional_plan(lm, req), req.settings.steps, should_stop=lambda: True)
    assert last.step == 0 and last.stopped  # asked before any step: stopped at 0
    *_, last = stream_frames(unconditional_plan(lm, req), req.settings.steps, on_step=steps_done.append,
                               should_stop=lambda: len(steps_done) >= 8)
    assert last.step == 3 and last.final and not last.stopped


def test_interpolation_plan_is_the_library_chain(store, tmp_path):
    lm = store.get("cifar10")
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    req = clamp_request(4, 3, 100, 0.001, 2.0, 11)
    *_, last = stream_frames(interpolation_plan(lm, a, b, req), req.settings.steps)
    *_, ref = run_chain(lm.model, 4, Condition.interpolate(a, b), settings=req.settings,
                        generator=torch.Generator().manual_seed(11))
    assert torch.equal(last.x, ref.x)


def test_attribute_condition(store):
    lm = store.get("celeba")
    cond = attribute_condition(lm, {"Young": "off", "Female": "AND", "Smiling": "NOT"})
    assert cond.weights == (1.0, -1.0) and cond.label == "E(x, AND Female NOT Smiling)"
    assert torch.equal(cond.latents[0], lm.extras["attribute_latents"][1])
    assert attribute_condition(lm, {"Young": "off"}).mode == "unconditional"
    # "Male" is served by the stored Female latent with the opposite sign
    assert attribute_condition(lm, {"Male": "AND"}).weights == (-1.0,)
    with pytest.raises(DemoError, match="choose one of off, AND, NOT"):
        attribute_condition(lm, {"Young": "maybe"})
    with pytest.raises(DemoError, match="no attribute latents"):
        attribute_condition(store.get("cifar10"), {"Young": "AND"})
    plan = attribute_plan(lm, {"Young": "off", "Female": "off", "Smiling": "off"}, clamp_request(2, 2))
    assert plan.notes == ["no attribute selected: unconditional faces"]


def test_class_latent_errors(store):
    lm = store.get("cifar10")
    assert lm.class_names()[3] == "cat" and lm.class_latent("cat").shape == (lm.cfg.feature_dim,)
    with pytest.raises(DemoError, match="unknown class 'unicorn'; choose one of airplane"):
        lm.class_latent("unicorn")
    with pytest.raises(DemoError, match="no class prototypes"):
        store.get("celeba").class_latent("cat")


def test_store_reports_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("CLEL_WEIGHTS_CIFAR10", raising=False)
    assert default_weights("cifar10").endswith(os.path.join("weights", "cifar10"))
    monkeypatch.setenv("CLEL_WEIGHTS_CIFAR10", str(tmp_path / "nowhere"))
    s = ModelStore()
    with pytest.raises(DemoError, match="cannot load the cifar10 weights .*point CLEL_WEIGHTS_CIFAR10"):
        s.get("cifar10")
    assert s.status("cifar10").startswith("not available: cannot load")


def test_hub_repo_id_offline_falls_back_to_bundled(exports, tmp_path, monkeypatch):
    import shutil

    from clel import weights as W

    bundled = tmp_path / "bundled"
    shutil.copytree(exports["cifar10"], bundled / "cifar10")
    monkeypatch.setattr(W, "BUNDLED_WEIGHTS", bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    lm = ModelStore({"cifar10": "clel-nobody/cifar10"}).get("cifar10")
    assert lm.source == "bundled"
    assert "bundled copy (the Hub was unavailable or the repo is missing)" in lm.describe()


# ---------------------------------------------------------------------------------------------------------------
# OOD references
# ---------------------------------------------------------------------------------------------------------------

def test_score_images_is_the_library_score(store):
    lm = store.get("cifar10")
    imgs = torch.randint(0, 256, (5, 3, 48, 40), dtype=torch.uint8)
    s, e = score_images(lm.model, imgs, 0.1, batch_size=2)
    from clel.data import resize_images, to_float
    x = to_float(resize_images(imgs, 32))
    assert np.allclose(s, ood_score(lm.model, x, 0.1).numpy(), atol=1e-6)
    with torch.no_grad():
        assert np.allclose(e, energy(lm.model, x).numpy(), atol=1e-6)


def test_reference_roundtrip_threshold_and_fingerprint(exports, store, tmp_path):
    ref = load_reference(exports["cifar10"])
    assert ref is not None and list(ref.scores) == ["cifar10_test", "dtd", "cifar10_interp", "celeba32"]
    assert ref.fingerprint == model_fingerprint(store.get("cifar10").model) and ref.beta == 0.1
    assert ref.threshold(0.95) == tpr_threshold(ref.scores["cifar10_test"], 0.95)
    assert set(ref.aurocs()) == {"dtd", "cifar10_interp", "celeba32"}
    assert load_reference(tmp_path) is None
    (tmp_path / REFERENCE_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_reference(tmp_path)
    r = OODReference(scores={"cifar10_test": np.arange(100.0)}, energies={"cifar10_test": np.zeros(100)}, beta=0.2)
    back = load_reference(save_reference(r, tmp_path / "r.safetensors"))
    assert back.beta == 0.2 and np.array_equal(back.scores["cifar10_test"], np.arange(100.0, dtype=np.float32))
    assert back.percentile(49.0) == 50.0


def test_ood_histogram_traces(exports):
    ref = load_reference(exports["cifar10"])
    fig = ood_histogram(ref, {"a.png": 0.1, "b.png": 0.2})
    names = [t.name for t in fig.data]
    assert names[0].startswith("CIFAR-10 test (in-distribution) (n=40)")
    assert "uploaded images (n=2)" in names and any(n.startswith("threshold at 95% TPR") for n in names)
    assert [t.name for t in ood_histogram(None, {"a": 1.0}).data] == ["uploaded images (n=1)"]


def test_compute_reference_counts(store):
    lm = store.get("cifar10")
    sets = {"cifar10_test": torch.zeros(3, 3, 32, 32, dtype=torch.uint8)}
    ref = compute_reference(lm.model, sets)
    assert ref.info["counts"] == {"cifar10_test": 3} and ref.scores["cifar10_test"].shape == (3,)
    assert json.loads(json.dumps(ref.info))


# ---------------------------------------------------------------------------------------------------------------
# What visitors see: no server paths, model descriptions, encoder-less exports, failures inside a chain
# ---------------------------------------------------------------------------------------------------------------

def test_shown_path_and_redact_paths(tmp_path):
    assert shown_path(REPO_ROOT / "weights" / "cifar10") == os.path.join("weights", "cifar10")
    assert shown_path(tmp_path / "w" / "cifar10") == "cifar10" and shown_path("weights/x") == "weights/x"
    msg = (f"cannot load the cifar10 weights from {tmp_path}/none: {tmp_path}/none: no such folder; "
           f"{REPO_ROOT}/weights/celeba64 was exported; see https://huggingface.co/owner/name or weights/a/b")
    out = redact_paths(msg)
    assert str(tmp_path) not in out and str(REPO_ROOT) not in out
    assert out == ("cannot load the cifar10 weights from none: none: no such folder; weights/celeba64 was exported; "
                   "see https://huggingface.co/owner/name or weights/a/b")


def test_describe_names_the_model_without_server_paths(store, exports):
    lm = store.get("cifar10")
    text = lm.describe()
    assert str(exports["cifar10"].parent) not in text and "/" not in text.replace("weights/", "")
    assert "tiny, 32 px" in text.lower() and "parameters" in text and "from local folder cifar10" in text
    title, body, images = lm.card()
    assert title.startswith("Random CLEL (tiny preset)") and "samples are noise" in body and images == []
    with pytest.raises(DemoError) as e:
        ModelStore({"cifar10": str(exports["cifar10"].parent / "missing")}).get("cifar10")
    assert str(exports["cifar10"].parent) not in str(e.value) and "cannot load the cifar10 weights" in str(e.value)


def test_model_card_of_the_bundled_weights():
    lm = ModelStore({"cifar10": str(REPO_ROOT / "weights" / "cifar10")}).get("cifar10")
    title, body, images = lm.card()
    assert title.startswith("CLEL ") and not body.startswith("---") and "![" not in body
    assert images and all(p.is_file() for p, _ in images)


def test_encoderless_export_refuses_photo_features_in_a_sentence(tmp_path):
    paths = make_demo_exports(tmp_path, celeba_encoder=False)
    assert json.loads((paths["celeba"] / "config.json").read_text())["parts"] == ["f", "g"]
    s = ModelStore({"cifar10": str(paths["cifar10"]), "celeba": str(paths["celeba"])})
    lm = s.get("celeba")
    assert not lm.has_encoder and s.get("cifar10").has_encoder and "no encoder h" in lm.describe()
    req = clamp_request(2, 2)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(DemoError, match=r"^Look-alikes needs the encoder h .* CelebA weights were exported "
                                          r"without it \(their config.json lists only the networks f, g\)"):
        lookalike_plan(lm, x, req)
    with pytest.raises(DemoError, match="^Interpolation needs the encoder h"):
        interpolation_plan(lm, x, x, req)
    assert str(tmp_path) not in lm.describe()
    attribute_plan(lm, {"Young": "AND"}, req)  # the attribute latents are precomputed: Faces still works


class InjectedFailure(RuntimeError):
    """Stands for any unexpected error inside a chain."""


def fail_at_step(monkeypatch, at: int) -> None:
    """From now on (until ``monkeypatch`` is undone) step ``at`` (1-based) of every chain the demo plans raises
    :class:`InjectedFailure`: every tab plans its chain through ``chains.plan_chain``."""
    plan_chain = chains.plan_chain

    def failing(steps):
        for s in steps:
            if s.step + 1 >= at:
                raise InjectedFailure(f"injected failure at SGLD step {s.step + 1}")
            yield s

    def planned(*args, **kwargs):
        plan = plan_chain(*args, **kwargs)
        plan.chain = failing(plan.chain)
        return plan

    monkeypatch.setattr(chains, "plan_chain", planned)


def test_a_failing_chain_raises_after_its_frames(store, monkeypatch):
    fail_at_step(monkeypatch, 3)
    req = clamp_request(2, 8, 100, 0.001, 1.0, 0)
    frames = []
    with pytest.raises(InjectedFailure, match=r"injected failure at SGLD step 3"):
        for f in stream_frames(unconditional_plan(store.get("cifar10"), req), req.settings.steps, every=1):
            frames.append(f.step)
    assert frames == [0, 1, 2] and ACTIVE_CHAINS == {}
    monkeypatch.undo()
    assert list(stream_frames(unconditional_plan(store.get("cifar10"), req), req.settings.steps))[-1].step == 8


def test_scores_csv_rounds_float_noise():
    rows = [{"file": "a.png", "s(x)": 0.12345678912345, "CIFAR-10 test percentile": 57.599999999999994,
             "E(x)": 1234.5678901234, "n": 3, "error": ""}, {"file": "b.png", "s(x)": None, "error": "bad"}]
    text = scores_csv(rows).decode()
    assert text.splitlines()[1] == "a.png,0.1234568,57.6,1234.568,3,"
    assert text.splitlines()[2] == "b.png,,,,,bad"
    assert round_sig(float("nan")) != round_sig(float("nan")) and round_sig(0.0) == 0.0


def test_ood_histogram_labels_each_file(exports):
    ref = load_reference(exports["cifar10"])
    uploads = {"cat.jpg": 0.1, "ship.jpg": 0.1000001, "texture.png": 0.9, **{f"u{i}": 0.5 for i in range(5)},
               "a_very_long_file_name_from_a_camera_0001.jpg": 0.7}
    fig = ood_histogram(ref, uploads)
    labels = [a for a in fig.layout.annotations if a.name == "upload label"]
    text = " ".join(a.text for a in labels)
    assert "cat.jpg, ship.jpg" in text and "texture.png" in text and "u0, u1, u2 +2 more" in text
    assert max(len(a.text) for a in labels) <= 26 and "a_very_long_file_name_fro…" in text  # stays under the title
    assert all(a.yref == "y2" and a.textangle == -90 for a in labels)
    hover = " ".join(a.hovertext for a in labels)
    assert all(name in hover for name in uploads)  # every file named, at least on hover
