#!/usr/bin/env python
"""Side-by-side benchmark: the plain eager fp32 path against the fast path, in one run.

Examples:
    python measure/bench.py --archs small --train-sgld-steps 5          # CPU: short training iterations
    python measure/bench.py --device cuda --archs small,base,large --json docs/bench-h200.json

For each architecture (Small, Base, and Large when asked for) the same work is timed both ways:

  1. one SGLD step at the training batch (64) and at the sampling batch: ratio, achieved TFLOP/s
     (FLOPs counted by torch's FlopCounterMode) and peak memory;
  2. one full CLEL training iteration (Algorithm 1, the real Trainer.train_step on the cifar10-<arch>
     preset with random in-memory data): plain = TrainOptions(fast=False) in strict fp32, fast = the fast
     SGLD path plus bf16 autocast on CUDA (TF32 where bf16 is missing; on CPU the trainer runs fp32);
  3. CLEL's overhead over the beta = 0 baseline (the same trainer with beta=0: no encoder), both fast;
  4. FID sampling, 50k images x 600 SGLD steps: a projection from the measured time per step at the
     sampling batch, not a measurement;
  5. the demo chain (16 images x 60 steps, Small);
  6. a full training iteration now against the fast path of 2026-12-01 (NCHW networks, glibc's default
     frees, avg_pool2d's and oneDNN's own backward): each side in fresh processes, alternating, because the
     allocator setting is process-wide.

After the table, the performance issue's targets for this device, each with its measured value and
pass / fail (n/a where the run cannot decide it, e.g. iterations timed with fewer SGLD steps).
Plain means strict fp32 everywhere: TF32 is switched off for the plain rows on CUDA.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


from clel import CLEL, CLELConfig, energy, get_preset
from clel.data import ImageSet
from clel.fast import FastPath, SmallMapConv2d, fast_sgld, native_bf16, prepare
from clel.sgld import sgld
from clel.fast import set_precision
from clel.runtime import add_run_options, set_threads
from clel.trainer import Trainer, TrainOptions

FID_IMAGES = 50_000
BASELINE = "2026-12-01"  # the trainer's fast path that the iteration-speed target is measured against
FID_STEPS = 600  # 10 sweeps of 60 steps: the FID protocol of clel.eval.fid.GenerateSettings

# ----------------------------------------------------------------------------------------------------------------
# Timing and memory helpers
# ----------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)  # kernels are asynchronous: stop the clock when the GPU is done, not when the launch is
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on CPU the process-wide peak RSS (cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_memory(device: torch.device) -> None:
    """Drop what the previous measurement left, so the next peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


# ----------------------------------------------------------------------------------------------------------------
# 1. SGLD steps
# ----------------------------------------------------------------------------------------------------------------


def chain_rows(arch: str, device: torch.device, batches: list[int], steps: int, repeats: int,
               fast: FastPath, warmup: int = 1) -> list[dict]:
    cfg = get_preset(f"cifar10-{arch}")
    torch.manual_seed(0)
    plain_model = CLEL(cfg).to(device).eval()
    fast_model = prepare(copy.deepcopy(plain_model), fast).eval()
    rows = []
    for n in batches:
        x0 = torch.rand(n, 3, cfg.image_size, cfg.image_size, device=device)
        plain = lambda: sgld(lambda x: energy(plain_model, x), x0, steps=steps)  # noqa: E731
        quick = lambda: fast_sgld(fast_model, lambda x: energy(fast_model, x), x0, steps,  # noqa: E731
                                  cfg.sgld_step_size, cfg.sgld_noise, cfg.sgld_grad_clip, fast)
        flops = sgld_step_flops(plain_model, x0)
        reset_peak_memory(device)
        t_plain = timeit(plain, device, repeats, warmup) / steps
        plain_peak = peak_memory_mb(device)
        reset_peak_memory(device)
        t_fast = timeit(quick, device, repeats, warmup) / steps
        rows.append({"arch": arch, "kind": "sgld", "batch": n, "what": f"SGLD step, batch {n}",
                     "plain_ms": 1e3 * t_plain, "fast_ms": 1e3 * t_fast, "speedup": t_plain / t_fast,
                     "gflop": flops / 1e9, "fast_tflops": flops / t_fast / 1e12,
                     "plain_peak_mb": plain_peak, "peak_mb": peak_memory_mb(device)})
    del plain_model, fast_model
    free_memory(device)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# 2.-3. Full training iterations (Algorithm 1) and CLEL's overhead over beta = 0
# ----------------------------------------------------------------------------------------------------------------


def random_images(n: int, size: int, seed: int = 0) -> ImageSet:
    """Random uint8 images: an iteration costs the same on noise as on CIFAR-10, and no data set is needed."""
    g = torch.Generator().manual_seed(seed)
    return ImageSet(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g))


def fast_precision(device: torch.device) -> str:
    """The trainer's fastest precision here: bf16 autocast where bf16 is native; else TF32 on CUDA, fp32 on CPU."""
    if native_bf16(device):
        return "bf16"
    return "tf32" if device.type == "cuda" else "fp32"


def build_trainer(cfg: CLELConfig, device: torch.device, fast: bool, precision: str, out: Path) -> Trainer:
    n_real = max(cfg.batch_size, cfg.contrastive_batch_size or cfg.batch_size)
    opts = TrainOptions(out=str(out), device=device.type, fast=fast, precision=precision, progress=False,
                        tensorboard=False,
                        # Keep this process's thread count: the trainer would otherwise drop to 1 on a busy machine.
                        threads=torch.get_num_threads() if device.type == "cpu" else None)
    return Trainer(cfg, opts, data=random_images(4 * n_real, cfg.image_size))


def time_train_steps(trainer: Trainer, device: torch.device, repeats: int, warmup: int) -> tuple[float, float]:
    """(median seconds per train_step, peak MB). Warm-up iterations pay cuDNN autotuning and first allocations."""

    def step() -> None:
        if trainer.train_step() is None:  # a rollback is extra work a healthy run does not do; say so
            print(f"warning: iteration {trainer.it} diverged and was rolled back; its time is in the median",
                  file=sys.stderr)

    reset_peak_memory(device)
    return timeit(step, device, repeats, warmup), peak_memory_mb(device)


def iteration_flops(trainer: Trainer) -> int:
    """FLOPs of one training iteration: SGLD steps x one step, plus one iteration without SGLD.

    FlopCounterMode does not see inside the chain's autograd.grad (see sgld_step_flops), so the iteration
    is split: the chain is counted step by step, the rest (augmentations, every network's forward and
    backward, optimiser) by running train_step with sgld_steps=0 once.
    """
    cfg, n = trainer.cfg, trainer.cfg.batch_size
    x0 = torch.rand(n, 3, cfg.image_size, cfg.image_size, device=trainer.device)
    step = sgld_step_flops(trainer.model, x0)
    trainer.cfg = cfg.replace(sgld_steps=0)
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step()
    finally:
        trainer.cfg = cfg
    return counter.get_total_flops() + cfg.sgld_steps * step


def measure_trainer(cfg: CLELConfig, device: torch.device, fast: bool, precision: str, repeats: int, warmup: int,
                    count_flops: bool = False) -> tuple[float, float, int | None]:
    """(seconds per iteration, peak MB, FLOPs per iteration or None) of a fresh trainer, then freed."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, device, fast, precision, Path(tmp) / "run")  # train_step writes nothing
        try:
            seconds, peak = time_train_steps(trainer, device, repeats, warmup)
            flops = iteration_flops(trainer) if count_flops else None
        finally:
            del trainer
            set_precision("fp32", device)  # precision flags are global: leave strict fp32 for the next row
            free_memory(device)
    return seconds, peak, flops


def train_rows(preset: str, device: torch.device, repeats: int, sgld_steps: int | None = None,
               warmup: int = 1) -> list[dict]:
    """A plain-vs-fast row for one training iteration and a CLEL-over-beta=0 row (both fast)."""
    cfg = get_preset(preset)
    full_steps = cfg.sgld_steps
    if sgld_steps is not None:
        cfg = cfg.replace(sgld_steps=sgld_steps)
    precision = fast_precision(device)
    t_plain, plain_peak, flops = measure_trainer(cfg, device, False, "fp32", repeats, warmup, count_flops=True)
    t_fast, fast_peak, _ = measure_trainer(cfg, device, True, precision, repeats, warmup)
    t_base, _, _ = measure_trainer(cfg.replace(beta=0.0), device, True, precision, repeats, warmup)
    steps = cfg.sgld_steps
    # Rows say how many SGLD steps they ran, so a shortened chain is never mistaken for the real iteration.
    note = "" if steps == full_steps else f" (preset: {full_steps})"
    common = {"arch": cfg.arch, "batch": cfg.batch_size, "sgld_steps": steps, "preset_sgld_steps": full_steps,
              "fast_setup": f"fast SGLD path, {precision}"}
    train = {**common, "kind": "train", "what": f"train iteration, {steps} SGLD steps{note}",
             "plain_ms": 1e3 * t_plain, "fast_ms": 1e3 * t_fast, "speedup": t_plain / t_fast,
             "gflop": flops / 1e9, "fast_tflops": flops / t_fast / 1e12,
             "plain_peak_mb": plain_peak, "peak_mb": fast_peak}
    overhead = {**common, "kind": "overhead", "what": f"CLEL over beta=0, fast, {steps} steps{note}",
                "beta0_ms": 1e3 * t_base, "clel_ms": 1e3 * t_fast, "overhead": t_fast / t_base - 1.0}
    return [train, overhead]


# ----------------------------------------------------------------------------------------------------------------
# 4. FID sampling, projected from the measured step time
# ----------------------------------------------------------------------------------------------------------------


def fid_row(step_row: dict, images: int = FID_IMAGES, steps: int = FID_STEPS) -> dict:
    """Projected (not measured) time to draw ``images`` samples with ``steps`` SGLD steps each.

    Scales the measured time per SGLD step at the sampling batch by the number of batches and steps; it
    leaves out what a real sampler adds (writing shards, the Inception pass).
    """
    batch = step_row["batch"]
    n_steps = math.ceil(images / batch) * steps
    return {"arch": step_row["arch"], "kind": "fid", "batch": batch, "images": images, "steps": steps,
            "projected": True,
            "what": f"FID {images // 1000}k x {steps} steps (projected)",
            "plain_ms": step_row["plain_ms"] * n_steps, "fast_ms": step_row["fast_ms"] * n_steps,
            "speedup": step_row["speedup"]}


# ----------------------------------------------------------------------------------------------------------------
# 5. The demo chain
# ----------------------------------------------------------------------------------------------------------------


def demo_row(device: torch.device, repeats: int, fast: FastPath) -> dict:
    """The app's default: 16 images x 60 steps of the Small model at 32x32."""
    cfg = get_preset("cifar10-small")
    torch.manual_seed(0)
    model = prepare(CLEL(cfg).to(device), fast).eval()
    plain_model = CLEL(cfg).to(device).eval()
    x0 = torch.rand(16, 3, 32, 32, device=device)
    reset_peak_memory(device)
    t_plain = timeit(lambda: sgld(lambda x: energy(plain_model, x), x0, steps=60), device, repeats, warmup=0)
    plain_peak = peak_memory_mb(device)
    reset_peak_memory(device)
    t_fast = timeit(lambda: fast_sgld(model, lambda x: energy(model, x), x0, cfg.sgld_steps, cfg.sgld_step_size,
                                      cfg.sgld_noise, cfg.sgld_grad_clip, fast),
                    device, repeats, warmup=0)
    return {"arch": "small", "kind": "demo", "batch": 16, "what": "demo chain, 16 images x 60 steps",
            "plain_ms": 1e3 * t_plain, "fast_ms": 1e3 * t_fast, "speedup": t_plain / t_fast,
            "plain_peak_mb": plain_peak, "peak_mb": peak_memory_mb(device)}


# ----------------------------------------------------------------------------------------------------------------
# Targets of the performance issue
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    device: str  # "cpu" or "cuda": where the target applies
    name: str
    arch: str
    kind: str  # which row holds the value
    field: str  # and which of its fields
    op: str  # "<=" or ">="
    limit: float  # in `unit`
    unit: str
    scale: float = 1.0  # row value / scale = value in `unit`
    batch: int | None = None  # for sgld rows: which batch
    full_chain: bool = False  # only decidable at the preset's number of SGLD steps


TARGETS = [
    Target("cpu", "fast >= 1.5x plain, Small SGLD step at batch 64", "small", "sgld", "speedup", ">=", 1.5, "x",
           batch=64),
    Target("cpu", "demo chain (16 x 60 steps, Small, 32x32) <= 2 s", "small", "demo", "fast_ms", "<=", 2.0, "s",
           scale=1e3),
    Target("cpu", f"Small training iteration >= 1.5x the {BASELINE} fast path", "small", "baseline", "speedup", ">=",
           1.5, "x", full_chain=True),
    Target("cuda", "Base full training iteration <= 75 ms", "base", "train", "fast_ms", "<=", 75.0, "ms",
           full_chain=True),
    Target("cuda", "Small full training iteration <= 12 ms", "small", "train", "fast_ms", "<=", 12.0, "ms",
           full_chain=True),
    Target("cuda", "FID sampling, Base 50k x 600 steps <= 6 min (projected)", "base", "fid", "fast_ms", "<=", 6.0,
           "min", scale=6e4),
    Target("cuda", "CLEL overhead over beta=0 (Base) <= 8%", "base", "overhead", "overhead", "<=", 8.0, "%",
           scale=1e-2, full_chain=True),
    Target("cuda", "peak GPU memory, Base training <= 4 GB", "base", "train", "peak_mb", "<=", 4.0, "GB",
           scale=1024.0),
]


def find_row(rows: list[dict], t: Target) -> dict | None:
    for r in rows:
        if r["arch"] == t.arch and r["kind"] == t.kind and (t.batch is None or r.get("batch") == t.batch):
            return r
    return None


def evaluate_targets(rows: list[dict], device_type: str, targets: list[Target] = TARGETS) -> list[dict]:
    """Each target of this device with its measured value and status: pass, fail, n/a or not measured."""
    out = []
    for t in targets:
        if t.device != device_type:
            continue
        res: dict[str, Any] = {"target": t.name, "limit": t.limit, "unit": t.unit, "value": None}
        row = find_row(rows, t)
        if row is None or row.get(t.field) is None:
            res.update(status="not measured", why=f"no {t.arch} {t.kind} row in this run")
        else:
            res["value"] = value = row[t.field] / t.scale
            if t.full_chain and row["sgld_steps"] != row["preset_sgld_steps"]:
                res.update(status="n/a", why=f"timed with {row['sgld_steps']} SGLD steps per iteration, the "
                                             f"target is for {row['preset_sgld_steps']}")
            elif t.kind == "fid" and (row["images"], row["steps"]) != (FID_IMAGES, FID_STEPS):
                res.update(status="n/a", why=f"projected for {row['images']} images x {row['steps']} steps, the "
                                             f"target is for {FID_IMAGES} x {FID_STEPS}")
            else:
                ok = value <= t.limit if t.op == "<=" else value >= t.limit
                res["status"] = "pass" if ok else "fail"
        out.append(res)
    return out


# ----------------------------------------------------------------------------------------------------------------
# 6. A training iteration against the fast path of 2026-12-01
# ----------------------------------------------------------------------------------------------------------------

def as_of_baseline(trainer: Trainer) -> None:
    """Undo what the trainer's fast path gained after 2026-12-01 (in a worker process: it patches clel.models)."""
    import clel.models

    clel.models.avg_pool = F.avg_pool2d  # avg_pool2d's own backward
    for m in (trainer.model, trainer.ema):  # only the chain's input was channels_last
        m.to(memory_format=torch.contiguous_format)
        for conv in m.modules():  # oneDNN's backward on the encoder's small maps
            if type(conv) is SmallMapConv2d:
                conv.__class__ = torch.nn.Conv2d
    trainer.fast = dataclasses.replace(trainer.fast, reuse_memory=False)  # glibc's default frees


def iteration_worker(which: str, preset: str, device: torch.device, sgld_steps: int | None, repeats: int,
                     warmup: int) -> list[float]:
    """Seconds per iteration of one side ("baseline" or "now"), timed in this (fresh) process."""
    cfg = get_preset(preset)
    cfg = cfg.replace(sgld_steps=sgld_steps) if sgld_steps is not None else cfg
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, device, True, fast_precision(device), Path(tmp) / "run")
        if which == "baseline":
            as_of_baseline(trainer)
        for _ in range(warmup):
            trainer.train_step()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            trainer.train_step()
            sync(device)
            times.append(time.perf_counter() - t0)
    return times


def baseline_row(preset: str, device: torch.device, rounds: int, repeats: int, warmup: int,
                 sgld_steps: int | None, threads: int | None) -> dict:
    """Baseline and now, each in ``rounds`` fresh processes taken in turn (machine drift hits both alike)."""
    cfg = get_preset(preset)
    steps = sgld_steps if sgld_steps is not None else cfg.sgld_steps
    times: dict[str, list[float]] = {"baseline": [], "now": []}
    for _ in range(rounds):
        for which in times:
            cmd = [sys.executable, __file__, "--iteration-worker", which, "--preset", preset, "--device", device.type,
                   "--repeats", str(repeats), "--warmup", str(warmup)]
            cmd += ["--train-sgld-steps", str(steps)] + (["--threads", str(threads)] if threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"bench worker failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
            times[which] += json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    before, now = statistics.median(times["baseline"]), statistics.median(times["now"])
    note = "" if steps == cfg.sgld_steps else f" (preset: {cfg.sgld_steps})"
    return {"arch": cfg.arch, "kind": "baseline", "batch": cfg.batch_size, "sgld_steps": steps,
            "preset_sgld_steps": cfg.sgld_steps, "what": f"train iteration, {BASELINE} path | now, {steps} steps{note}",
            "plain_ms": 1e3 * before, "fast_ms": 1e3 * now, "speedup": before / now, "rounds": rounds,
            "baseline_s": times["baseline"], "now_s": times["now"]}


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def fmt_time(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1e3:
        return f"{ms:.1f} ms"
    if ms < 120e3:
        return f"{ms / 1e3:.2f} s"
    if ms < 120 * 6e4:
        return f"{ms / 6e4:.1f} min"
    return f"{ms / 3.6e6:.1f} h"


def print_table(rows: list[dict]) -> None:
    head = (f"{'arch':6} {'what':46} {'plain':>10} {'fast':>10} {'ratio':>7} {'GFLOP':>8} {'TFLOP/s':>8} "
            f"{'peak MB':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        gf = "" if r.get("gflop") is None else f"{r['gflop']:.1f}"
        tf = "" if r.get("fast_tflops") is None else f"{r['fast_tflops']:.3f}"
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        if r["kind"] == "overhead":  # columns: beta=0, CLEL, relative overhead
            a, b, ratio = fmt_time(r["beta0_ms"]), fmt_time(r["clel_ms"]), f"{100 * r['overhead']:+.1f}%"
        else:
            a, b, ratio = fmt_time(r["plain_ms"]), fmt_time(r["fast_ms"]), f"{r['speedup']:.2f}x"
        print(f"{r['arch']:6} {r['what']:46} {a:>10} {b:>10} {ratio:>7} {gf:>8} {tf:>8} {peak:>8}")
    print("ratio: plain / fast; for 'CLEL over beta=0' the columns are beta=0 | CLEL and the ratio is the "
          f"overhead;\nfor '{BASELINE} path | now' they are the trainer's fast path as of {BASELINE} | today's "
          "(median over fresh processes taken in turn).\nFID rows are projections from the measured step time at "
          "the sampling batch, not measurements.")


def print_targets(results: list[dict], device_type: str) -> None:
    print(f"\nTargets ({device_type}):")
    for r in results:
        value = "" if r["value"] is None else f"{r['value']:.3g} {r['unit']}"
        why = f"  ({r['why']})" if r.get("why") else ""
        print(f"  [{r['status']:>12}] {r['target']}: {value}{why}")


# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, device="cpu or cuda (default: cuda when available)")
    p.add_argument("--archs", default="small,base", help="comma-separated: small, base, large (default: small,base)")
    p.add_argument("--batch", type=int, default=64, help="training batch size for SGLD rows (default: 64)")
    p.add_argument("--sample-batch", type=int, default=None,
                   help="sampling batch size (default: 16 on CPU, 1000 on CUDA)")
    p.add_argument("--steps", type=int, default=5, help="SGLD steps per timed chain in the SGLD-step rows (default: 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions, median reported (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement (default: 1)")
    p.add_argument("--train-sgld-steps", type=int, default=None,
                   help="SGLD steps per training iteration (default: the preset's, 60); fewer keep a CPU run "
                        "short, are shown in the rows and make the full-iteration targets n/a")
    p.add_argument("--no-train", action="store_true", help="skip the training-iteration and beta=0 rows")
    p.add_argument("--fid-images", type=int, default=FID_IMAGES,
                   help="images of the projected FID sampling row (default: 50000)")
    p.add_argument("--fid-steps", type=int, default=FID_STEPS,
                   help="SGLD steps per image of the projected FID row (default: 600)")
    p.add_argument("--no-demo", action="store_true", help="skip the 16 x 60 demo-chain row")
    add_run_options(p, threads=True)
    p.add_argument("--baseline-rounds", type=int, default=3,
                   help=f"fresh processes per side for the iteration against the {BASELINE} fast path, Small only "
                        "(default: 3; 0 skips the row)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows, targets and machine info here")
    p.add_argument("--iteration-worker", choices=("baseline", "now"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="cifar10-small", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = build_parser().parse_args()

    device = torch.device(args.device)
    set_threads(args.threads)
    if args.iteration_worker:  # one side of the baseline row, in its own process
        seconds = iteration_worker(args.iteration_worker, args.preset, device, args.train_sgld_steps,
                                   args.repeats, args.warmup)
        print(json.dumps({"seconds": seconds}))
        return
    fast = FastPath.best(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    set_precision("fp32", device)  # the plain path is strict fp32: no TF32 (cuDNN allows it by default)
    sample_batch = args.sample_batch or (1000 if device.type == "cuda" else 16)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "fast_path": fast.__dict__,
            "train_fast_precision": fast_precision(device), "command": " ".join(sys.argv)}
    print(json.dumps(info))
    rows: list[dict] = []
    for arch in args.archs.split(","):
        steps = chain_rows(arch, device, sorted({args.batch, sample_batch}), args.steps, args.repeats, fast,
                           args.warmup)
        rows += steps
        if not args.no_train:
            rows += train_rows(f"cifar10-{arch}", device, args.repeats, args.train_sgld_steps, args.warmup)
            if arch == "small" and args.baseline_rounds > 0:
                rows.append(baseline_row("cifar10-small", device, args.baseline_rounds, max(1, args.repeats // 2),
                                         args.warmup, args.train_sgld_steps, args.threads))
        at_sample_batch = next(r for r in steps if r["batch"] == sample_batch)
        rows.append(fid_row(at_sample_batch, args.fid_images, args.fid_steps))
    if not args.no_demo:
        rows.append(demo_row(device, max(1, args.repeats // 2), fast))
    print_table(rows)
    targets = evaluate_targets(rows, device.type)
    print_targets(targets, device.type)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows, "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
