#!/usr/bin/env python
"""Evaluate a trained CLEL export the way the paper does; writes eval.json and eval.md into --out.

    python scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10              # everything, defaults
    python scripts/evaluate.py --weights weights/cifar10 --fid-samples 1000 --ood --out /tmp/eval
    torchrun --nproc_per_node=8 scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10

Sections (each on by default, each can be turned off with --no-<section>):
  FID/KID      unconditional samples vs the shared CIFAR-10 train set (TF-Inception 2015-12-05), FID-1k/10k/50k,
               and the same in the CIFAR-10 judge's features (fd_judge_1k/..., kid_judge: no model trains with them)
  buffer       the same distances (FID-1k, fd_judge_1k) of the replay buffer shipped with the weights: the model's
               own long-run chains, beside the reference sampler's samples
  OOD          AUROC of s(x) and of the marginal energy, CIFAR-10 test vs each OOD set (Table 1c), histograms
  conditional  class-conditional samples judged by the CIFAR-10 judge: confusion matrix (Fig. 3c)
  compositional  attribute compositions on the CelebA export judged by the attribute judge of its image size
               (Fig. 4b), and fd_judge / kid_judge of its unconditional samples against real faces
  knn          kNN accuracy of the encoder h on CIFAR-10 (and nearest-prototype accuracy)

Generation is batched, resumable (rerun the same command after a kill) and shardable: under torchrun every rank
draws its share of the FID batches, rank 0 then computes all metrics. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys

from clel.data import DataError
from clel.eval import EvaluationError
from clel.eval.evaluation import EvalOptions, evaluate
from clel.eval.judges import JudgeError
from clel.runtime import add_dataclass_options, options_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(p, EvalOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = evaluate(options_from_args(EvalOptions, args))
    except (EvaluationError, JudgeError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if written is not None:
        print(json.dumps(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
