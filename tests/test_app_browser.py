"""Both apps in a real browser: Playwright driving Debian's Chromium (never `playwright install`).

Skipped when /usr/bin/chromium or the playwright package is missing (CI: `apt-get install -y chromium`).
Screenshots go to docs/screenshots/. They use tiny random weights unless CLEL_WEIGHTS_CIFAR10 /
CLEL_WEIGHTS_CELEBA name trained ones (then the samples in the screenshots are real).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("CLEL_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
gr = pytest.importorskip("gradio")
pytest.importorskip("streamlit")

from clel import demo as D  # noqa: E402
from clel.ood import reference_sets  # noqa: E402

from conftest import DATA_ROOT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("CLEL_SCREENSHOTS", REPO / "docs" / "screenshots"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
sys.path.insert(0, str(REPO / "app"))
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    env = {k: os.environ.get(v, "") for k, v in (("cifar10", "CLEL_WEIGHTS_CIFAR10"), ("celeba", "CLEL_WEIGHTS_CELEBA"))}
    if all(env.values()):
        return {**env, "timeout_ms": 1_800_000}  # trained Base models: minutes per chain on a CPU
    sets = reference_sets(DATA_ROOT, limit=200) if (DATA_ROOT / "cifar10").is_dir() else None
    paths = D.make_demo_exports(tmp_path_factory.mktemp("weights"), reference_images=sets)
    return {**{k: env[k] or str(paths[k]) for k in paths}, "timeout_ms": 240_000}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def gradio_url(weights):
    import gradio_app

    demo = gradio_app.build_app(weights["cifar10"], weights["celeba"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            css=gradio_app.CSS)
    yield url
    demo.close()


def local_only(route) -> None:
    """The pages may only talk to this machine: requests elsewhere (web fonts, CDNs) are aborted, not sent."""
    host = urlparse(route.request.url).hostname or ""
    if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
        route.continue_()
    else:
        route.abort()


def new_page(browser, width: int = 1600, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.route("**/*", local_only)
    return page


WATCH_JS = """(prefix) => {
    window.__srcs = [];
    const root = document.querySelector('#' + prefix + '-output');
    const record = () => {
        const img = root.querySelector('img');
        const src = img && img.getAttribute('src');
        if (src && src !== window.__srcs[window.__srcs.length - 1]) window.__srcs.push(src);
    };
    new MutationObserver(record).observe(root, {subtree: true, childList: true, attributes: true,
                                                attributeFilter: ['src']});
}"""


def test_faces_female_and_smiling_streams_into_the_page(browser, gradio_url, weights):
    page = new_page(browser)
    page.goto(gradio_url)
    page.get_by_role("tab", name="Faces").click()
    page.locator("#faces-female").get_by_label("AND").check()
    page.locator("#faces-smiling").get_by_label("AND").check()
    assert page.locator("#faces-female").get_by_label("AND").is_checked()
    assert page.locator("#faces-smiling").get_by_label("AND").is_checked()
    page.evaluate(WATCH_JS, "faces")  # records every new image the output shows
    page.locator("#faces-sample").click()
    status = page.locator("#faces-status")
    status.get_by_text("Done").wait_for(timeout=weights["timeout_ms"])
    # the default chain: 5 augmented sweeps of 20 steps
    assert "step 100/100 · sweep 5/5" in status.inner_text() and "AND Female AND Smiling" in page.locator(
        "#faces-energy").inner_text(), status.inner_text()
    page.locator("#faces-download a").first.wait_for(timeout=30_000)  # the full-resolution PNG
    time.sleep(0.5)
    seen = page.evaluate("() => window.__srcs")
    assert len(seen) >= 4, f"the output image changed only {len(seen)} times"  # the noise, then >= 3 changes
    assert page.locator("#faces-energy .js-plotly-plot").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "gradio_faces.png"), full_page=True)
    page.close()


def test_stop_button_cancels_the_chain(browser, gradio_url):
    page = new_page(browser)
    page.goto(gradio_url)
    steps = page.locator("#unconditional-steps input[type=number]")
    steps.fill("1000")
    steps.press("Enter")
    page.locator("#unconditional-sample").click()
    status = page.locator("#unconditional-status")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for a frame after some SGLD steps
        text = status.inner_text()
        if "Running" in text and "step 0/" not in text:
            break
        time.sleep(0.05)
    assert "Running" in text and "/1000" in text, text
    page.locator("#unconditional-stop").click()
    status.get_by_text("Stopped").wait_for(timeout=30_000)
    deadline = time.monotonic() + 30
    while D.ACTIVE_CHAINS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert D.ACTIVE_CHAINS == {}, "the chain kept running after Stop"
    stopped = status.inner_text()
    time.sleep(1.5)  # no frame arrives after Stop
    assert status.inner_text() == stopped and stopped.startswith("Stopped") and "Done" not in stopped, stopped
    page.locator("#unconditional-download a").first.wait_for(timeout=30_000)  # the samples it had reached
    page.screenshot(path=str(SHOTS / "gradio_unconditional_stopped.png"), full_page=False)
    page.close()


@pytest.fixture(scope="module")
def streamlit_url(weights):
    port = free_port()
    env = {**os.environ, "CLEL_WEIGHTS_CIFAR10": weights["cifar10"], "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "ood_page.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "25", "--client.toolbarMode", "viewer"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_streamlit_page_scores_uploads(browser, streamlit_url, weights, tmp_path):
    cat, dtd = DATA_ROOT / "cifar10" / "test" / "cat" / "0001.jpg", DATA_ROOT / "dtd10" / "banded" / "banded_0004.png"
    if not cat.is_file() or not dtd.is_file():
        pytest.skip("shared data not found")
    files = [tmp_path / "cifar10_cat.jpg", tmp_path / "dtd_banded.png", tmp_path / "corrupt.jpg"]
    shutil.copy(cat, files[0])
    shutil.copy(dtd, files[1])
    files[2].write_bytes(cat.read_bytes()[:300])
    page = new_page(browser, 1400, 1700)
    page.goto(streamlit_url)
    page.locator("input[type=file]").wait_for(state="attached", timeout=60_000)
    page.locator("input[type=file]").set_input_files([str(f) for f in files])
    page.locator("[data-testid=stDataFrame]").wait_for(timeout=60_000)
    page.get_by_text("corrupt.jpg: the image data is truncated").wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    legend = page.locator(".js-plotly-plot .legendtext").all_text_contents()
    if (Path(weights["cifar10"]) / "ood_reference.safetensors").is_file():
        assert any(t.startswith("CIFAR-10 test (in-distribution)") for t in legend)
    assert "uploaded images (n=2)" in legend
    time.sleep(1.0)  # let the plot and the table finish drawing
    page.screenshot(path=str(SHOTS / "streamlit_ood.png"), full_page=True)
    page.close()
