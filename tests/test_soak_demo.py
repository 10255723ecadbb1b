"""The demo's memory over many chains: measure/soak_demo.py against a server of its own, on tiny random exports.

Slow (about two minutes on 2 shared CPU cores); the 200-chain soak on the bundled weights is in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_soak_keeps_the_servers_memory_flat(tmp_path):
    pytest.importorskip("gradio_client")
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "measure" / "soak_demo.py"), "--tiny", "--chains", "60",
                          "--baseline", "20", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert out.is_file(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == [], result["failures"]
    assert len(result["rss_mb_curve"]) == 60 and result["rss_mb_after_baseline"] == result["rss_mb_curve"][19]
    assert result["ratio"] <= 1.10, (result["rss_mb_after_baseline"], result["rss_mb_after_last"])
    assert result["passed"] and run.returncode == 0, run.stderr[-3000:]
    endpoints = set(re.findall(r"^chain +\d+ (/\w+) ", run.stderr, re.M))  # every tab had its chains
    assert endpoints == {"/unconditional", "/classes", "/faces", "/lookalikes", "/interpolate"}, endpoints
