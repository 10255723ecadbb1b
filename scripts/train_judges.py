#!/usr/bin/env python
"""Train the two judge classifiers that score conditional samples (writes weights/judges/*.safetensors).

    python scripts/train_judges.py                       # both judges, on cuda when available
    python scripts/train_judges.py --which cifar10 --epochs 20
    python scripts/train_judges.py --which celeba --device cpu --max-minutes 30
    python scripts/train_judges.py --which celeba --image-size 32    # the judge of 32 px face models

- cifar10: 10-class classifier trained on the shared CIFAR-10 train set, accuracy on the shared test set
  (target >= 90%).
- celeba: Young / Male / Smiling classifier at 64x64 (or --image-size 32: celeba_attributes_32.safetensors) on
  the shared CelebA faces, the last --holdout faces held out (target >= 85% each).

On one modern GPU both take a minute or two (all data on the GPU, bf16, channels_last). The weights are small
safetensors files (fp16) with the recipe and the held-out accuracies in their metadata; a summary is printed
as JSON and written to <out>/judges.json. Exit codes: 0 done (targets met or not: see "meets_target"), 2 bad
input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


import torch

from clel.runtime import add_run_options
from clel.eval.judges import (CELEBA_JUDGES, CIFAR10_JUDGE, JUDGE_DIR, TrainRecipe, celeba_recipe,
                              train_celeba_judge, train_cifar10_judge)

TARGETS = {"cifar10": 0.90, "celeba": 0.85}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", choices=("both", "cifar10", "celeba"), default="both", help="which judge(s) to train")
    p.add_argument("--data", default=None, help="offline data root with cifar10/ and celeba/ "
                   "(default: $CLEL_DATA or ../shared/data)")
    p.add_argument("--out", default=str(JUDGE_DIR), help="folder for the judge files (default weights/judges)")
    add_run_options(p, device=True)
    p.add_argument("--epochs", type=float, help="training epochs (default: 15 for cifar10, 16 for celeba)")
    p.add_argument("--batch-size", type=int, help="batch size (default: 256 for cifar10, 128 for celeba)")
    p.add_argument("--lr", type=float, help="peak SGD learning rate per 256 images (default: 0.2 / 0.1)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA with bf16 and for CPUs with AVX512-BF16/AMX)")
    p.add_argument("--holdout", type=int, default=1000, help="CelebA faces held out for testing (default 1000)")
    p.add_argument("--image-size", type=int, choices=sorted(CELEBA_JUDGES), default=64,
                   help="CelebA: the faces' size, that of the models it will judge (default 64)")
    p.add_argument("--max-minutes", type=float,
                   help="stop each judge after this many minutes (a throughput probe; under-trains)")
    p.add_argument("--train-limit", type=int, help="CIFAR-10: train on a seeded subset (smoke tests)")
    p.add_argument("--test-limit", type=int, help="CIFAR-10: measure on a seeded subset of the test set (smoke tests)")
    p.add_argument("--widths", help="comma-separated block widths (default: 64,256,256 for cifar10; "
                   "64,128,256,256 for celeba)")
    add_run_options(p, seed="seed (default 0)")
    p.add_argument("--degrade", type=float, default=None, help="share of each training batch degraded the way "
                   "samples look (blur, noise, down-up-sampling, JPEG; clel.eval.judges.degrade_batch; default 0)")
    p.add_argument("--init", help="CIFAR-10: fine-tune this judge file instead of training from scratch (e.g. with "
                   "--degrade; its widths are kept)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="stored weight dtype (default fp16)")
    return p


def _recipe(base: TrainRecipe, args: argparse.Namespace) -> TrainRecipe:
    from dataclasses import replace

    changes = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                 "bf16": args.bf16, "seed": args.seed, "degrade": args.degrade}.items()
               if v is not None}
    return replace(base, **changes)


def _widths(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if not text:
        return default
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(f"--widths must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise ValueError(f"--widths must be positive integers, got {text!r}")
    return widths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clel.data import DataError
    from clel.eval import default_data_root
    from clel.eval.judges import celeba_judge_data, evaluate_judge, load_judge, save_judge

    data = Path(args.data) if args.data else default_data_root()
    out = Path(args.out)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    summary: dict = {}
    try:
        if args.which in ("both", "cifar10"):
            log(f"CIFAR-10 judge on {args.device}")
            init = load_judge(args.init) if args.init else None
            judge, rep = train_cifar10_judge(data, None, _recipe(TrainRecipe(epochs=15), args),
                                             widths=_widths(args.widths, (64, 256, 256)), device=args.device,
                                             log=log, max_minutes=args.max_minutes, train_limit=args.train_limit,
                                             test_limit=args.test_limit, store_dtype=dtype, init=init)
            path = save_judge(judge.net, out / CIFAR10_JUDGE, rep, dtype)
            acc = rep["test"]["accuracy"]
            summary["cifar10"] = {"path": path.name, "test_accuracy": acc, "meets_target": acc >= TARGETS["cifar10"],
                                  "minutes": rep["wall_s"] / 60, "images_per_s": rep["images_per_s"]}
        if args.which in ("both", "celeba"):
            size = args.image_size
            log(f"CelebA attribute judge at {size}x{size} on {args.device}")
            judge, rep = train_celeba_judge(data, None, _recipe(celeba_recipe(size), args),
                                            widths=_widths(args.widths, (64, 128, 256, 256)), holdout=args.holdout,
                                            image_size=size, device=args.device, log=log,
                                            max_minutes=args.max_minutes, store_dtype=dtype)
            path = save_judge(judge.net, out / CELEBA_JUDGES[size], rep, dtype)
            accs = rep["test"]["accuracy"]
            entry = {"path": path.name, "test_accuracy": accs,
                     "meets_target": all(a >= TARGETS["celeba"] for a in accs.values()),
                     "minutes": rep["wall_s"] / 60, "images_per_s": rep["images_per_s"]}
            if size != 64 and (out / CELEBA_JUDGES[64]).is_file():
                # what this judge replaces: the 64 px judge on the same held-out faces at this size (it resizes)
                _, _, xte, yte = celeba_judge_data(data, judge.labels, size, args.holdout)
                entry["64px_judge_accuracy"] = evaluate_judge(load_judge(out / CELEBA_JUDGES[64]), xte,
                                                              yte)["accuracy"]
            summary["celeba" if size == 64 else f"celeba{size}"] = entry
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "judges.json").read_text()) if (out / "judges.json").is_file() else {}
    old.update(summary)
    (out / "judges.json").write_text(json.dumps(old, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
