"""The run dashboard (clel/dashboard.py, scripts/plot_run.py): resumed segments are merged into one timeline, every
series gets a trace, and the HTML/PNG outputs are self-contained and valid."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from clel.dashboard import figure, markers, read_run, write_html, write_png

REPO = Path(__file__).resolve().parents[1]
SERIES = ("loss", "l_ebm", "l_le", "e_pos", "e_neg", "cos", "lr", "lr_encoder")
PROBE_KEYS = ("fid", "clamped_fraction", "judged_accuracy", "kid", "fd_judge", "kid_judge")


def _row(it: int, t: float, base: float) -> dict:
    return {"iter": it, "time": t, "loss": base + it, "l_ebm": -0.01, "l_le": base + it + 0.01, "e_pos": 0.1,
            "e_neg": 0.2, "cd": -0.1, "cos": 0.5, "e_max": 0.3, "lr": 1e-4, "lr_encoder": 0.03, "it_per_s": 1.0}


def _probe(it: int, t: float, fid: float) -> dict:
    return {"event": "probe", "iteration": it, "time": t, "seconds": 2.0, "fid": fid, "clamped_fraction": 0.1,
            "judged_accuracy": 0.5, "kid": 0.01, "fd_judge": fid / 10, "kid_judge": 0.002,
            "feature_judge": "cifar10_classifier.safetensors"}


def make_run(folder: Path, seg2_to: int = 150, truncated: bool = False) -> Path:
    """Segment 1: iterations 10..100 over 1000 s, checkpoint at 50, killed. Segment 2 resumes from that checkpoint
    (so it repeats 60..100) and runs to seg2_to; its values are offset by 1000 so the winner is visible."""
    lines = [{"event": "start", "time": 0.5, "iteration": 0, "config": {"dataset": "cifar10"}, "resume": None}]
    lines += [_row(it, it * 10.0, 0.0) for it in range(10, 101, 10)]
    lines += [{"event": "checkpoint", "time": 500.0, "iteration": 50, "path": "checkpoints/iter-0000050"},
              _probe(50, 505.0, 90.0), _probe(100, 1000.0, 80.0)]
    lines += [{"event": "start", "time": 0.2, "iteration": 50, "config": {"dataset": "cifar10"},
               "resume": "checkpoint"}, {"event": "message", "time": 0.3, "text": "resumed"}]
    lines += [_row(it, (it - 50) * 10.0, 1000.0) for it in range(60, seg2_to + 1, 10)]
    if seg2_to >= 150:
        lines += [_probe(100, 500.0, 70.0), _probe(150, 1000.0, 60.0),
                  {"event": "end", "time": 1001.0, "iteration": 150, "seconds": 1001.0}]
    folder.mkdir(parents=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if truncated:
        text += '{"iter": 160, "time": 1100.0, "loss": 1.2'  # a writer killed mid-line
    (folder / "metrics.jsonl").write_text(text)
    (folder / "samples").mkdir()
    for it, colour in ((50, "red"), (150, "blue")):
        Image.new("RGB", (10, 10), colour).save(folder / "samples" / f"iter-{it:07d}.png")
    return folder


def traces(fig, key: str) -> list:
    return [t for t in fig.data if t.meta and t.meta["key"] == key]


def test_resumed_segments_merge_into_one_timeline(tmp_path):
    run = read_run(make_run(tmp_path / "run"))
    fig = figure([run])
    for key in SERIES + PROBE_KEYS + ("hours",):
        assert len(traces(fig, key)) == 1, key
    for t in fig.data:
        xs = list(t.x)
        assert all(a < b for a, b in zip(xs, xs[1:])), (t.meta, xs)
    (loss,) = traces(fig, "loss")
    by_it = dict(zip(loss.x, loss.y))
    assert list(loss.x) == list(range(10, 151, 10))
    assert by_it[50] == 50 and by_it[60] == 1060 and by_it[100] == 1100  # the resumed segment wins from 60 on
    (fid,) = traces(fig, "fid")
    assert dict(zip(fid.x, fid.y)) == {50: 90.0, 100: 70.0, 150: 60.0}
    assert run.superseded == 5 + 1  # rows 60..100 and the probe at 100 of the first segment
    # Hours accumulate across segments: the second segment's clock starts at the first one's 1000 s.
    hours = dict(zip(loss.x, loss.customdata))
    assert hours[50] == pytest.approx(500 / 3600) and hours[60] == pytest.approx(1100 / 3600)
    assert run.hours == pytest.approx(2001 / 3600)
    # The resume is marked at iteration 50 (the fresh first segment is not), on the figure too.
    assert [m[0] for m in markers(run)] == [50]
    assert {s.x0 for s in fig.layout.shapes} == {50}
    assert [it for it, _ in run.grids] == [50, 150]


def test_the_judge_feature_distances_get_their_own_named_panels(tmp_path):
    from clel.dashboard import panels

    titles = [p.title for p in panels([read_run(make_run(tmp_path / "run"))])]
    assert "probe: FD, judge features" in titles and "probe: KID, judge features" in titles
    assert not any("feature_judge" in t for t in titles)  # the judge's name is recorded, not plotted


def test_abandoned_tail_is_dropped(tmp_path):
    # Segment 2 resumed at 50 and has only reached 80: segment 1's 90 and 100 (and the probe and grid past 80)
    # are from a timeline that no longer exists.
    run = read_run(make_run(tmp_path / "run", seg2_to=80))
    assert [r["iter"] for r in run.rows] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert run.rows[-1]["loss"] == 1080
    assert [p["iteration"] for p in run.probes] == [50]
    assert [it for it, _ in run.grids] == [50]


def test_truncated_last_line_is_skipped_and_counted(tmp_path):
    run = read_run(make_run(tmp_path / "run", truncated=True))
    assert run.skipped == 1
    assert run.rows[-1]["iter"] == 150


def test_html_is_self_contained_and_png_valid(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", seg2_to=80)
    runs = [read_run(a), read_run(b)]
    fig = figure(runs)
    assert {t.meta["run"] for t in traces(fig, "loss")} == {"a", "b"}
    assert len({t.line.color for t in traces(fig, "loss")}) == 2  # one colour per run
    html = write_html(runs, tmp_path / "out" / "dash.html", fig=fig).read_text()
    assert "plotly.js v" in html and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 3  # a: grids 50 and 150; b: 50 only
    assert "iter 150" in html
    png = write_png(runs, tmp_path / "out" / "dash.png")
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 500 and im.height > 500


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "plot_run.py"), *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_both_files_and_rejects_a_folder_without_metrics(tmp_path):
    run = make_run(tmp_path / "run", truncated=True)
    r = _cli(str(run), "--out", str(tmp_path / "o" / "d.html"))
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unparsable line" in r.stdout
    assert (tmp_path / "o" / "d.html").stat().st_size > 1e6 and (tmp_path / "o" / "d.png").is_file()
    (tmp_path / "empty").mkdir()
    r = _cli(str(tmp_path / "empty"), "--out", str(tmp_path / "x.html"))
    assert r.returncode == 2
    assert "no metrics.jsonl" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
