"""measure/bench.py: the training-iteration measurement and the evaluation of the performance targets."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_cli", REPO / "measure" / "bench.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_cli"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def tiny_rows(one_thread):
    # One warm-up and one timed iteration of each trainer, 2 SGLD steps: a few seconds on one core.
    return bench.train_rows("tiny", torch.device("cpu"), repeats=1, sgld_steps=2, warmup=1)


def test_train_rows_measure_plain_fast_and_beta0(tiny_rows):
    train, overhead = tiny_rows
    assert train["kind"] == "train" and overhead["kind"] == "overhead"
    assert train["arch"] == "tiny" and train["batch"] == 16
    # The steps actually run are reported next to the preset's, so a shortened chain cannot pass for the real one.
    assert train["sgld_steps"] == overhead["sgld_steps"] == 2 and train["preset_sgld_steps"] == 5
    assert "2 SGLD steps" in train["what"] and "preset: 5" in train["what"]
    assert train["plain_ms"] > 0 and train["fast_ms"] > 0
    assert train["speedup"] == pytest.approx(train["plain_ms"] / train["fast_ms"])
    assert train["gflop"] > 0 and train["fast_tflops"] == pytest.approx(train["gflop"] / train["fast_ms"])
    # The CLEL row of the overhead is the same measurement as the fast training row.
    assert overhead["clel_ms"] == train["fast_ms"] and overhead["beta0_ms"] > 0
    assert overhead["overhead"] == pytest.approx(overhead["clel_ms"] / overhead["beta0_ms"] - 1)
    assert torch.get_num_threads() == 1  # the trainer did not change this process's thread count


def test_iteration_flops_decompose_into_sgld_and_the_rest():
    cfg = bench.get_preset("tiny").replace(sgld_steps=3)
    with bench.tempfile.TemporaryDirectory() as tmp:
        trainer = bench.build_trainer(cfg, torch.device("cpu"), False, "fp32", Path(tmp) / "run")
        x0 = torch.rand(cfg.batch_size, 3, 32, 32)
        step = bench.sgld_step_flops(trainer.model, x0)
        total = bench.iteration_flops(trainer)
        trainer.cfg = cfg.replace(sgld_steps=5)
        assert bench.iteration_flops(trainer) - total == 2 * step > 0
        assert trainer.cfg.sgld_steps == 5  # restored after the count


def fake_rows(steps: int = 60, **fields) -> list[dict]:
    base = {"sgld_steps": steps, "preset_sgld_steps": 60}
    rows = [
        {"arch": "small", "kind": "sgld", "batch": 16, "speedup": 9.0},  # the wrong batch must not be picked
        {"arch": "small", "kind": "sgld", "batch": 64, "speedup": fields.get("speedup", 1.6)},
        {"arch": "small", "kind": "demo", "batch": 16, "fast_ms": fields.get("demo_ms", 2500.0)},
        {"arch": "small", "kind": "train", "fast_ms": 11.0, "peak_mb": 900.0, **base},
        {"arch": "base", "kind": "train", "fast_ms": fields.get("base_ms", 80.0), "peak_mb": 3000.0, **base},
        {"arch": "base", "kind": "overhead", "overhead": fields.get("overhead", 0.05), **base},
        {"arch": "base", "kind": "fid", "batch": 1000, "images": 50000, "steps": 600, "fast_ms": 7 * 60e3},
    ]
    return rows


def test_cpu_targets_pass_and_fail():
    res = bench.evaluate_targets(fake_rows(speedup=1.6, demo_ms=2500.0), "cpu")
    assert len(res) == 3  # only the CPU targets
    assert [r["status"] for r in res] == ["pass", "fail", "not measured"]  # no baseline row in fake_rows
    assert res[0]["value"] == pytest.approx(1.6) and res[1]["value"] == pytest.approx(2.5)  # demo in seconds
    res = bench.evaluate_targets(fake_rows(speedup=1.4, demo_ms=1900.0), "cpu")
    assert [r["status"] for r in res] == ["fail", "pass", "not measured"]
    row = {"arch": "small", "kind": "baseline", "speedup": 1.3, "sgld_steps": 60, "preset_sgld_steps": 60}
    assert bench.evaluate_targets([row], "cpu")[2]["status"] == "fail"
    assert bench.evaluate_targets([{**row, "sgld_steps": 5}], "cpu")[2]["status"] == "n/a"  # shortened chains


def test_the_baseline_side_undoes_the_newer_fast_path(monkeypatch):
    import clel.models

    monkeypatch.setattr(clel.models, "avg_pool", clel.models.avg_pool)  # restored after the test
    cfg = bench.get_preset("tiny")
    with bench.tempfile.TemporaryDirectory() as tmp:
        trainer = bench.build_trainer(cfg, torch.device("cpu"), True, "fp32", Path(tmp) / "run")
        convs = [p for p in trainer.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        assert trainer.fast.reuse_memory and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert any(isinstance(m, bench.SmallMapConv2d) for m in trainer.model.modules())
        bench.as_of_baseline(trainer)
        assert not trainer.fast.reuse_memory and trainer.fast.cache_sn and trainer.fast.channels_last
        assert all(p.is_contiguous() for p in convs) and clel.models.avg_pool is torch.nn.functional.avg_pool2d
        assert not any(isinstance(m, bench.SmallMapConv2d) for m in trainer.model.modules())
        assert trainer.train_step() is not None


def test_baseline_row_times_both_sides_in_fresh_processes(one_thread):
    row = bench.baseline_row("tiny", torch.device("cpu"), rounds=1, repeats=1, warmup=0, sgld_steps=2, threads=1)
    assert row["kind"] == "baseline" and row["arch"] == "tiny" and row["rounds"] == 1
    assert len(row["baseline_s"]) == len(row["now_s"]) == 1 and row["plain_ms"] > 0 and row["fast_ms"] > 0
    assert row["speedup"] == pytest.approx(row["plain_ms"] / row["fast_ms"])
    assert row["sgld_steps"] == 2 and "preset: 5" in row["what"]


def test_cuda_targets_pass_fail_and_units():
    res = {r["target"]: r for r in bench.evaluate_targets(fake_rows(), "cuda")}
    assert len(res) == 5
    by = {name.split(",")[0].split(" <=")[0]: r for name, r in res.items()}
    assert by["Base full training iteration"]["status"] == "fail"  # 80 ms > 75 ms
    assert by["Small full training iteration"]["status"] == "pass"  # 11 ms <= 12 ms
    assert by["FID sampling"]["status"] == "fail" and by["FID sampling"]["value"] == pytest.approx(7.0)  # min
    assert by["CLEL overhead over beta=0 (Base)"]["status"] == "pass"
    assert by["CLEL overhead over beta=0 (Base)"]["value"] == pytest.approx(5.0)  # percent
    assert by["peak GPU memory"]["status"] == "pass" and by["peak GPU memory"]["value"] == pytest.approx(3000 / 1024)


def test_shortened_chains_and_missing_rows_are_not_judged():
    res = bench.evaluate_targets(fake_rows(steps=5), "cuda")
    st = {r["target"]: r["status"] for r in res}
    assert [s for t, s in st.items() if "training iteration" in t or "overhead" in t] == ["n/a"] * 3
    assert st["peak GPU memory, Base training <= 4 GB"] == "pass"  # memory does not depend on the chain length
    only_small = [r for r in fake_rows() if r["arch"] == "small"]
    res = bench.evaluate_targets(only_small, "cuda")
    assert sum(r["status"] == "not measured" for r in res) == 4 and all(
        r["value"] is None for r in res if r["status"] == "not measured")
