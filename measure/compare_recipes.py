#!/usr/bin/env python
"""Which CPU recipe buys the most quality per CPU-hour? Short runs from one checkpoint, then one probe each.

    python measure/compare_recipes.py --from ~/.cache/clel/runs/cifar10 --out ~/.cache/clel/recipes \\
        --cpu-minutes 18 --common "--precision bf16" \\
        --recipe now= --recipe steps40="--sgld-steps 40" --recipe batch64="--batch-size 64"

Every arm resumes the newest checkpoint of --from (weights, optimisers, replay buffer, data order) with its own
train.py overrides (after --common, which every arm gets: a run's --precision is not in its checkpoint).
All arms run at once, one thread each, so a machine's drift hits them alike, and each stops
(SIGTERM: checkpoint, then exit) once its own process has used --cpu-minutes of CPU time. Then the starting
point and every arm's live weights get the same fixed-seed probe (clel.probe: FID-500 against 2,000 training
images, the independent FD-500 in the judge's features, judged accuracy or attribute agreement, clamped pixels;
with --lookalikes N, the judged agreement of look-alikes of N held-out uploads at the demo's chain), and the
table gives each probe's change per CPU-hour. The start point is also probed with --noise-seeds other seeds: a
change smaller than that spread is noise. The replay buffer's size is fixed by the checkpoint (an arm cannot
change it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
METRICS = ("fid", "fd_judge", "judged_accuracy", "judged_agreement", "judged_not_agreement", "lookalike_agreement",
           "clamped_fraction")


def parse_recipe(spec: str) -> tuple[str, list[str]]:
    """``name=--flag value ...`` → (name, train.py arguments); ``name=`` is the checkpoint's own recipe."""
    name, sep, args = spec.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"--recipe wants NAME=ARGS (e.g. steps40=\"--sgld-steps 40\"), got {spec!r}")
    return name.strip(), shlex.split(args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (all of its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_arms(start: Path, recipes: list[tuple[str, list[str]]], out: Path, cpu_budget: float, nice: int,
             poll: float = 2.0) -> dict[str, dict[str, Any]]:
    """Every arm at once from ``start``; each gets SIGTERM once it has used ``cpu_budget`` CPU seconds."""
    procs: dict[str, tuple[subprocess.Popen, Any]] = {}
    for name, args in recipes:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--resume", str(start), "--out", str(folder),
               "--threads", "1", "--nice", str(nice), "--no-progress", "--probe-every", "0",
               "--ckpt-every", "1000000", "--ckpt-minutes", "1000000", "--keep-ckpts", "1", *args]
        log = open(folder / "train.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    used: dict[str, float] = {}
    stopped: set[str] = set()
    t0 = time.time()
    while any(p.poll() is None for p, _ in procs.values()):
        for name, (p, _) in procs.items():
            if p.poll() is None and name not in stopped:
                try:
                    used[name] = cpu_seconds(p.pid)
                except (OSError, IndexError):
                    continue
                if used[name] >= cpu_budget:  # once: a second SIGTERM would kill it mid-checkpoint
                    p.send_signal(signal.SIGTERM)
                    stopped.add(name)
        time.sleep(poll)
    result = {}
    for name, (p, log) in procs.items():
        log.close()
        result[name] = {"cpu_s": round(used.get(name, 0.0), 1), "wall_s": round(time.time() - t0, 1),
                        "args": " ".join(dict(recipes)[name])}
        if p.returncode not in (0, 130):  # 130: stopped by its budget, after its checkpoint
            # One broken arm (a bad override) must not cost the others their CPU time: reported, not probed.
            result[name]["failed"] = f"exit {p.returncode}, see {out / name / 'train.log'}"
            print(f"arm {name} failed ({result[name]['failed']})", file=sys.stderr)
    return result


def live_model(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """The live weights of a checkpoint as a CLEL (what the bundles export), and the checkpoint's meta."""
    from clel import CLEL, CLELConfig
    from clel.checkpoints import checkpoint_weights, load_checkpoint
    from clel.weights import load_into

    meta, tensors = load_checkpoint(checkpoint)
    model = CLEL(CLELConfig.from_dict(meta["config"]))
    load_into(model, checkpoint_weights(meta, tensors, "model"), source=str(checkpoint))
    return model.eval(), meta


def probe_all(start: Path, arms: dict[str, dict[str, Any]], out: Path, noise_seeds: int,
              lookalikes: int = 0) -> dict[str, Any]:
    """The same probe on the start point (and its other seeds) and on every arm's newest checkpoint; with
    ``lookalikes``, also the look-alike agreement of that many held-out uploads (``Probe.lookalikes``)."""
    from dataclasses import replace

    from clel.checkpoints import find_checkpoints
    from clel.data import load_dataset
    from clel.probe import Probe, ProbeSettings

    model, meta = live_model(start)
    cfg, data_path = model.cfg, meta["options"]["data"]
    data = load_dataset(cfg.dataset, data_path, split="train", image_size=cfg.image_size)
    probe = Probe(data)

    def measure(m: Any) -> dict[str, Any]:
        return {**probe(m), **(probe.lookalikes(m, data_path, lookalikes) if lookalikes else {})}

    first = meta["iteration"]
    start_row = {"iteration": first, **measure(model)}
    spread = [start_row] + [Probe(data, settings=replace(ProbeSettings(), seed=s))(model)
                            for s in range(1, noise_seeds + 1)]
    rows = {}
    for name, arm in arms.items():
        if "failed" in arm or not find_checkpoints(out / name):
            rows[name] = {**arm, "failed": arm.get("failed", "no checkpoint")}
            continue
        model, m = live_model(find_checkpoints(out / name)[-1])
        c = m["config"]
        rows[name] = {**arm, "iteration": m["iteration"], "iterations": m["iteration"] - first,
                      "batch_size": c["batch_size"], "sgld_steps": c["sgld_steps"], "lr": c["lr"], **measure(model)}
    return {"start": {"checkpoint": str(start), **start_row}, "start_other_seeds": spread[1:], "arms": rows}


def print_table(res: dict[str, Any]) -> None:
    s = res["start"]
    keys = [k for k in METRICS if k in s]
    print(f"start: {s['checkpoint']} (iteration {s['iteration']}): " + ", ".join(f"{k} {s[k]:.4g}" for k in keys))
    for o in res["start_other_seeds"]:
        print("  other probe seed: " + ", ".join(f"{k} {o[k]:.4g}" for k in keys if k in o))  # no look-alikes
    print(f"\n{'arm':12} {'CPU min':>8} {'iters':>6} {'images':>7} " + " ".join(f"{k:>18}" for k in keys))
    for name, r in res["arms"].items():
        if "failed" in r:
            print(f"{name:12} failed: {r['failed']}")
            continue
        hours = r["cpu_s"] / 3600
        cells = [f"{r[k]:.4g} ({(r[k] - s[k]) / hours:+.3g}/h)" if k in r else "–" for k in keys]
        print(f"{name:12} {r['cpu_s'] / 60:8.1f} {r['iterations']:6d} {r['iterations'] * r['batch_size']:7d} "
              + " ".join(f"{c:>18}" for c in cells))
    print("\n(value (change from the start per CPU-hour); FID, FD and clamped: lower is better)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="run", type=Path, required=True,
                   help="run folder whose newest checkpoint all arms start from")
    p.add_argument("--out", type=Path, required=True, help="folder for the arms' runs and results.json")
    p.add_argument("--recipe", action="append", required=True,
                   help='NAME=TRAIN.PY ARGS, repeatable; "now=" continues with the checkpoint\'s own recipe')
    p.add_argument("--common", default="", help='train.py arguments for every arm (e.g. "--precision bf16")')
    p.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU time per arm (default: 20)")
    p.add_argument("--nice", type=int, default=5, help="niceness of the arms (default: 5)")
    p.add_argument("--noise-seeds", type=int, default=1, help="extra probe seeds on the start point (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the probes (default: 1)")
    p.add_argument("--lookalikes", type=int, default=0,
                   help="also probe look-alikes of N held-out uploads at the demo's chain (default: 0, off)")
    p.add_argument("--probe-only", action="store_true",
                   help="skip the training: probe the arms recorded in --out/arms.json by an earlier call")
    args = p.parse_args()

    from clel.checkpoints import find_checkpoints

    found = find_checkpoints(args.run)
    if not found:
        raise SystemExit(f"{args.run} holds no checkpoint to start from")
    common = shlex.split(args.common)
    recipes = [(name, common + extra) for name, extra in map(parse_recipe, args.recipe)]
    if len({n for n, _ in recipes}) != len(recipes):
        raise SystemExit("recipe names must differ")
    torch.set_num_threads(args.threads)
    if args.probe_only:
        arms = json.loads((args.out / "arms.json").read_text())
    else:
        if any(find_checkpoints(args.out / n) for n, _ in recipes):
            raise SystemExit(f"{args.out} already holds arms of these names; choose another --out")
        arms = run_arms(found[-1], recipes, args.out, 60 * args.cpu_minutes, args.nice)
        (args.out / "arms.json").write_text(json.dumps(arms, indent=2))  # what --probe-only reads
    res = {"command": " ".join(sys.argv), **probe_all(found[-1], arms, args.out, args.noise_seeds, args.lookalikes)}
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    print_table(res)


if __name__ == "__main__":
    main()
