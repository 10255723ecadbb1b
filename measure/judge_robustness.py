#!/usr/bin/env python
"""How far the judges can be trusted on samples: their accuracy on real held-out images degraded as samples are.

    python measure/judge_robustness.py                          # both judges, every degradation
    python measure/judge_robustness.py --which cifar10 --limit 1000 --json /tmp/robust.json

Samples of an early EBM are blurred, noisy and low in detail. Each judge scores held-out photographs (CIFAR-10
test; the last --holdout shared CelebA faces) as they are and after each degradation of
``clel.eval.judges.DEGRADATIONS``: Gaussian blur (σ in pixels), Gaussian noise (σ in [0, 1] units), bilinear
down- then up-sampling, JPEG. A judge whose accuracy drops far under a degradation cannot tell what samples
with that look show. ``--image-size 32`` scores the faces decoded at 32 px instead (the judge resizes them to its
own size, as it does a 32 px model's samples): how far a 64 px judge can be trusted on a 32 px model.
Prints a table; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from clel.eval import default_data_root
from clel.runtime import add_run_options
from clel.eval.judges import (CELEBA_JUDGE, CIFAR10_JUDGE, DEGRADATIONS, JUDGE_DIR, celeba_judge_data,
                              cifar10_judge_data, load_judge, robustness)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=("both", "cifar10", "celeba"), default="both")
    p.add_argument("--data", default=None, help="offline data root (default: $CLEL_DATA or ../shared/data)")
    p.add_argument("--judges", default=str(JUDGE_DIR), help="folder with the judge weights")
    p.add_argument("--limit", type=int, default=2000, help="seeded subset of the CIFAR-10 test set (default 2000)")
    p.add_argument("--holdout", type=int, default=1000, help="CelebA faces held out when the judge was trained")
    p.add_argument("--celeba-judge", default=CELEBA_JUDGE, help=f"file in --judges (default {CELEBA_JUDGE})")
    p.add_argument("--image-size", type=int, default=None,
                   help="decode the held-out faces at this size (default: the judge's own); the judge resizes them")
    p.add_argument("--kinds", default=",".join(DEGRADATIONS), help="comma-separated degradations")
    add_run_options(p, seed=True)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def _table(name: str, res: dict) -> str:
    rows = [f"{name}:", f"  {'degradation':<12} accuracy"]
    for kind, r in res.items():
        acc = r["accuracy"]
        cell = f"{acc:.3f}" if isinstance(acc, float) else " ".join(f"{k} {v:.3f}" for k, v in acc.items())
        rows.append(f"  {kind:<12} {cell}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = Path(args.data) if args.data else default_data_root()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    out: dict = {"kinds": kinds, "seed": args.seed}
    try:
        if args.which in ("both", "cifar10"):
            _, _, x, y, _ = cifar10_judge_data(data)
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.limit]
            judge = load_judge(Path(args.judges) / CIFAR10_JUDGE)
            out["cifar10"] = {"n": len(idx), "results": robustness(judge, x[idx], y[idx], kinds, args.seed)}
            print(_table("CIFAR-10 judge (class accuracy)", out["cifar10"]["results"]))
        if args.which in ("both", "celeba"):
            judge = load_judge(Path(args.judges) / args.celeba_judge)
            size = args.image_size or judge.spec.image_size
            _, _, x, y = celeba_judge_data(data, judge.labels, size, args.holdout)
            out["celeba"] = {"n": len(x), "judge": args.celeba_judge, "judge_size": judge.spec.image_size,
                             "image_size": size, "results": robustness(judge, x, y, kinds, args.seed)}
            print(_table(f"CelebA judge {args.celeba_judge} on {size} px faces (accuracy per attribute)",
                         out["celeba"]["results"]))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
