"""A first-time visitor's tour of the Gradio demo in a real browser: every tab, every example, each chain run.

The demo runs as visitors meet it, ``python app/gradio_app.py`` in a subprocess (``OMP_NUM_THREADS=1``), on
tiny random exports (samples are noise; every tab, example and chain works the same). The examples are read
from the page's own config, so an example added to the app is toured without a change here. Each example is
clicked, its values are checked in the inputs, and its chain is run, in the default suite with at most
``FAST_STEPS`` SGLD steps per sweep (the example's samples and sweeps are kept); ``-m slow`` runs every example
exactly as it is offered. Every chain must end Done, with samples in the view, its full-resolution download,
no error badge, no error toast and no script error in the page.

Playwright drives Debian's Chromium (never `playwright install`); skipped when either is missing. Screenshots
go to a temporary folder unless ``CLEL_REFRESH_SCREENSHOTS=1`` asks for docs/screenshots (or ``CLEL_SCREENSHOTS``),
as in tests/test_app_browser.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clel_app.models import make_demo_exports  # noqa: E402
from clel_app.serve import free_port, local_only, stop_demo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS_SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("CLEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FAST_STEPS = 2  # SGLD steps per sweep in the default suite's tour
CHAIN_TIMEOUT_MS = 180_000
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Visible error badges of Gradio's status trackers, and error toasts (the modal of gr.Error) in the page
ERRORS_JS = """() => {
    const shown = e => e.checkVisibility({opacityProperty: true, visibilityProperty: true});
    const badges = [...document.querySelectorAll('span.error')].filter(shown)
        .map(e => 'badge on #' + ((e.closest('[id]') || {}).id || '?'));
    const toasts = [...document.querySelectorAll('[data-testid=toast-body].error')]  // shown or sliding in
        .map(e => 'toast: ' + e.innerText.replace(/\\s+/g, ' ').trim());
    return [...badges, ...toasts];
}"""
# Records the status lines of a tab from now on: the page may show the last chain's line again while a click
# waits in the queue, so a chain has ended when a line "Done" (or Stopped, Failed) follows its own "Running".
WATCH_JS = """(prefix) => {
    const status = document.querySelector('#' + prefix + '-status');
    const lines = window.__lines = [];
    new MutationObserver(() => {
        const t = (status.innerText || '').trim();
        if (t !== lines[lines.length - 1]) lines.push(t);
    }).observe(status, {subtree: true, childList: true, characterData: true});
}"""
DONE_JS = """() => {
    const lines = window.__lines || [];
    const start = lines.findIndex(t => t.startsWith('Running'));
    return lines.some((t, i) => (start >= 0 && i > start || t.startsWith('Failed')) && /^(Done|Stopped|Failed)/.test(t))
        || document.querySelector('[data-testid=toast-body].error') !== null;
}"""


def screenshot_dir(env: dict, tmp: Path) -> Path:
    """docs/screenshots (or CLEL_SCREENSHOTS) only when CLEL_REFRESH_SCREENSHOTS=1 asks for it; else ``tmp``."""
    if env.get("CLEL_REFRESH_SCREENSHOTS", "").strip().lower() in ("1", "true", "yes"):
        return Path(env.get("CLEL_SCREENSHOTS") or DOCS_SHOTS)
    return tmp


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = screenshot_dir(dict(os.environ), tmp_path_factory.mktemp("tour-screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)")
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo as a visitor meets it: the app's own command line, in a process of its own, on tiny exports."""
    tmp = tmp_path_factory.mktemp("tour")
    paths = make_demo_exports(tmp / "weights")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "app" / "gradio_app.py"), "--port", str(port),
                             "--cifar10", str(paths["cifar10"]), "--celeba", str(paths["celeba"])],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    config = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"the demo exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/config", timeout=5) as r:
                config = json.load(r)
            break
        except OSError:
            time.sleep(0.5)
    assert config is not None, "the demo did not answer within 300 s"
    yield {"url": url, "config": config, "log": tmp / "server.log"}
    stop_demo(proc, log)


def examples_by_tab(config: dict) -> dict[str, dict]:
    """Each tab's gr.Examples from the page's config: labels, rows and the inputs (elem_id, label, kind) they fill."""
    found = {}
    for c in config["components"]:
        if c["type"] != "dataset":
            continue
        props = c["props"]
        inputs = [(cp.get("elem_id"), cp.get("label"), comp["name"])
                  for cp, comp in zip(props["component_props"], props["components"])]
        tab = next(e for e, _, _ in inputs if e).split("-")[0]  # "unconditional-n" -> "unconditional"
        found[tab] = {"labels": props.get("sample_labels"), "rows": props["samples"], "inputs": inputs}
    return found


def number(page, elem_id: str) -> int:
    return int(float(page.locator(f"#{elem_id} input[type=number]").input_value()))


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def check_filled(page, tab: str, row: list, inputs: list) -> list[str]:
    """The values the example put into the inputs, compared with its row; returns the names of the files."""
    from playwright.sync_api import expect

    files = []
    for value, (elem_id, label, kind) in zip(row, inputs):
        if kind == "slider":
            expect(page.locator(f"#{elem_id} input[type=number]"), f"{tab}: {label}").to_have_value(str(value))
        elif kind == "radio":
            box = page.locator(f"#{elem_id}") if elem_id else page  # the Weights radio has no elem_id
            radio = box.get_by_label(str(value), exact=True).filter(visible=True).first
            expect(radio, f"{tab}: {label} = {value}").to_be_checked()
        elif kind == "file":
            names = [n.strip() for n in str(value).split(",") if n.strip()]
            shown = page.locator(f"#{elem_id}")
            for n in names:  # the example's files, and only them (not added to the last example's)
                expect(shown.locator(f'td.filename[aria-label="{n}"]'), f"{tab}: {label}").to_have_count(1)
            expect(shown.locator("td.filename"), f"{tab}: {label}").to_have_count(len(names))
            files += names
        else:
            raise AssertionError(f"the tour does not know how to check a {kind} input ({tab}: {label})")
    return files


def tour(browser, server, shots, max_steps: int | None) -> list[dict]:
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.context.route("**/*", local_only)
    script_errors = []
    page.on("pageerror", lambda e: script_errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: script_errors.append(f"console: {m.text}")
            if m.type == "error" and "net::ERR_FAILED" not in m.text else None)  # aborted outside requests
    page.goto(server["url"])
    tabs = examples_by_tab(server["config"])
    assert set(tabs) == {"unconditional", "lookalikes", "classes", "faces", "interpolate"}, set(tabs)
    names = {"unconditional": "Unconditional", "lookalikes": "Look-alikes", "classes": "Classes",
             "faces": "Faces", "interpolate": "Interpolate"}
    visited = []
    for tab, ex in tabs.items():
        page.get_by_role("tab", name=names[tab]).click()
        page.locator(f"#{tab}-sample").wait_for(timeout=60_000)
        buttons = page.locator("button.gallery-item").filter(visible=True)
        labels = [b.inner_text().strip() for b in buttons.all()]
        assert labels == ex["labels"], (tab, labels)  # every example offered is shown, in order
        for i, (label, row) in enumerate(zip(ex["labels"], ex["rows"])):
            with page.expect_response(lambda r: "/run/predict" in r.url, timeout=30_000) as loaded:
                buttons.nth(i).click()  # the server sends the example's values (load_example)
            assert loaded.value.ok, (tab, label, loaded.value.status)
            files = check_filled(page, tab, row, ex["inputs"])
            if max_steps is not None and number(page, f"{tab}-steps") > max_steps:
                set_number(page, f"{tab}-steps", max_steps)
            n, steps, sweeps = (number(page, f"{tab}-{k}") for k in ("n", "steps", "sweeps"))
            page.evaluate(WATCH_JS, tab)
            page.locator(f"#{tab}-sample").click()
            status = page.locator(f"#{tab}-status")
            page.wait_for_function(DONE_JS, timeout=CHAIN_TIMEOUT_MS, polling=100)
            text = status.inner_text().strip()
            errors = page.evaluate(ERRORS_JS)
            if errors or not text.startswith("Done") or script_errors:
                page.screenshot(path=str(shots / f"tour_failed_{tab}_{i + 1}.png"), full_page=True)
            assert not errors, (tab, label, errors, text)
            assert not script_errors, (tab, label, script_errors)
            total = steps * sweeps
            assert text.startswith("Done") and f"step {total}/{total}" in text and f"{n} samples" in text, (
                tab, label, text)
            img = page.locator(f"#{tab}-output img").first
            img.wait_for(timeout=30_000)
            page.wait_for_function("(e) => e.complete && e.naturalWidth > 0", arg=img.element_handle(),
                                   timeout=30_000)
            page.locator(f"#{tab}-download a").first.wait_for(timeout=30_000)  # the full-resolution PNG
            if files:  # "What the model sees": one thumbnail per uploaded image
                seen = page.locator(f"#{tab}-seen img")
                seen.nth(len(files) - 1).wait_for(timeout=30_000)
                assert seen.count() == len(files), (tab, label, seen.count(), files)
            visited.append({"tab": tab, "example": label, "n": n, "steps": steps, "sweeps": sweeps})
        page.screenshot(path=str(shots / f"tour_{tab}.png"), full_page=False)
    page.close()
    return visited


def test_a_failed_click_shows_a_sentence_and_the_tour_sees_it(browser, server):
    """The checks of the tour can fail: Sample on Look-alikes with nothing uploaded raises the error toast."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.context.route("**/*", local_only)
    page.goto(server["url"])
    page.get_by_role("tab", name="Look-alikes").click()
    assert page.evaluate(ERRORS_JS) == []
    page.evaluate(WATCH_JS, "lookalikes")
    page.locator("#lookalikes-sample").click()
    page.wait_for_function(DONE_JS, timeout=60_000, polling=100)
    errors = page.evaluate(ERRORS_JS)
    assert any(e.startswith("toast:") and "upload one or more images first" in e for e in errors), errors
    assert any(e.startswith("badge on #lookalikes-") for e in errors), errors
    page.close()


def test_every_tab_and_example_runs_its_chain(browser, server, shots):
    visited = tour(browser, server, shots, max_steps=FAST_STEPS)
    rows = sum(len(e["rows"]) for e in examples_by_tab(server["config"]).values())
    assert len(visited) == rows >= 15, visited
    assert {v["tab"] for v in visited} == {"unconditional", "lookalikes", "classes", "faces", "interpolate"}
    assert (shots / "tour_interpolate.png").is_file()
    assert "Traceback" not in server["log"].read_text(errors="replace")


@pytest.mark.slow
def test_every_example_runs_as_offered(browser, server, shots):
    """Every example with its own settings (the 64-sample, 10-sweep one included): minutes on 2 CPU cores."""
    visited = tour(browser, server, shots, max_steps=None)
    assert any(v["n"] == 64 and v["sweeps"] == 10 and v["steps"] == 20 for v in visited), visited
    assert "Traceback" not in server["log"].read_text(errors="replace")
