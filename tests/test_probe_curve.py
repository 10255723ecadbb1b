"""measure/probe_curve.py: a run's probes join the recorded history (a rerun replaces, never duplicates), the
losing branch of an A/B stays in the table but leaves the picture, and bad input is a message, not a traceback."""
from __future__ import annotations

import json

from PIL import Image

from conftest import load_script
from test_plot_run import _probe, _row

curve = load_script("measure/probe_curve.py", "probe_curve")


def _run(folder, probes):
    folder.mkdir()
    lines = [_row(it, it / 10, 1.0) for it in range(10, 60, 10)]
    lines += [{**_probe(it, it / 10, fid), "weights": "ema"} for it, fid in probes]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def test_runs_join_the_history_and_branches_leave_the_picture(tmp_path, capsys, monkeypatch):
    history = tmp_path / "probes.json"
    history.write_text(json.dumps([
        {"model": "m", "iteration": 5, "weights": "live", "what": "bundle", "fid": 90.0, "fd_judge": 9.0},
        {"model": "m", "iteration": 7, "weights": "live", "what": "arm", "fid": 1.0, "branch": True}]))
    run = _run(tmp_path / "r", [(20, 80.0), (40, 70.0)])
    args = ["--history", str(history), "--run", f"m={run}", "--update", "--png", str(tmp_path / "p.png")]
    assert curve.main(args) == 0
    rows = json.loads(history.read_text())
    assert [(r["iteration"], r["fid"], r["weights"]) for r in rows] == [(5, 90.0, "live"), (7, 1.0, "live"),
                                                                       (20, 80.0, "ema"), (40, 70.0, "ema")]
    assert curve.main(args) == 0 and json.loads(history.read_text()) == rows  # a rerun adds nothing
    table = capsys.readouterr().out
    assert "| m | 40 | ema | --probe-every of run r | 70 |" in table and "| m | 7 | live | arm | 1 |" in table
    assert Image.open(tmp_path / "p.png").size == (1500, 400)
    drawn = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda self, x, y, *a, **k: drawn.append(list(x)))
    curve.picture(rows, tmp_path / "q.png")
    assert [5, 20, 40] in drawn and not any(7 in xs for xs in drawn)


def test_bad_input_is_a_message(tmp_path, capsys):
    assert curve.main(["--history", str(tmp_path / "h.json"), "--run", "no-equals-sign"]) == 2
    assert "expected MODEL=RUN" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert curve.main(["--history", str(tmp_path / "bad.json")]) == 2
