#!/usr/bin/env python
"""Side-by-side benchmark: the plain eager fp32 path against the fast path, in one run.

Examples:
    python scripts/bench.py                          # CPU: Small and Base
    python scripts/bench.py --device cuda --archs small,base,large --json docs/bench-h200.json

Every row times the same work both ways and prints the ratio, achieved TFLOP/s
(FLOPs counted by torch's FlopCounterMode) and peak memory.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clel import CLEL, energy, get_preset  # noqa: E402
from clel.fast import FastPath, fast_sgld, prepare  # noqa: E402
from clel.sgld import sgld  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sgld_step_flops(model: CLEL, x0: torch.Tensor) -> int:
    """FLOPs of one SGLD step: forward and the input-gradient backward.

    FlopCounterMode cannot follow autograd.grad, so count a .backward() with the
    parameters frozen: the same kernels as an SGLD step, no weight gradients.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        x = x0.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            energy(model, x).sum().backward()
        return counter.get_total_flops()
    finally:
        for p in params:
            p.requires_grad_(True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide peak RSS


def chain_rows(arch: str, device: torch.device, batches: list[int], steps: int, repeats: int,
               fast: FastPath) -> list[dict]:
    cfg = get_preset(f"cifar10-{arch}")
    torch.manual_seed(0)
    plain_model = CLEL(cfg).to(device).eval()
    fast_model = prepare(copy.deepcopy(plain_model), fast).eval()
    rows = []
    for n in batches:
        x0 = torch.rand(n, 3, cfg.image_size, cfg.image_size, device=device)
        plain = lambda: sgld(lambda x: energy(plain_model, x), x0, steps=steps)  # noqa: E731
        quick = lambda: fast_sgld(fast_model, lambda x: energy(fast_model, x), x0, steps, 100.0, 1e-3,  # noqa: E731
                                  100.0, fast)
        flops = sgld_step_flops(plain_model, x0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_plain = timeit(plain, device, repeats) / steps
        t_fast = timeit(quick, device, repeats) / steps
        rows.append({"arch": arch, "what": f"SGLD step, batch {n}", "plain_ms": 1e3 * t_plain, "fast_ms": 1e3 * t_fast,
                     "speedup": t_plain / t_fast, "gflop": flops / 1e9, "fast_tflops": flops / t_fast / 1e12,
                     "peak_mb": peak_memory_mb(device)})
    return rows


def demo_row(device: torch.device, repeats: int, fast: FastPath) -> dict:
    """The app's default: 16 images x 60 steps of the Small model at 32x32."""
    cfg = get_preset("cifar10-small")
    torch.manual_seed(0)
    model = prepare(CLEL(cfg).to(device), fast).eval()
    plain_model = CLEL(cfg).to(device).eval()
    x0 = torch.rand(16, 3, 32, 32, device=device)
    t_plain = timeit(lambda: sgld(lambda x: energy(plain_model, x), x0, steps=60), device, repeats, warmup=0)
    t_fast = timeit(lambda: fast_sgld(model, lambda x: energy(model, x), x0, 60, 100.0, 1e-3, 100.0, fast),
                    device, repeats, warmup=0)
    return {"arch": "small", "what": "demo chain, 16 images x 60 steps", "plain_ms": 1e3 * t_plain, "fast_ms": 1e3 * t_fast,
            "speedup": t_plain / t_fast, "gflop": None, "fast_tflops": None, "peak_mb": peak_memory_mb(device)}


def print_table(rows: list[dict]) -> None:
    head = f"{'arch':6} {'what':34} {'plain ms':>10} {'fast ms':>10} {'ratio':>7} {'GFLOP':>8} {'TFLOP/s':>8} {'peak MB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        gf = "" if r["gflop"] is None else f"{r['gflop']:.1f}"
        tf = "" if r["fast_tflops"] is None else f"{r['fast_tflops']:.3f}"
        print(f"{r['arch']:6} {r['what']:34} {r['plain_ms']:10.1f} {r['fast_ms']:10.1f} {r['speedup']:6.2f}x "
              f"{gf:>8} {tf:>8} {r['peak_mb']:8.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--archs", default="small,base", help="comma-separated: small, base, large")
    p.add_argument("--batch", type=int, default=64, help="training batch size for SGLD rows")
    p.add_argument("--sample-batch", type=int, default=None,
                   help="sampling batch size (default: 16 on CPU, 1000 on CUDA)")
    p.add_argument("--steps", type=int, default=5, help="SGLD steps per timed chain")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--no-demo", action="store_true", help="skip the 16 x 60 demo-chain row")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and machine info here")
    args = p.parse_args()

    device = torch.device(args.device)
    fast = FastPath.best(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sample_batch = args.sample_batch or (1000 if device.type == "cuda" else 16)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "fast_path": fast.__dict__,
            "command": " ".join(sys.argv)}
    print(json.dumps(info))
    rows = []
    for arch in args.archs.split(","):
        rows += chain_rows(arch, device, sorted({args.batch, sample_batch}), args.steps, args.repeats, fast)
    if not args.no_demo:
        rows.append(demo_row(device, max(1, args.repeats // 2), fast))
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
