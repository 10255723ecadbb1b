"""The Streamlit OOD page (app/ood_page.py) through Streamlit's AppTest: scores, errors, histogram, CSV."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from clel.data.ood import reference_sets  # noqa: E402
from clel.eval.ood import REFERENCE_NAME  # noqa: E402
from clel.images import images_to_tensor  # noqa: E402
from clel_app.models import make_demo_exports  # noqa: E402
from clel_app.ood_report import scores_csv  # noqa: E402
from clel_app.uploads import decode_image  # noqa: E402

from conftest import data_path  # noqa: E402
from test_demo import bad_files, huge_png, odd_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "app" / "ood_page.py")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny random export with a reference computed on 48 real images of each set."""
    root = data_path()
    sets = reference_sets(root, limit=48)
    return make_demo_exports(tmp_path_factory.mktemp("weights"), reference_images=sets)["cifar10"]


@pytest.fixture
def page(weights, monkeypatch):
    monkeypatch.setenv("CLEL_WEIGHTS_CIFAR10", str(weights))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def read(*parts: str) -> bytes:
    return data_path(*parts).read_bytes()


def histogram_traces(at) -> list[str]:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return [t.get("name", "") for t in json.loads(charts[0].proto.spec)["data"]]


def test_page_without_uploads_shows_the_references(page):
    names = histogram_traces(page)
    assert names[:4] == ["CIFAR-10 test (in-distribution) (n=48)", "Textures (DTD) (n=48)",
                         "CIFAR-10 interpolation (n=48)", "CelebA 32x32 (n=48)"]
    assert names[4].startswith("threshold at 95% TPR")
    assert not page.error and not page.dataframe


def test_cifar_dtd_and_corrupt_upload(page):
    cat = read("cifar10", "test", "cat", "0001.jpg")
    dtd = read("dtd10", "banded", "banded_0004.png")
    page.file_uploader[0].set_value([("cat.jpg", cat, "image/jpeg"), ("banded.png", dtd, "image/png"),
                                     ("corrupt.jpg", cat[:300], "image/jpeg")])
    page.run()
    assert not page.exception
    df = page.dataframe[0].value
    assert list(df["file"]) == ["cat.jpg", "banded.png"]
    assert df["s(x)"].notna().all() and df["E(x)"].notna().all() and (df["E(x)"] >= 0).all()
    assert set(df["verdict"]) <= {"in-distribution", "out-of-distribution"}
    assert all(str(u).startswith("data:image/png;base64,") for u in df["image"])
    assert [e.value for e in page.error] == ["corrupt.jpg: the image data is truncated (the file is incomplete or "
                                             "damaged)"]
    names = histogram_traces(page)
    assert "CIFAR-10 test (in-distribution) (n=48)" in names and "uploaded images (n=2)" in names
    spec = json.loads(page.get("plotly_chart")[0].proto.spec)
    uploaded = next(t for t in spec["data"] if t["name"].startswith("uploaded"))
    assert sorted(uploaded["x"]) == sorted(df["s(x)"].tolist())
    # the CSV holds both scores and the error
    button = page.get("download_button")[0]
    assert button.proto.label == "Download CSV"


def test_scores_match_the_library(page, weights):
    from clel.eval.ood import score_images
    from clel.weights import load_pretrained

    cat = read("cifar10", "test", "cat", "0001.jpg")
    page.file_uploader[0].set_value([("cat.jpg", cat, "image/jpeg")])
    page.run()
    model, _, _ = load_pretrained(str(weights))
    x = images_to_tensor([decode_image(cat, "cat.jpg").image], 32)
    s, e = score_images(model, x, 0.1)
    df = page.dataframe[0].value
    assert abs(df["s(x)"][0] - float(s[0])) < 1e-6 and abs(df["E(x)"][0] - float(e[0])) < 1e-6


def test_bad_and_odd_files_each_get_a_message(page, tmp_path):
    huge = tmp_path / "huge.png"
    huge_png(huge)
    files = [(n, b, "application/octet-stream") for n, b in {**bad_files(), **odd_files()}.items()]
    files.append(("huge.png", huge.read_bytes(), "image/png"))
    page.file_uploader[0].set_value(files)
    page.run()
    assert not page.exception
    errors = " | ".join(e.value for e in page.error)
    for expected in ("notes.png: not an image file", "truncated.jpg: the image data is truncated",
                     "empty.png: the file is empty (0 bytes)", "huge.png: the image is 7072x7072 = 50.0 megapixels"):
        assert expected in errors
    df = page.dataframe[0].value
    assert list(df["file"]) == ["rgba.png", "gray.png", "gray16.png", "rgb16.png"]
    notes = dict(zip(df["file"], df["note"]))
    assert "composited over white" in notes["rgba.png"] and notes["gray16.png"].startswith("16-bit grayscale")


def test_page_without_reference_still_scores(weights, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "noref"
    shutil.copytree(weights, folder)
    (folder / REFERENCE_NAME).unlink()
    monkeypatch.setenv("CLEL_WEIGHTS_CIFAR10", str(folder))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert any("No reference scores next to the weights" in i.value for i in at.info)
    at.file_uploader[0].set_value([("cat.jpg", read("cifar10", "test", "cat", "0001.jpg"), "image/jpeg")])
    at.run()
    df = at.dataframe[0].value
    assert list(df["verdict"]) == ["no reference"] and df["s(x)"].notna().all()
    assert histogram_traces(at) == ["uploaded images (n=1)"]


def test_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEL_WEIGHTS_CIFAR10", str(tmp_path / "nowhere"))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    assert "cannot load the cifar10 weights" in at.error[0].value


def test_csv_content(page):
    """The CSV behind the download button: one row per file, the scores or the error."""
    cat = read("cifar10", "test", "cat", "0001.jpg")
    page.file_uploader[0].set_value([("cat.jpg", cat, "image/jpeg"), ("bad.jpg", b"nope", "image/jpeg")])
    page.run()
    assert page.get("download_button")[0].proto.label == "Download CSV"
    rows = page.session_state["csv_rows"]
    df = pd.read_csv(io.BytesIO(scores_csv(rows)))
    assert list(df["file"]) == ["cat.jpg", "bad.jpg"]
    assert abs(df["s(x)"][0] - page.dataframe[0].value["s(x)"][0]) < 1e-6  # 7 significant digits
    assert pd.isna(df["s(x)"][1]) and "bad.jpg: not an image file" in df["error"][1]
    assert "image" not in df.columns  # no thumbnails in the CSV


def test_the_table_shows_every_row_without_scrolling(weights, monkeypatch):
    """More than five 72-pixel rows: the table is as tall as its rows (no inner scroll bar)."""
    import streamlit

    calls = []
    original = streamlit.dataframe

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(streamlit, "dataframe", recording)  # the page calls st.dataframe at run time
    monkeypatch.setenv("CLEL_WEIGHTS_CIFAR10", str(weights))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    cats = sorted(data_path("cifar10", "test", "cat").glob("*.jpg"))[:7]
    at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/jpeg") for p in cats])
    at.run()
    assert not at.exception and len(at.dataframe[0].value) == 7
    height, rows = calls[-1].get("height", "auto"), calls[-1]["row_height"]
    assert height == "content" or (isinstance(height, int) and height >= 40 + 7 * rows), height


def test_histogram_names_each_upload(page):
    cat = read("cifar10", "test", "cat", "0001.jpg")
    dtd = read("dtd10", "banded", "banded_0004.png")
    page.file_uploader[0].set_value([("cat.jpg", cat, "image/jpeg"), ("banded.png", dtd, "image/png")])
    page.run()
    spec = json.loads(page.get("plotly_chart")[0].proto.spec)
    labels = [a for a in spec["layout"].get("annotations", []) if a.get("name") == "upload label"]
    named = " ".join(a["text"] for a in labels)
    assert "cat.jpg" in named and "banded.png" in named, labels


def test_csv_has_no_float_noise(page):
    import re

    files = sorted(data_path("cifar10", "test", "cat").glob("*.jpg"))[:6]
    page.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/jpeg") for p in files])
    page.run()
    text = scores_csv(page.session_state["csv_rows"]).decode()
    numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e-?\d+)?", text)
    assert numbers
    for n in numbers:
        digits = n.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
        assert len(digits) <= 7, f"{n} in the CSV carries float noise"
    df = pd.read_csv(io.BytesIO(text.encode()))
    table = page.dataframe[0].value
    assert ((df["s(x)"] - table["s(x)"]).abs() <= 1e-6 * table["s(x)"].abs().clip(lower=1e-3)).all()


def test_usage_statistics_are_off_from_the_repository_root():
    """`streamlit run app/ood_page.py` from the root reads .streamlit/config.toml (the README's command)."""
    import subprocess
    import sys
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["browser"]["gatherUsageStats"] is False and config["server"]["maxUploadSize"] == 25
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120).stdout
    shown = dict(re.split(r"\s*=\s*", line, maxsplit=1) for line in out.splitlines()
                 if re.match(r"^(gatherUsageStats|maxUploadSize) = ", line))
    assert shown == {"gatherUsageStats": "false", "maxUploadSize": "25"}, shown
    readme = (REPO / "app" / "README.md").read_text()
    assert "streamlit run app/ood_page.py" in readme


def test_reference_uses_real_data_sets():
    sets = reference_sets(data_path(), limit=8)
    assert {k: tuple(v.shape) for k, v in sets.items()} == {k: (8, 3, 32, 32) for k in
                                                             ("cifar10_test", "dtd", "cifar10_interp", "celeba32")}
    assert all(v.dtype == torch.uint8 for v in sets.values())


def test_reference_cli_writes_the_file_the_page_reads(weights, tmp_path, capsys):
    import shutil

    from clel.eval.ood import load_reference, main, model_fingerprint, reference_from_raw
    from clel.weights import load_pretrained

    folder = tmp_path / "w"
    shutil.copytree(weights, folder)
    (folder / REFERENCE_NAME).unlink()
    assert main(["--weights", str(folder), "--data", str(data_path()), "--limit", "6", "--sets",
                 "cifar10_test,dtd", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = load_reference(folder)
    assert out["path"] == str(folder / REFERENCE_NAME) and set(out["auroc"]) == {"dtd"}
    assert {k: len(v) for k, v in ref.scores.items()} == {"cifar10_test": 6, "dtd": 6}
    model, _, _ = load_pretrained(str(folder))
    assert ref.fingerprint == model_fingerprint(model) and out["threshold_tpr95"] == ref.threshold(0.95)
    # scores computed elsewhere (clel.eval.ood.ood_evaluate's raw output) become the same kind of reference
    raw = {k: {"score": ref.scores[k], "energy": ref.energies[k]} for k in ref.scores}
    again = reference_from_raw(model, raw, ref.beta)
    assert again.fingerprint == ref.fingerprint and again.threshold() == ref.threshold()


def test_the_page_starts_offline_with_one_local_url(weights, tmp_path):
    """`streamlit run app/ood_page.py` from the repository root, as the README says, with no network: it prints
    its local URL and no notice about an external IP it could not look up."""
    import subprocess
    import sys
    import time

    from clel_app.serve import free_port, wait_for

    port = free_port()
    env = {**os.environ, "CLEL_WEIGHTS_CIFAR10": str(weights), "STREAMLIT_SERVER_HEADLESS": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", PAGE, "--server.port", str(port),
                             "--server.fileWatcherType", "none"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}", proc, timeout=60, path="/_stcore/health")
        time.sleep(2)  # the URL lines are printed once the server listens
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://localhost:{port}" in out, out
    assert "external IP" not in out and "External URL" not in out, out
