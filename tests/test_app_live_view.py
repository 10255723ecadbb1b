"""What the live view sends while a chain runs: every frame's grid, the energy curve redrawn only now and then.

The page rebuilds the whole plotly figure whenever the curve changes; redrawn with every frame it held the images
back, and the first one froze the view while the page loaded plotly (docs/benchmarks.md, "Paint timing"). Between
redraws the curve is sent again unchanged rather than skipped: Gradio keeps a new copy of a skipped component in
the session's state, one more with every chain (docs/benchmarks.md, "Soak").
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[1]
EX = REPO / "app" / "examples"
from clel_app import gradio_app, live  # noqa: E402
from clel_app.models import make_demo_exports  # noqa: E402
from clel_app.serve import free_port  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*:Warning:gradio.*")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    paths = make_demo_exports(tmp_path_factory.mktemp("weights"))
    return gradio_app.build_app(str(paths["cifar10"]), str(paths["celeba"]))


def curves(out) -> list[str]:
    """The curve of every frame, as the page receives it (the plotly JSON)."""
    assert all(isinstance(o[1], gr.components.plot.PlotData) for o in out), [type(o[1]) for o in out]
    return [o[1].plot for o in out]


def redraws(out) -> int:
    """How often the page redraws the curve: the times it differs from the one before (the page's first is the
    tab's empty curve)."""
    seen = [live.EMPTY_CURVE.plot, *curves(out)]
    return sum(a != b for a, b in zip(seen, seen[1:]))


def run(demo, steps: int = 40):
    return list(demo.clel_app.unconditional("CIFAR-10", 2, steps, 100, 0.001, 5, False, 1))


def test_the_curve_is_redrawn_with_the_first_energies_and_at_the_end(demo, monkeypatch, one_thread):
    monkeypatch.setattr(live, "PLOT_EVERY_S", 1e9)  # no redraw is ever due by time
    out = run(demo)
    assert len(out) >= 20  # the noise, a frame every 2 steps (frame_every(40)), the final one
    c = curves(out)
    assert c[0] == live.EMPTY_CURVE.plot  # the starting noise: the empty curve the page already shows
    assert c[1] != c[0] and c[1:-1] == [c[1]] * (len(c) - 2) and c[-1] != c[1]  # drawn once, then at the end
    assert redraws(out) == 2
    assert all(getattr(o[0], "ndim", 0) == 3 for o in out)  # every frame has its grid
    assert "mean energy" in c[-1] and "step" in c[-1]


def test_with_no_interval_every_frame_redraws(demo, monkeypatch, one_thread):
    monkeypatch.setattr(live, "PLOT_EVERY_S", 0.0)
    out = run(demo, steps=10)
    assert redraws(out) == len(out) - 1  # all but the starting noise


def test_every_energy_plot_is_on_the_page_from_the_start(demo):
    """Each tab's plot has a value when the page loads, so the browser loads plotly then, not mid-chain."""
    plots = [c for c in demo.get_config_file()["components"]
             if c["type"] == "plot" and str(c["props"].get("elem_id", "")).endswith("-energy")]
    assert len(plots) == 5
    for c in plots:
        value = c["props"].get("value")
        assert value and value.get("type") == "plotly" and value["plot"] == live.EMPTY_CURVE.plot, c["props"]


def test_a_session_keeps_no_more_state_after_more_chains(demo, one_thread):
    """Through the queue, as a page drives it: the session's copy of the app does not grow with its chains."""
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False, download_files=False)
        f = gradio_client.handle_file
        calls = [(["CIFAR-10", 2, 12, 100, 0.001, 1, False, 1], "/unconditional"),
                 ([[f(str(EX / "cifar10_cat.jpg"))], "CIFAR-10", 2, 12, 100, 0.001, 1.0, 1, False, 1], "/lookalikes")]

        def blocks() -> int:
            (session,) = [s for k, s in demo.state_holder.session_data.items() if k == client.session_hash]
            return len(session.blocks_config.blocks)

        for args, api in calls:
            client.submit(*args, api_name=api).result()
        after_two = blocks()
        for _ in range(3):
            for args, api in calls:
                client.submit(*args, api_name=api).result()
        assert blocks() == after_two == len(demo.blocks)
    finally:
        demo.close()
