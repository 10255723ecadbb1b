"""The sampling sweep: every cell measured, and the diversity measure behind it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from clel.eval.judges import diversity
from clel.models import CLEL
from clel.weights import export_pretrained
from test_trainer import CLASSES, small_cfg

REPO = Path(__file__).resolve().parents[1]


def test_diversity_is_the_mean_pairwise_distance():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert abs(diversity(f) - (5 + 5 + 0) * 2 / 6) < 1e-12  # pairs: (0,1)=5, (1,2)=5, (0,2)=0
    assert diversity(f[:1]) == 0.0 and diversity(torch.ones(4, 3)) == 0.0


def test_sweep_measures_every_cell(tmp_path):
    torch.manual_seed(0)
    model = CLEL(small_cfg())
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(10, 16, generator=g), dim=1)
    export_pretrained(model, tmp_path / "w", extras={"class_prototypes": z, "class_contrasts": -z},
                      extra_names={"class_prototypes": CLASSES, "class_contrasts": CLASSES})
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "measure" / "sweep_sampling.py"), "--weights", str(tmp_path / "w"),
           "--out", str(out), "--guidance", "0.1", "3", "--per-class", "2", "--sweeps", "2", "--steps", "1",
           "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "results.json").read_text())
    cells = {(r["chain"], r["direction"], r["guidance"]) for r in res["rows"]}
    assert cells == {(c, d, g) for c in ("plain", "reference") for d in ("mean", "contrast") for g in (0.1, 3.0)}
    for r in res["rows"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["clamped"] <= 1 and r["diversity"] >= 0
        assert set(r["per_class"]) == set(CLASSES) and (out / r["grid"]).is_file()
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == len(res["rows"]) and "Unconditional samples" in table


def test_sweep_cells_for_steps_per_sweep_ramp_and_bound(tmp_path):
    torch.manual_seed(0)
    model = CLEL(small_cfg())
    z = torch.nn.functional.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    export_pretrained(model, tmp_path / "w", extras={"class_prototypes": z},
                      extra_names={"class_prototypes": CLASSES})
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "measure" / "sweep_sampling.py"), "--weights", str(tmp_path / "w"),
           "--out", str(out), "--guidance", "3", "--per-class", "1", "--chain", "reference", "--direction", "mean",
           "--steps", "1", "2", "--total-steps", "4", "--ramp", "0", "0.5", "--bound", "0", "1", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "results.json").read_text())
    cells = {(r["sweeps x steps"], r["ramp"], r["bound"]) for r in res["rows"]}
    assert cells == {(s, r, b) for s in ("4x1", "2x2") for r in (0.0, 0.5) for b in ("none", 1.0)}
    assert set(res["unconditional"]) == {"live/reference/4x1", "live/reference/2x2"}  # one per chain length
    assert len({r["grid"] for r in res["rows"]}) == 8 and all((out / r["grid"]).is_file() for r in res["rows"])
    assert "| sweeps x steps | ramp | bound |" in (out / "table.md").read_text()
