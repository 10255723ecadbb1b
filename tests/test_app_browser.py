"""Both apps in a real browser: Playwright driving Debian's Chromium (never `playwright install`).

Skipped when /usr/bin/chromium or the playwright package is missing (CI: `apt-get install -y chromium`).
Screenshots go to a temporary folder, so running the tests leaves docs/ alone. To refresh the documentation's
screenshots set ``CLEL_REFRESH_SCREENSHOTS=1``: they are then written to docs/screenshots/ (or to the folder
named by ``CLEL_SCREENSHOTS``). They use tiny random weights unless CLEL_WEIGHTS_CIFAR10 / CLEL_WEIGHTS_CELEBA
name trained ones (then the samples in the screenshots are real).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clel_app.chains import ACTIVE_CHAINS  # noqa: E402
from clel_app.models import make_demo_exports  # noqa: E402
from clel_app.serve import free_port, local_only, wait_for  # noqa: E402
from clel.data.ood import reference_sets  # noqa: E402

from conftest import DATA_ROOT  # noqa: E402

CHROMIUM = os.environ.get("CLEL_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
DOCS_SHOTS = REPO / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def screenshot_dir(env: dict, tmp: Path) -> Path:
    """docs/screenshots (or CLEL_SCREENSHOTS) only when CLEL_REFRESH_SCREENSHOTS=1 asks for it; else ``tmp``."""
    if env.get("CLEL_REFRESH_SCREENSHOTS", "").strip().lower() in ("1", "true", "yes"):
        return Path(env.get("CLEL_SCREENSHOTS") or DOCS_SHOTS)
    return tmp


def test_screenshots_stay_out_of_docs_unless_asked(tmp_path):
    assert screenshot_dir({}, tmp_path) == tmp_path
    assert screenshot_dir({"CLEL_SCREENSHOTS": "/elsewhere"}, tmp_path) == tmp_path  # naming a folder is not asking
    assert screenshot_dir({"CLEL_REFRESH_SCREENSHOTS": "1"}, tmp_path) == DOCS_SHOTS
    assert screenshot_dir({"CLEL_REFRESH_SCREENSHOTS": "1", "CLEL_SCREENSHOTS": "/x"}, tmp_path) == Path("/x")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = screenshot_dir(dict(os.environ), tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def sync_api():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)")
    pytest.importorskip("gradio")
    pytest.importorskip("streamlit")
    return pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    env = {k: os.environ.get(v, "") for k, v in (("cifar10", "CLEL_WEIGHTS_CIFAR10"), ("celeba", "CLEL_WEIGHTS_CELEBA"))}
    if all(env.values()):
        return {**env, "timeout_ms": 1_800_000}  # trained Base models: minutes per chain on a CPU
    sets = reference_sets(DATA_ROOT, limit=200) if (DATA_ROOT / "cifar10").is_dir() else None
    paths = make_demo_exports(tmp_path_factory.mktemp("weights"), reference_images=sets)
    return {**{k: env[k] or str(paths[k]) for k in paths}, "timeout_ms": 240_000}


@pytest.fixture(scope="module")
def browser(sync_api):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def gradio_url(weights):
    from clel_app import gradio_app
    from clel_app.layout import CSS

    demo = gradio_app.build_app(weights["cifar10"], weights["celeba"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            css=CSS)
    yield url
    demo.close()


def new_page(browser, width: int = 1600, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.context.route("**/*", local_only)  # the context: tabs the page opens are covered too
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


OVERLAP_JS = """(sel) => {
    const plot = document.querySelector(sel);
    const meets = (a, b) => !(a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top);
    const t = plot.querySelector('.gtitle').getBoundingClientRect();
    const y = plot.querySelector('.ytitle').getBoundingClientRect();
    const p = plot.getBoundingClientRect();
    // anything of the Gradio block drawn over the title (its label badge, buttons), outside the figure itself
    const block = plot.closest('.block') || plot.parentElement;
    const covering = [...block.querySelectorAll('*')].filter(e => !e.closest('.js-plotly-plot') && !e.contains(plot))
        .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && meets(r, t)
                       && e.checkVisibility({opacityProperty: true, visibilityProperty: true})
                       && !e.closest('.hide'); })  // the progress overlay stays in place, hidden, after a run
        .map(e => e.tagName + '.' + e.className);
    return {overlap: meets(t, y), covering, inside: t.left >= p.left && t.right <= p.right && t.top >= p.top,
            title: plot.querySelector('.gtitle').textContent};
}"""


def test_header_shows_no_server_paths(browser, gradio_url, weights):
    page = new_page(browser)
    page.goto(gradio_url)
    header = page.locator("#weights-header")
    header.get_by_text("CIFAR-10").first.wait_for(timeout=30_000)
    text = header.inner_text()
    for folder in {str(REPO), str(Path(weights["cifar10"]).parent), str(Path(weights["celeba"]).parent), "/tmp/"}:
        assert folder not in text, text
    assert "parameters" in text and "model card" in text
    with page.context.expect_page() as opened:  # Gradio opens Markdown links in a new tab
        page.locator("#weights-header a", has_text="model card").first.click()
    card = opened.value
    readme = (Path(weights["cifar10"]) / "README.md").read_text()
    title = next(line[2:].strip() for line in readme.splitlines() if line.startswith("# "))
    card.get_by_text(title).first.wait_for(timeout=30_000)  # the served weights' own card
    assert card.url.split("#")[0].rstrip("/").endswith("/model-cards")
    card.close()
    page.close()


def test_faces_female_and_smiling_streams_into_the_page(browser, gradio_url, weights, shots):
    page = new_page(browser)
    page.goto(gradio_url)
    page.get_by_role("tab", name="Faces").click()
    # the tab opens on a composition, not on "everything off"
    assert page.locator("#faces-young").get_by_label("AND").is_checked()
    assert page.locator("#faces-smiling").get_by_label("AND").is_checked()
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
    layout = page.evaluate(OVERLAP_JS, "#faces-energy .js-plotly-plot")
    assert not layout["overlap"] and not layout["covering"] and layout["inside"], layout
    page.screenshot(path=str(shots / "gradio_faces.png"), full_page=True)
    assert (shots / "gradio_faces.png").is_file()
    page.close()


def test_every_tab_continues_the_models_own_chains(browser, gradio_url, weights, shots):
    """Start from, on every tab: noise is the default; the replay buffer runs the chain from the model's own
    long-run chains, and the status line says so."""
    for w in (weights["cifar10"], weights["celeba"]):
        if not (Path(w) / "replay_buffer.safetensors").is_file():
            pytest.skip(f"{w} ships no replay buffer")
    page = new_page(browser)
    page.goto(gradio_url)
    for tab, name in (("unconditional", "Unconditional"), ("lookalikes", "Look-alikes"), ("classes", "Classes"),
                      ("faces", "Faces"), ("interpolate", "Interpolate")):
        page.get_by_role("tab", name=name).click()
        page.locator(f"#{tab}-sample").wait_for(timeout=60_000)
        if tab in ("lookalikes", "interpolate"):  # the first example fills the uploads
            with page.expect_response(lambda r: "/run/predict" in r.url, timeout=30_000):
                page.locator("button.gallery-item").filter(visible=True).first.click()
        start = page.locator(f"#{tab}-start")
        assert start.get_by_label("uniform noise").is_checked()
        start.get_by_label("continue the model's own long-run chains").check()
        page.locator(f"#{tab}-sample").click()
        status = page.locator(f"#{tab}-status")
        status.get_by_text("Done").wait_for(timeout=weights["timeout_ms"])
        assert "samples from the model's replay buffer" in status.inner_text(), (tab, status.inner_text())
    page.screenshot(path=str(shots / "gradio_buffer_start.png"), full_page=True)
    page.close()


def test_stop_button_cancels_the_chain(browser, gradio_url, shots):
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
    while ACTIVE_CHAINS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ACTIVE_CHAINS == {}, "the chain kept running after Stop"
    stopped = status.inner_text()
    time.sleep(1.5)  # no frame arrives after Stop
    assert status.inner_text() == stopped and stopped.startswith("Stopped") and "Done" not in stopped, stopped
    page.locator("#unconditional-download a").first.wait_for(timeout=30_000)  # the samples it had reached
    page.screenshot(path=str(shots / "gradio_unconditional_stopped.png"), full_page=False)
    page.close()


def test_what_the_model_sees_shows_square_thumbnails(browser, gradio_url):
    """One reference image: its thumbnail stays square and small, not stretched over the row and cropped."""
    page = new_page(browser)
    page.goto(gradio_url)
    page.get_by_role("tab", name="Look-alikes").click()
    page.locator("#lookalikes-files input[type=file]").set_input_files([str(REPO / "app/examples/cifar10_cat.jpg")])
    for elem, value in (("steps", "1"), ("sweeps", "1"), ("n", "2")):
        box = page.locator(f"#lookalikes-{elem} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#lookalikes-sample").click()
    page.locator("#lookalikes-status").get_by_text("Done").wait_for(timeout=120_000)
    img = page.locator("#lookalikes-seen img").first
    img.wait_for(timeout=30_000)
    b = img.bounding_box()
    gallery = page.locator("#lookalikes-seen").bounding_box()
    fit = img.evaluate("e => getComputedStyle(e).objectFit")
    assert fit == "contain" and b["width"] < gallery["width"] / 3, (fit, b, gallery)
    shown = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert shown[0] == shown[1]  # the square the model sees, drawn whole inside its box ("contain")
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
    wait_for(url, proc, timeout=60, path="/_stcore/health")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_streamlit_page_scores_uploads(browser, streamlit_url, weights, tmp_path, shots):
    cat, dtd = DATA_ROOT / "cifar10" / "test" / "cat" / "0001.jpg", DATA_ROOT / "dtd10" / "banded" / "banded_0004.png"
    if not cat.is_file() or not dtd.is_file():
        pytest.skip("shared data not found")
    files = [tmp_path / "cifar10_cat.jpg", tmp_path / "dtd_banded.png", tmp_path / "corrupt.jpg"]
    shutil.copy(cat, files[0])
    shutil.copy(dtd, files[1])
    files[2].write_bytes(cat.read_bytes()[:300])
    for p in sorted((REPO / "app" / "examples").glob("*.jpg"))[:5]:  # 7 good files: more than 5 rows
        shutil.copy(p, tmp_path / p.name)
        files.append(tmp_path / p.name)
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
    assert "uploaded images (n=7)" in legend
    labels = " ".join(page.locator(".js-plotly-plot .annotation-text").all_text_contents())
    assert "cifar10_cat" in labels and "dtd_band" in labels, labels  # the bars say which file is which
    time.sleep(1.0)  # let the plot and the table finish drawing
    # every row shows: the grid's scroller has nothing hidden below its visible area
    grid = page.evaluate("""() => { const s = document.querySelector('[data-testid=stDataFrame] .dvn-scroller');
        return s && {scroll: s.scrollHeight, client: s.clientHeight}; }""")
    assert grid and grid["scroll"] <= grid["client"] + 2, grid
    assert page.locator("[data-testid=stDataFrame]").bounding_box()["height"] >= 7 * 72, "the table is cut off"
    page.screenshot(path=str(shots / "streamlit_ood.png"), full_page=True)
    page.close()


@pytest.mark.parametrize("tab, name, example, shot", [
    ("lookalikes", "Look-alikes", None, "gradio_lookalikes"), ("classes", "Classes", None, "gradio_classes"),
    ("interpolate", "Interpolate", None, "gradio_interpolate"),
    ("lookalikes", "Look-alikes", "two smiling women", "gradio_lookalikes_faces"),
    ("interpolate", "Interpolate", "face → face", "gradio_interpolate_faces")])
def test_tab_runs_an_example_to_the_end(browser, gradio_url, weights, shots, tab, name, example, shot):
    """A conditional tab's example (default: the first), run as offered: it ends Done with samples (the tab's
    screenshot). Face examples are offered only when the CelebA export has its encoder."""
    page = new_page(browser)
    page.goto(gradio_url)
    page.get_by_role("tab", name=name).click()
    page.locator(f"#{tab}-sample").wait_for(timeout=60_000)
    buttons = page.locator("button.gallery-item").filter(visible=True)
    if example is not None:
        buttons = buttons.filter(has_text=example)
        if buttons.count() == 0:
            page.close()
            pytest.skip(f"the example {example!r} is not offered with these weights")
    with page.expect_response(lambda r: "/run/predict" in r.url, timeout=30_000):
        buttons.first.click()  # the server fills the inputs (load_example)
    page.locator(f"#{tab}-sample").click()
    status = page.locator(f"#{tab}-status")
    status.get_by_text("Done").wait_for(timeout=weights["timeout_ms"])
    assert "samples" in status.inner_text(), status.inner_text()
    page.locator(f"#{tab}-download a").first.wait_for(timeout=30_000)
    page.screenshot(path=str(shots / f"{shot}.png"), full_page=True)
    assert (shots / f"{shot}.png").is_file()
    page.close()
