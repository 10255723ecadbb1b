#!/usr/bin/env python
"""Give an export without its encoder h a new one, distilled from the export's own g∘f (``clel.distill``).

    python scripts/distill_encoder.py --weights weights/celeba64 --out /tmp/celeba64-h

f, g and the stored concept latents are copied unchanged, so sampling gives the same images; the new h brings
back what needs it: look-alikes, interpolation and the OOD score s(x). Concept directions the export lacks (e.g.
attribute contrasts) are added from the new encoder's latents of the data. The last --holdout images are held out
and measure the agreement cos(h(x), g(f(x))) before and after; config.json records the recipe and the agreement.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from clel.concepts import concept_latents, encode_images
from clel.distill import DistillRecipe, distill_encoder
from clel.fast import native_bf16
from clel.runtime import add_run_options, set_threads
from clel.weights import WeightsError, export_pretrained, load_pretrained, read_config

TENSOR_EXTRAS = ("class_prototypes", "class_contrasts", "attribute_latents", "attribute_contrasts")
NAMES = {"class_prototypes": "classes", "class_contrasts": "classes", "attribute_latents": "attributes",
         "attribute_contrasts": "attributes"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="export folder (typically one saved without its encoder)")
    p.add_argument("--out", required=True, type=Path, help="folder for the new export (not --weights itself)")
    p.add_argument("--data", default=None, help="the export's data (default: ../shared/data/<dataset>)")
    p.add_argument("--holdout", type=int, default=1000, help="last N images held out (default 1000)")
    p.add_argument("--epochs", type=int, default=DistillRecipe.epochs)
    p.add_argument("--batch", type=int, default=DistillRecipe.batch_size)
    p.add_argument("--lr", type=float, default=DistillRecipe.lr)
    p.add_argument("--width", type=int, default=None, help="encoder base width (default: the config's)")
    add_run_options(p, seed=True, threads=True, device=True)
    return p


def load_data(dataset: str, root: str | None, size: int):
    from clel.data import load_celeba, load_cifar10
    from clel.eval import default_data_root

    folder = Path(root) if root else Path(default_data_root()) / dataset
    if dataset == "celeba":
        return load_celeba(folder, size)
    if dataset == "cifar10":
        return load_cifar10(folder, "train")
    raise SystemExit(f"error: no loader for dataset {dataset!r}; use an export of CIFAR-10 or CelebA")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    if args.out.resolve() == Path(args.weights).resolve():
        print("error: --out must be a new folder, not --weights", file=sys.stderr)
        return 2
    try:
        model, cfg, extras = load_pretrained(args.weights, device=args.device)
        _, meta = read_config(extras["path"])
    except WeightsError as e:
        print(f"error: --weights {args.weights}: {e}", file=sys.stderr)
        return 2
    model.requires_grad_(False)
    data = load_data(cfg.dataset, args.data, cfg.image_size)
    if not 0 < args.holdout < len(data.images):
        print(f"error: --holdout must be between 1 and {len(data.images) - 1}", file=sys.stderr)
        return 2
    train, held = data.images[:-args.holdout], data.images[-args.holdout:]
    recipe = DistillRecipe(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed,
                           bf16=native_bf16(args.device))
    report = distill_encoder(model, train, held, recipe, args.width)
    model.h.requires_grad_(False)
    print(f"agreement cos(h(x), g(f(x))) on {len(held)} held-out images: {report.cos_before:.3f} -> "
          f"{report.cos_after:.3f} ({report.seconds / 60:.1f} min)")
    kept = {k: extras[k].cpu() for k in TENSOR_EXTRAS if k in extras}
    names = {k: extras[NAMES[k]] for k in kept}
    new, new_names = concept_latents(encode_images(model.h, data.images, args.device, bf16=recipe.bf16), data)
    added = [k for k in new if k not in kept]
    kept.update({k: new[k] for k in added})
    names.update({k: new_names[k] for k in added})
    info = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "dtype", "files",
                                                       "parts", "extras")}
    info["encoder"] = {"distilled_from": "g(f(x)) of this export (scripts/distill_encoder.py)",
                       "recipe": asdict(recipe), "images": len(train), "holdout": len(held),
                       "agreement_before": report.cos_before, "agreement_after": report.cos_after,
                       "losses": report.losses, "minutes": report.seconds / 60, "extras_added": added}
    dtype = torch.float16 if meta.get("dtype") == "float16" else torch.float32
    export_pretrained(model.cpu(), args.out, dtype=dtype, extras=kept, extra_names=names, info=info)
    print(json.dumps({"out": str(args.out), "added": added, "agreement_after": report.cos_after}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
