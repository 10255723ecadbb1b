"""How steadily does the live view paint? Timestamps of every new sample grid and energy plot in a real browser.

    python measure/paint_timing.py                               # Faces, the default chain, bundled weights
    python measure/paint_timing.py --tab unconditional --runs 2  # a second click on the same page as well
    python measure/paint_timing.py --tiny --steps 60 --sweeps 1  # tiny random exports
    python measure/paint_timing.py --url http://127.0.0.1:7860 --out paint.json

Unless ``--url`` names a running server, ``python app/gradio_app.py --port N`` is started in a subprocess
(``OMP_NUM_THREADS=1``). Playwright opens the page in Debian's Chromium (``/usr/bin/chromium``, never
``playwright install``) as a first-time visitor: a fresh browser, nothing cached. It opens the tab, presses
Sample and records in the page, against the click:

- every new image in the samples view: when its ``src`` changes and when the new PNG has loaded (a paint);
- every redraw of the energy plot (the mean curve's path changes, or a new plot replaces the old one);
- every status line, with the step it names and the chain's own clock (the seconds it shows), so the lag of
  each frame behind the server is known: a lag that grows and then falls at once is a freeze in the page;
- the main thread's long tasks (over 50 ms) and the longest gap between animation frames;
- the bytes of the sample PNGs and of the event stream that brought the frames (images' URLs, figures, status).

The click comes ``--read-s`` seconds (3) after the page has loaded, as a visitor reads the page first; the
long tasks of loading and reading are reported apart (``before_click``).

Reported (and written as JSON with ``--out``): per run, the number of image paints, the gaps between them
(max, median, 90th percentile), the plot redraws and their largest gap, the first paint and the first plot after
the click, the largest lag behind the server, the long tasks, and the whole timeline.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from clel_app.serve import add_server_options, local_only, start_demo, stop_demo, wait_for

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CLEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TAB_NAMES = {"unconditional": "Unconditional", "classes": "Classes", "faces": "Faces"}

WATCH_JS = r"""(prefix) => {
    const T = window.__paint = {img: [], loaded: [], plot: [], status: [], longtasks: [], raf_max_gap: 0,
                                t0: null};
    const now = () => performance.now();
    performance.setResourceTimingBufferSize(10000);
    const out = document.querySelector('#' + prefix + '-output');
    const energy = document.querySelector('#' + prefix + '-energy');
    const status = document.querySelector('#' + prefix + '-status');
    const parse = () => {
        const text = status.innerText || '';
        const m = text.match(/step (\d+)\/(\d+)/), s = text.match(/ (\d+(?:\.\d+)?) s ·/);
        return {text: text.split('\n')[0].slice(0, 120), step: m ? +m[1] : null, total: m ? +m[2] : null,
                server_s: s ? +s[1] : null};
    };
    let lastSrc = null, lastPath = null, lastPlot = null, lastStatus = null;
    new MutationObserver(() => {
        const img = out.querySelector('img');
        const src = img && img.getAttribute('src');
        if (src && src !== lastSrc) { lastSrc = src; T.img.push({t: now(), step: parse().step, src: src.slice(-60)}); }
    }).observe(out, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
    out.addEventListener('load', (e) => {
        if (e.target.tagName === 'IMG') T.loaded.push({t: now(), src: (e.target.getAttribute('src') || '').slice(-60)});
    }, true);  // capture: load does not bubble
    new MutationObserver(() => {
        const plot = energy.querySelector('.js-plotly-plot');
        const paths = energy.querySelectorAll('.scatterlayer .trace path.js-line');
        const d = paths.length ? paths[paths.length - 1].getAttribute('d') : null;
        if (plot && d && (d !== lastPath || plot !== lastPlot)) {
            T.plot.push({t: now(), step: parse().step, new_element: plot !== lastPlot, nodes:
                         energy.getElementsByTagName('*').length});
            lastPath = d; lastPlot = plot;
        }
    }).observe(energy, {subtree: true, childList: true, attributes: true});
    new MutationObserver(() => {
        const p = parse();
        if (p.text !== lastStatus) { lastStatus = p.text; T.status.push({t: now(), ...p}); }
    }).observe(status, {subtree: true, childList: true, characterData: true});
    try {
        new PerformanceObserver((list) => {
            for (const e of list.getEntries()) T.longtasks.push({t: e.startTime, ms: e.duration});
        }).observe({type: 'longtask', buffered: true});  // from the page's load on
    } catch (e) { T.longtask_error = String(e); }
    let last = null;
    const tick = (ts) => {
        if (last !== null && T.t0 !== null) T.raf_max_gap = Math.max(T.raf_max_gap, ts - last);
        last = ts; requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
}"""

# the status lines seen since the click include the chain's last one
# (the page may show the last chain's line again while the click waits in the queue: count from "Running" on)
DONE_JS = r"""() => {
    const seen = window.__paint.status.map(s => s.text.trim());
    const start = seen.findIndex(t => t.startsWith('Running'));
    return seen.some((t, i) => (i > start && start >= 0 || t.startsWith('Failed')) && /^(Done|Stopped|Failed)/.test(t));
}"""

# Starts a run: what happened before the click (page load, reading) is returned and the records are emptied.
RESET_JS = r"""() => {
    const T = window.__paint;
    const before = {longtasks: T.longtasks.length,
                    longtask_max_ms: Math.round(Math.max(0, ...T.longtasks.map(e => e.ms))),
                    longtask_total_ms: Math.round(T.longtasks.reduce((a, e) => a + e.ms, 0))};
    for (const k of ['img', 'loaded', 'plot', 'status', 'longtasks']) T[k] = [];
    T.raf_max_gap = 0; T.t0 = performance.now();
    performance.clearResourceTimings();
    return before;
}"""


RAW_JS = r"""() => ({...window.__paint, resources: performance.getEntriesByType('resource').map(e => ({
    name: e.name, kind: e.initiatorType, start: e.startTime, bytes: e.encodedBodySize || e.transferSize || 0}))})"""


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def summary(raw: dict) -> dict:
    """Seconds after the click: paints, their gaps, the plot redraws, the lag behind the server, long tasks."""
    t0 = raw["t0"]

    def rel(events, key="t"):
        return [round((e[key] - t0) / 1000, 3) for e in events if e[key] >= t0]

    loads = rel(raw["loaded"])
    srcs = rel(raw["img"])
    plots = rel(raw["plot"])
    g = gaps(loads)
    pg = gaps(plots)
    status = [dict(e, t=round((e["t"] - t0) / 1000, 3)) for e in raw["status"] if e["t"] >= t0]
    start = next((i for i, e in enumerate(status) if e["text"].strip().startswith("Running")), 0)
    status = status[start:]  # this chain's lines: not the last chain's, shown again while the click waits
    lags = []
    anchor = next((s for s in status if s["server_s"] is not None), None)
    for s in status:
        if anchor is not None and s["server_s"] is not None:
            lags.append(round((s["t"] - anchor["t"]) - (s["server_s"] - anchor["server_s"]), 3))
    longtasks = [{"t": round((e["t"] - t0) / 1000, 3), "ms": round(e["ms"])} for e in raw["longtasks"]
                 if e["t"] >= t0]
    q = statistics.quantiles(g, n=10)[-1] if len(g) >= 2 else (g[0] if g else None)
    res = [e for e in raw.get("resources", []) if e["start"] >= t0]
    png_kb = sum(e["bytes"] for e in res if e["kind"] == "img") / 1024
    stream_kb = sum(e["bytes"] for e in res if "/queue/data" in e["name"]) / 1024
    return {
        "image_paints": len(loads), "image_src_changes": len(srcs),
        "first_paint_s": loads[0] if loads else None,
        "last_paint_s": loads[-1] if loads else None,
        "gap_max_s": round(max(g), 3) if g else None,
        "gap_median_s": round(statistics.median(g), 3) if g else None,
        "gap_p90_s": round(q, 3) if q is not None else None,
        "plot_redraws": len(plots), "first_plot_s": plots[0] if plots else None,
        "plot_gap_max_s": round(max(pg), 3) if pg else None,
        "plot_new_elements": sum(1 for e in raw["plot"] if e["t"] >= t0 and e["new_element"]),
        "lag_max_s": max(lags) if lags else None,
        "longtasks": len(longtasks), "longtask_max_ms": max((e["ms"] for e in longtasks), default=0),
        "longtask_total_ms": sum(e["ms"] for e in longtasks),
        "raf_max_gap_ms": round(raw["raf_max_gap"]),
        "png_kb": round(png_kb, 1), "stream_kb": round(stream_kb, 1),
        "end": status[-1]["text"] if status else None,
        "timeline": {"image_loads_s": loads, "image_src_s": srcs, "plots_s": plots,
                     "status": [{k: s[k] for k in ("t", "step", "server_s")} for s in status],
                     "lags_s": lags, "longtasks": longtasks},
    }


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def measure(browser, url: str, a: argparse.Namespace, shots: Path | None) -> list[dict]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.route("**/*", local_only)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name=TAB_NAMES[a.tab]).click()
    page.locator(f"#{a.tab}-sample").wait_for(timeout=60_000)
    if a.tab == "unconditional" and a.weights != "CIFAR-10":
        page.get_by_label(a.weights, exact=True).filter(visible=True).first.check()
    for elem, value in (("n", a.n), ("steps", a.steps), ("sweeps", a.sweeps)):
        if value is not None:
            set_number(page, f"{a.tab}-{elem}", value)
    page.evaluate(WATCH_JS, a.tab)
    runs = []
    for r in range(a.runs):
        time.sleep(a.read_s)  # a visitor reads the page before pressing Sample
        before = page.evaluate(RESET_JS)
        page.locator(f"#{a.tab}-sample").click()
        page.wait_for_function(DONE_JS, timeout=a.timeout * 1000, polling=200)
        time.sleep(1.5)  # the last PNG loads, the last plot draws
        raw = page.evaluate(RAW_JS)
        s = summary(raw)
        s["run"] = r + 1
        s["before_click"] = before if r == 0 else None  # the page's load and the reading before the first click
        runs.append(s)
        print(f"run {r + 1}: {s['image_paints']} paints, gaps max {s['gap_max_s']} s, median {s['gap_median_s']} s; "
              f"{s['plot_redraws']} plot redraws (first at {s['first_plot_s']} s, "
              f"largest gap {s['plot_gap_max_s']} s); "
              f"lag behind the server up to {s['lag_max_s']} s; {s['longtasks']} long tasks "
              f"(max {s['longtask_max_ms']} ms, total {s['longtask_total_ms']} ms); {s['end']}", file=sys.stderr)
        if shots is not None:
            page.screenshot(path=str(shots / f"paint_{a.tab}_run{r + 1}.png"), full_page=True)
    context.close()
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tab", default="faces", choices=sorted(TAB_NAMES))
    p.add_argument("--weights", default="CIFAR-10", help="Unconditional tab: CIFAR-10 or CelebA")
    p.add_argument("--n", type=int, help="samples (default: the tab's default)")
    p.add_argument("--steps", type=int, help="SGLD steps per sweep (default: the tab's default, 20)")
    p.add_argument("--sweeps", type=int, help="sweeps (default: the tab's default, 5)")
    p.add_argument("--read-s", type=float, default=3.0, help="seconds between the page's load (or the last "
                   "chain) and the click (default 3)")
    p.add_argument("--runs", type=int, default=1, help="clicks on the same page (the first is a first visit)")
    p.add_argument("--visits", type=int, default=1, help="fresh pages (contexts), each with --runs clicks")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds a chain may take")
    add_server_options(p, url_help="a running demo server instead of starting one")
    p.add_argument("--screenshots", help="write a screenshot after each run into this folder")
    p.add_argument("--out", help="also write the JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="clel-paint-"))
    proc = log = None
    shots = Path(a.screenshots) if a.screenshots else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    try:
        if a.url:
            url = a.url.rstrip("/")
            weights = "as served"
        else:
            cifar, celeba = a.cifar10, a.celeba
            if a.tiny:
                from clel_app.models import make_demo_exports

                paths = make_demo_exports(work / "weights")
                cifar, celeba = str(paths["cifar10"]), str(paths["celeba"])
            weights = ("tiny random exports" if a.tiny
                       else f"{cifar or 'weights/cifar10'}, {celeba or 'weights/celeba32'}")
            log = open(work / "server.log", "wb")
            url, proc = start_demo(cifar, celeba, work, log, a.threads)
        wait_for(url, proc)
        visits = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for v in range(a.visits):
                visits.append(measure(browser, url, a, shots))
            browser.close()
        result = {"date": datetime.date.today().isoformat(), "tab": a.tab, "weights": weights,
                  "settings": {"n": a.n, "steps": a.steps, "sweeps": a.sweeps, "runs": a.runs,
                               "server_threads": a.threads},
                  "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                              "python": platform.python_version()},
                  "visits": visits}
        text = json.dumps(result, indent=2)
        if a.out:
            Path(a.out).write_text(text + "\n")
        brief = {k: v for k, v in result.items() if k != "visits"}
        brief["visits"] = [[{k: v for k, v in r.items() if k != "timeline"} for r in runs] for runs in visits]
        print(json.dumps(brief, indent=2))
        return 0
    finally:
        stop_demo(proc, log)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
