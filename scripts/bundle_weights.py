#!/usr/bin/env python
"""Turn a training run into a bundled weights folder: fp16 export, replay buffer, sample grids, model card.

    python scripts/bundle_weights.py --run runs/cifar10 --out weights/cifar10 --preset cifar10-small \\
        --hardware "2 CPU cores" --status "..." --eval eval/cifar10/eval.json \\
        --command "python scripts/train.py --preset cifar10-small ..."

The OOD reference scores the Streamlit page draws are a separate step
(``python -m clel.eval.ood --weights weights/cifar10 --data ../shared/data``), as is
the evaluation (``scripts/evaluate.py``) whose eval.json the card quotes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from clel.checkpoints import (EMA_NAME, REPLAY_BUFFER_NAME, checkpoint_buffer, newest_checkpoint, read_ema,
                              read_replay_buffer, save_replay_buffer, write_ema)
from clel.eval.modelcard import render_model_card, training_summary
from clel.images import save_grid
from clel.runtime import add_run_options
from clel.sampling import ChainSettings, sample
from clel.weights import export_pretrained, load_pretrained, read_config

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="training run folder (its export and metrics.jsonl)")
    p.add_argument("--out", required=True, type=Path, help="bundled folder to (re)write, e.g. weights/cifar10")
    p.add_argument("--preset", required=True, help="preset the run started from (the card lists the changes)")
    p.add_argument("--no-encoder", action="store_true", help="leave the encoder h out of the export")
    p.add_argument("--hardware", required=True, help="what the run trained on, for the card")
    p.add_argument("--status", required=True, help="an honest sentence or two on quality, for the card")
    p.add_argument("--cost", default=None, help="what the whole model cost, for the card, when it trained in more "
                   "than --run's folder (default: that folder's wall time)")
    p.add_argument("--command", action="append", default=[], help="a command that made the weights (repeat)")
    p.add_argument("--eval", type=Path, default=None,
                   help="eval.json to copy beside the card and quote (for CelebA weights: its "
                   "compositional section, which must have sampled --out)")
    p.add_argument("--buffer-images", type=int, default=1000,
                   help="ship at most this many images of the run's replay buffer (its own long-run chains, which "
                   "sampling can continue: start=\"buffer\"); from RUN/replay_buffer.safetensors, else the newest "
                   "checkpoint (default 1000; 0: none)")
    p.add_argument("--samples", type=int, default=64, help="images in samples.png")
    p.add_argument("--sample-steps", type=int, default=None, help="SGLD steps for samples.png (default: 5x training)")
    p.add_argument("--reference-sweeps", type=int, default=10,
                   help="also draw samples-reference.png with the reference sampler: this many augmented sweeps "
                   "of the training chain, as the FID protocol (0: no second grid)")
    add_run_options(p, seed=True, device="device that draws samples.png: cpu (default) or cuda; the weight files "
                    "do not depend on it", device_default="cpu")
    return p


def read_evaluation(args: argparse.Namespace, dataset: str) -> dict | None:
    """--eval's results for the card, checked before anything in --out is overwritten."""
    if not args.eval:
        return None
    evaluation = json.loads(args.eval.read_text())
    if dataset == "cifar10":
        return evaluation
    # scripts/evaluate.py evaluates a CIFAR-10 model; only its compositional section sampled these weights.
    comp = evaluation.get("compositional") or {}
    # evaluate.py writes repo-relative paths; an absolute one replaces REPO in the join
    if not comp.get("weights") or (REPO / comp["weights"]).resolve() != args.out.resolve():
        sys.exit(f"{args.eval}: its compositional section sampled {comp.get('weights') or 'no weights'}, "
                 f"not {args.out}")
    return {k: evaluation[k] for k in ("compositional", "device", "seed") if k in evaluation}


def export(args: argparse.Namespace, model, extras: dict, meta: dict) -> None:
    """The fp16 export, and beside it the EMA of f and g when the export holds the live weights: a run continued
    from the bundle keeps its average."""
    names = {k: extras[n] for k, n in (("class_prototypes", "classes"), ("class_contrasts", "classes"),
                                       ("attribute_latents", "attributes"), ("attribute_contrasts", "attributes"))
             if k in extras}
    info = {"weights": meta.get("weights", "ema"), "iteration": meta.get("iteration"), "schedule": meta.get("schedule")}
    export_pretrained(model, args.out, dtype=torch.float16, extras={k: extras[k] for k in names}, extra_names=names,
                      info=info, encoder=not args.no_encoder)
    ema = args.run / EMA_NAME
    if ema.is_file() and meta.get("weights") == "live":
        write_ema(read_ema(ema), args.out / EMA_NAME, iteration=meta.get("iteration"), dtype=torch.float16)
    else:
        (args.out / EMA_NAME).unlink(missing_ok=True)


def run_buffer(run: Path, meta: dict) -> tuple[torch.Tensor, int | None] | None:
    """The run's replay buffer and the iteration it was saved at: the file the trainer writes beside every export,
    else the newest checkpoint's (rank 0's); None when the run has neither."""
    path = run / REPLAY_BUFFER_NAME
    if path.is_file():
        images, it = read_replay_buffer(path)
        return images, meta.get("iteration") if it is None else it
    ck = newest_checkpoint(run)
    if ck is None:
        return None
    return checkpoint_buffer(ck[0], ck[1]), int(ck[0]["iteration"])


def ship_buffer(args: argparse.Namespace, meta: dict) -> int:
    """At most --buffer-images images of the run's replay buffer beside the export (uint8); a stale file in --out
    goes when none is shipped. Returns how many were shipped."""
    out = args.out / REPLAY_BUFFER_NAME
    found = run_buffer(args.run, meta) if args.buffer_images > 0 else None
    if found is None:
        out.unlink(missing_ok=True)
        print("replay buffer: none shipped" + ("" if args.buffer_images <= 0 else f" ({args.run} has none)"))
        return 0
    images, iteration = found
    save_replay_buffer(images[:args.buffer_images], out, iteration=iteration)
    n = min(len(images), args.buffer_images)
    print(f"replay buffer: {n} of {len(images)} images (iteration {iteration}), {out.stat().st_size / 2**20:.1f} MiB")
    return n


def draw_grids(args: argparse.Namespace, steps: int) -> list[tuple[str, str]]:
    """samples.png (and samples-reference.png) from the bundled, fp16-rounded weights: what users will get."""
    bundled, _, _ = load_pretrained(args.out, device=args.device)
    x = sample(bundled, args.samples, settings=ChainSettings.from_model(bundled, steps=steps),
               generator=torch.Generator(args.device).manual_seed(args.seed)).cpu()
    save_grid(x, args.out / "samples.png", upscale=2)
    grids = [("samples", "samples.png")]
    (args.out / "samples-reference.png").unlink(missing_ok=True)
    if args.reference_sweeps > 0:
        ref = ChainSettings.reference(bundled, sweeps=args.reference_sweeps)
        x = sample(bundled, args.samples, settings=ref,
                   generator=torch.Generator(args.device).manual_seed(args.seed)).cpu()
        save_grid(x, args.out / "samples-reference.png", upscale=2)
        grids.append(("samples, reference sampler", "samples-reference.png"))
    return grids


def main() -> None:
    args = build_parser().parse_args()
    model, cfg, extras = load_pretrained(args.run)
    _, meta = read_config(args.run)
    evaluation = read_evaluation(args, cfg.dataset)
    export(args, model, extras, meta)
    buffer_images = ship_buffer(args, meta)
    steps = args.sample_steps or 5 * cfg.sgld_steps
    grids = draw_grids(args, steps)
    if evaluation is not None:
        if cfg.dataset == "cifar10":
            shutil.copyfile(args.eval, args.out / "eval.json")
        else:
            (args.out / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    _, out_meta = read_config(args.out)
    where = "" if args.device == "cpu" else f" on {args.device}"
    status = (f"{args.status} (samples.png: {args.samples} samples, {steps} SGLD steps from uniform noise, "
              f"seed {args.seed}{where}"
              + (f"; samples-reference.png: the same starts, {args.reference_sweeps} sweeps x {cfg.sgld_steps} "
                 f"steps, each after the training augmentation (the reference sampler, which the FID scores)"
                 if args.reference_sweeps > 0 else "") + ".)")
    training = training_summary(args.run)
    training["iterations"] = meta.get("iteration", training["iterations"])  # the exported iteration
    if args.cost:
        training["cost"] = args.cost
    card = render_model_card(cfg, out_meta, evaluation=evaluation, training=training,
                             hardware=args.hardware, commands=args.command, status=status, preset=args.preset,
                             grids=grids, buffer_images=buffer_images, folder=args.out.name)
    (args.out / "README.md").write_text(card)
    print(f"bundled {args.run} -> {args.out}")


if __name__ == "__main__":
    main()
