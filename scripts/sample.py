#!/usr/bin/env python
"""Draw samples from a trained CLEL export: unconditional, instance- or class-conditional, attribute
compositions (AND / NOT, a weight each) and slerp interpolation between two images' latents.

    python scripts/sample.py --weights weights/cifar10 --out /tmp/s unconditional --n 64
    python scripts/sample.py --weights weights/cifar10 --out /tmp/s instance ref1.png ref2.jpg --guidance 2
    python scripts/sample.py --weights weights/cifar10 --out /tmp/s class cat dog --n 8 --gif
    python scripts/sample.py --weights weights/celeba64 --out /tmp/s attributes --and Young --and Smiling:2 --not Male
    python scripts/sample.py --weights weights/cifar10 --out /tmp/s interpolate a.png b.png --n 8 --gif

Every mode is SGLD from uniform noise on one energy: ½‖f(x)‖² − guidance · Σ wₐ cos(g(f(x)), z̄ₐ). Writes
<out>/<mode>.png (a grid; one row per class in class mode), with --gif an animated <mode>.gif of the chain, and
<out>/<mode>.json with the settings. Exit codes: 0 done, 2 bad input (message printed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import torch

from clel.images import load_images, save_gif, save_grid
from clel.runtime import add_field_options, add_run_options
from clel.sampling import SAMPLING, ChainSettings, Condition, SamplingError, draw, parse_term, term_label

# the chain settings a command line may set (the others: the constructors'): field -> option
CHAIN_OPTIONS = {name: "--" + name.replace("_", "-") for name in ("steps", "sweeps", "step_size", "noise", "grad_clip",
                                                                 "guidance", "direction", "guidance_ramp",
                                                                 "guidance_bound", "start")}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    c = common.add_argument_group("chain and output")
    c.add_argument("--n", type=int, default=16,
                   help="samples (per class in class mode; points along the path in interpolate mode); default 16")
    c.add_argument("--sampling", choices=sorted(SAMPLING), default="measured",
                   help="defaults for --guidance and --direction: measured (chosen by measure/sweep_sampling.py, "
                   "docs/evaluation.md) or paper (the training β, mean direction) (default measured)")
    add_field_options(c, ChainSettings, CHAIN_OPTIONS)
    add_run_options(c, seed="seed of the start noise and the chain noise (default 0)")
    c.add_argument("--gif", action="store_true", help="also write an animated GIF of the chain")
    c.add_argument("--gif-frames", type=int, default=30, help="about this many GIF frames (default 30)")
    c.add_argument("--gif-ms", type=int, default=100, help="milliseconds per GIF frame (default 100)")
    c.add_argument("--nrow", type=int, help="images per grid row (default: square grid, or --n per row)")
    c.add_argument("--upscale", type=int, default=2, help="nearest-neighbour upscale of the PNG/GIF (default 2)")
    add_run_options(c, device=True)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="CLEL export folder or Hugging Face repo id")
    p.add_argument("--out", required=True, help="output folder")
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    sub.add_parser("unconditional", parents=[common], help="samples of the marginal energy ½‖f(x)‖²")
    s = sub.add_parser("instance", parents=[common],
                       help="samples sharing what one or more reference images have in common")
    s.add_argument("images", nargs="+", help="reference image files (any size; centre-cropped and resized)")
    s = sub.add_parser("class", parents=[common], help="class-conditional samples from the stored prototypes")
    s.add_argument("classes", nargs="+", help="class names (e.g. cat dog) or indices")
    s = sub.add_parser("attributes", parents=[common],
                       help="compositions of the stored attribute latents (CelebA export)")
    s.add_argument("--and", dest="and_", action="append", default=[], metavar="NAME[:W]",
                   help="ask for an attribute, optional weight W > 0 (repeatable), e.g. --and Young --and Smiling:2")
    s.add_argument("--not", dest="not_", action="append", default=[], metavar="NAME[:W]",
                   help="push away from an attribute with weight W (repeatable), e.g. --not Male:0.5")
    s = sub.add_parser("interpolate", parents=[common],
                       help="samples along the great circle between two images' latents (slerp)")
    s.add_argument("image_a", help="start image file")
    s.add_argument("image_b", help="end image file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (SamplingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def conditions(args: argparse.Namespace, extras: dict, size: int, direction: str,
               info: dict) -> tuple[list[Condition], int | None]:
    """The mode's conditions (one chain each; one per class in class mode) and the grid's row length; what they
    were made from goes into ``info``."""
    nrow = args.nrow
    if args.mode == "unconditional":
        return [Condition.unconditional()], nrow
    if args.mode == "instance":
        info["references"] = list(args.images)
        return [Condition.instance(load_images(args.images, size))], nrow
    if args.mode == "class":
        info["classes"] = list(args.classes)
        return [Condition.classes(extras, [name], direction) for name in args.classes], nrow or args.n
    if args.mode == "attributes":
        terms = [parse_term(t, 1.0) for t in args.and_] + [parse_term(t, -1.0) for t in args.not_]
        info["terms"] = [[a, w] for a, w in terms]
        info["condition"] = term_label(terms)
        return [Condition.attributes(extras, terms, direction)], nrow
    info["references"] = [args.image_a, args.image_b]  # interpolate
    return [Condition.interpolate(load_images([args.image_a], size), load_images([args.image_b], size))], nrow or args.n


def run(args: argparse.Namespace) -> int:
    from clel.weights import WeightsError, load_pretrained

    if args.n < 1:
        raise SamplingError("--n must be at least 1")
    try:
        model, cfg, extras = load_pretrained(args.weights, device=args.device)
    except WeightsError as e:
        raise SamplingError(f"--weights {args.weights}: {e}") from None
    model.requires_grad_(False)
    settings = ChainSettings.measured(model, args.mode, args.sweeps, args.sampling, extras,
                                      **{name: getattr(args, name) for name in CHAIN_OPTIONS if name != "sweeps"})
    every = max(1, settings.total_steps // max(1, args.gif_frames)) if args.gif else 0
    info: dict = {"mode": args.mode, "weights": str(extras.get("path", args.weights)), "n": args.n,
                  "seed": args.seed, "guidance": settings.guidance, "direction": settings.direction,
                  "chain": vars(settings)}
    out = Path(args.out)
    runs, nrow = conditions(args, extras, cfg.image_size, settings.direction, info)

    results = [draw(model, args.n, cond, settings, seed=args.seed, frame_every=every)
               for cond in runs]
    x = torch.cat([r.x for r in results])
    png = save_grid(x, out / f"{args.mode}.png", nrow, args.upscale)
    files = {"png": str(png)}
    if args.gif:
        frames = [torch.cat([r.frames[i] for r in results]) for i in range(len(results[0].frames))]
        files["gif"] = str(save_gif(frames, out / f"{args.mode}.gif", nrow, args.upscale, args.gif_ms))
    info["seconds"] = sum(r.seconds for r in results)
    info["files"] = files
    (out / f"{args.mode}.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(json.dumps(files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
