#!/usr/bin/env python
"""Measure how conditional chains should be asked: guidance x concept direction x chain, judged.

    python measure/sweep_sampling.py --weights weights/cifar10 --out /tmp/sweep-cifar10
    python measure/sweep_sampling.py --weights weights/celeba64 --out /tmp/sweep-celeba64
    python measure/sweep_sampling.py --weights weights/cifar10 --out /tmp/look --lookalikes 200 --guidance 0.1 1

For every cell (guidance, direction, chain, weights) it draws seeded samples and reports:
  CIFAR-10   judged class-conditional accuracy (mean and per class) of --per-class samples a class;
  CelebA     judged agreement per term (AND Young, AND Female, AND Smiling, NOT Smiling), --per-term samples each;
  both       diversity (mean pairwise distance of the judge's normalised features, within a condition) against
             unconditional samples', the fraction of pixels clamped at 0 or 1, and seconds.
--lookalikes N: N test images as uploads, --per-upload samples each; how often the judge gives the samples the
upload's class (CIFAR-10) or agrees with the upload's own judged attributes (CelebA: Young, Male, Smiling), and the
judge-feature distance of samples to their own upload against other uploads.
Writes results.json, table.md and one grid per cell into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from clel.eval import EvaluationError, default_data_root
from clel.eval.judged import class_conditional_eval, compositional_eval, lookalike_eval, lookalike_uploads
from clel.images import save_grid
from clel.sampling import class_latents, draw
from clel.eval.judges import CIFAR10_JUDGE, JUDGE_DIR, celeba_judge_path, diversity, load_judge
from clel.checkpoints import EMA_NAME, read_ema
from clel.probe import clamped_fraction
from clel.runtime import add_run_options, set_threads
from clel.sampling import ChainSettings
from clel.weights import load_pretrained

TERMS = [[("Young", 1.0)], [("Female", 1.0)], [("Smiling", 1.0)], [("Smiling", -1.0)]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="export folder (CIFAR-10 or CelebA)")
    p.add_argument("--out", required=True, type=Path, help="folder for results.json, table.md and grids")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    p.add_argument("--direction", nargs="+", default=["mean", "contrast"], choices=["mean", "contrast"],
                   help="concept latents: the paper's mean direction, or the contrast with the rest")
    p.add_argument("--chain", nargs="+", default=["plain", "reference"], choices=["plain", "reference"],
                   help="plain: one chain of --sweeps x --steps steps from noise (the judged evaluations'); "
                   "reference: --sweeps sweeps of --steps, each after the training augmentation")
    p.add_argument("--sweeps", type=int, default=10, help="sweeps of the reference chain (default 10)")
    p.add_argument("--steps", type=int, nargs="+", default=[None],
                   help="steps per sweep (default: the model's training chain); several values are cells")
    p.add_argument("--total-steps", type=int, default=None,
                   help="with several --steps: sweeps = total / steps, so every cell runs as many steps")
    p.add_argument("--ramp", type=float, nargs="+", default=[0.0],
                   help="guidance ramped from 0 over this fraction of the chain (0: constant; default 0)")
    p.add_argument("--bound", type=float, nargs="+", default=[0.0],
                   help="latent pull capped at this many times the marginal's (0: no cap; default 0)")
    p.add_argument("--variant", nargs="+", default=["live"], choices=["live", "ema"],
                   help="the exported weights, and/or the EMA of f and g stored beside them (ema.safetensors)")
    p.add_argument("--per-class", type=int, default=10, help="samples per class (CIFAR-10, default 10)")
    p.add_argument("--per-term", type=int, default=25, help="samples per attribute term (CelebA, default 25)")
    p.add_argument("--lookalikes", type=int, default=0, help="N test uploads for the look-alike metric")
    p.add_argument("--per-upload", type=int, default=4, help="look-alike samples per upload (default 4)")
    p.add_argument("--data", default=None, help="data root (default: $CLEL_DATA or ../shared/data)")
    p.add_argument("--judges", default=str(JUDGE_DIR), help="folder with the judge weights")
    add_run_options(p, seed=True)
    p.add_argument("--batch", type=int, default=100, help="samples per SGLD batch (default 100)")
    add_run_options(p, threads=True)
    return p


def load_variant(weights: str, variant: str) -> tuple[Any, Any, dict]:
    model, cfg, extras = load_pretrained(weights)
    if variant == "ema":
        ema = Path(weights) / EMA_NAME
        if not ema.is_file():
            raise EvaluationError(f"{weights} has no {EMA_NAME} (the export holds the EMA itself, or none)")
        state = {**model.state_dict(), **{k: v.float() for k, v in read_ema(ema, EvaluationError).items()}}
        model.load_state_dict(state)
    return model.eval().requires_grad_(False), cfg, extras


def chain_settings(model: Any, kind: str, sweeps: int, steps: int | None, ramp: float = 0.0, bound: float = 0.0,
                   total: int | None = None) -> ChainSettings:
    steps = steps or model.cfg.sgld_steps
    if total:
        sweeps = max(1, total // steps)
    control = {"guidance_ramp": ramp, "guidance_bound": bound or None}
    if kind == "reference":
        return ChainSettings.reference(model, sweeps=sweeps, steps=steps, **control)
    return ChainSettings.from_model(model, steps=sweeps * steps, **control)


def chain_cells(model: Any, args: argparse.Namespace) -> list[tuple[dict[str, Any], ChainSettings]]:
    """Every (chain, steps per sweep, ramp, bound) cell, with a label per swept knob."""
    cells = []
    for chain in args.chain:
        for steps in args.steps:
            for ramp in args.ramp:
                for bound in args.bound:
                    st = chain_settings(model, chain, args.sweeps, steps, ramp, bound, args.total_steps)
                    label = {"chain": chain}
                    if len(args.steps) > 1:
                        label["sweeps x steps"] = f"{st.sweeps}x{st.steps}" if chain == "reference" else st.steps
                    if len(args.ramp) > 1 or ramp:
                        label["ramp"] = ramp
                    if len(args.bound) > 1 or bound:
                        label["bound"] = bound or "none"
                    cells.append((label, st))
    return cells


def unconditional(model: Any, judge: Any, st: ChainSettings, n: int, seed: int, batch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    x = torch.cat([draw(model, min(batch, n - s), None, st, seed=seed + s).x for s in range(0, n, batch)])
    return {"diversity": diversity(judge.features(x)), "clamped": clamped_fraction(x),
            "seconds": time.perf_counter() - t0, "samples": x}


def class_cell(model, extras, judge, direction, guidance, st, args) -> tuple[dict[str, Any], torch.Tensor]:
    classes = list(extras.get("classes") or judge.labels)
    lat = class_latents(extras, classes, direction)
    t0 = time.perf_counter()
    res, samples = class_conditional_eval(model, lat, classes, judge, args.per_class, guidance, st, args.seed,
                                          args.batch)
    x = torch.cat([samples[c] for c in classes])
    div = sum(diversity(judge.features(samples[c])) for c in classes) / len(classes)
    row = {"accuracy": res["accuracy"], "per_class": res["per_class_accuracy"], "diversity": div,
           "clamped": clamped_fraction(x), "seconds": time.perf_counter() - t0}
    return row, torch.cat([samples[c][:8] for c in classes])


def attribute_cell(model, extras, judge, direction, guidance, st, args) -> tuple[dict[str, Any], torch.Tensor]:
    t0 = time.perf_counter()
    res, samples = compositional_eval(model, extras, judge, TERMS, args.per_term, guidance, st, args.seed, args.batch,
                                      include_unconditional=False, direction=direction)
    terms = {r["condition"]: r["accuracy"] for r in res["rows"]}
    x = torch.cat(list(samples.values()))
    div = sum(diversity(judge.features(v)) for v in samples.values()) / len(samples)
    row = {"accuracy": res["mean_accuracy"], "per_term": terms, "diversity": div, "clamped": clamped_fraction(x),
           "seconds": time.perf_counter() - t0}
    return row, torch.cat([v[:8] for v in samples.values()])


def table(rows: list[dict[str, Any]], uncond: dict[str, Any]) -> str:
    keys = [k for k in ("variant", "chain", "sweeps x steps", "ramp", "bound", "direction", "guidance")
            if any(k in r for r in rows)]
    metric = [k for k in ("accuracy", "agreement", "dist_own", "dist_other", "diversity", "clamped", "seconds")
              if any(k in r for r in rows)]
    extra = sorted({t for r in rows for t in (r.get("per_term") or {})})
    head = keys + metric + extra
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get(k, "")) for k in keys]
        cells += [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in metric]
        cells += [f"{r['per_term'][t]:.2f}" if t in r.get("per_term", {}) else "" for t in extra]
        lines.append("| " + " | ".join(cells) + " |")
    u = ", ".join(f"{v}: diversity {d['diversity']:.3f}, clamped {d['clamped']:.3f}" for v, d in uncond.items())
    return "\n".join(lines) + f"\n\nUnconditional samples ({u}).\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    uncond: dict[str, Any] = {}
    for variant in args.variant:
        model, cfg, extras = load_variant(args.weights, variant)
        celeba = extras.get("attribute_latents") is not None
        # faces: the attribute judge trained at the model's image size (clel.eval.judges.celeba_judge_path)
        judge = load_judge(celeba_judge_path(args.judges, cfg.image_size) if celeba
                           else Path(args.judges) / CIFAR10_JUDGE)
        uploads = labels = None
        if args.lookalikes:
            uploads, labels = lookalike_uploads(args.data or default_data_root(), judge, args.lookalikes,
                                                args.seed)
        for label, st in chain_cells(model, args):
            name = "-".join(str(v).replace(" ", "") for v in label.values())
            key = f"{variant}/{label['chain']}" + (f"/{st.sweeps}x{st.steps}" if len(args.steps) > 1 else "")
            if key not in uncond:  # ramp and bound do not touch unconditional chains
                u = unconditional(model, judge, st, 100, args.seed, args.batch)
                save_grid(u.pop("samples")[:64], args.out / f"{key.replace('/', '-')}-unconditional.png")
                uncond[key] = u
            u = uncond[key]
            for guidance in args.guidance:
                for direction in (["mean"] if args.lookalikes else args.direction):
                    tag = f"{variant}-{name}-{direction}-g{guidance:g}"
                    if args.lookalikes:
                        row, grid = lookalike_eval(model, uploads, labels, judge, args.per_upload,
                                                   replace(st, guidance=guidance), args.seed)
                        row = {k: row[k] for k in ("agreement", "dist_own", "dist_other", "clamped", "seconds")}
                        grid = grid[:64]
                    elif celeba:
                        row, grid = attribute_cell(model, extras, judge, direction, guidance, st, args)
                    else:
                        row, grid = class_cell(model, extras, judge, direction, guidance, st, args)
                    save_grid(grid, args.out / f"{tag}.png", nrow=8)
                    row = {"variant": variant, **label, "direction": direction, "guidance": guidance,
                           **row, "grid": f"{tag}.png"}
                    if "diversity" in row:  # conditional cells; look-alikes are measured by distances instead
                        row["diversity_vs_unconditional"] = row["diversity"] / max(u["diversity"], 1e-9)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
                    (args.out / "results.json").write_text(json.dumps(
                        {"weights": args.weights, "args": {k: str(v) for k, v in vars(args).items()},
                         "unconditional": uncond, "rows": rows}, indent=2) + "\n")
    (args.out / "table.md").write_text(table(rows, uncond))
    print(f"wrote {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
