#!/usr/bin/env python
"""Pack a training run into what the device tool can bring back: a tar in parts of at most 15 MiB.

    python scripts/gpu/pack_result.py --run /tmp/clel-run --bundle /tmp/clel-bundle/cifar10 --out $OUT   # final
    python scripts/gpu/pack_result.py --run /tmp/clel-run --out $OUT --partial     # from the newest checkpoint

The tool returns at most 8 files of at most 16 MiB (64 MiB together), so a run folder (checkpoints of ~200 MB,
a weights folder of 8 files) cannot come back as it is. This writes ``OUT/result.tar.00``, ``.01``, ... (a tar
split into parts; join them with ``cat OUT/result.tar.* | tar -x -C DEST``) holding:

* ``cifar10/``: the bundled weights folder (``--bundle``: fp16 EMA export with the encoder, extras, samples.png,
  model card); with ``--partial``, ``cifar10-partial/``: the EMA weights of the newest checkpoint as an fp16
  export without class prototypes or card (bundle it here later, see docs/gpu-session.md);
* ``resume/replay_buffer.safetensors``: the newest checkpoint's replay buffer as uint8 (cut to what fits), so
  ``scripts/train.py --resume cifar10 --resume-buffer resume/replay_buffer.safetensors`` continues with trained
  chains (fresh optimisers and warm-up: the full checkpoint is too large to bring back);
* ``run/metrics.jsonl``, ``run/samples-last.png`` and ``MANIFEST.json`` (what is inside, iteration, sizes).

Old parts in OUT are replaced only once the new ones are complete, so an interrupted pack leaves the last good one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path


MiB = 2**20
PREFIX = "result.tar."


def partial_export(meta: dict, tensors: dict, dest: Path) -> int:
    """fp16 export of the checkpoint's EMA weights (encoder included, no prototypes); returns the iteration."""
    import torch

    from clel.checkpoints import checkpoint_weights
    from clel.config import CLELConfig
    from clel.models import CLEL
    from clel.weights import export_pretrained, load_into

    model = CLEL(CLELConfig.from_dict(meta["config"]))
    load_into(model, checkpoint_weights(meta, tensors, "ema"), source="EMA weights of the checkpoint")
    it = int(meta["iteration"])
    export_pretrained(model, dest, dtype=torch.float16,
                      info={"weights": "ema", "iteration": it, "partial": True,
                            "note": "from a checkpoint during training: no class prototypes, no model card"})
    return it


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def tar_size(stage: Path) -> int:
    """Bytes of an uncompressed tar of ``stage``: 512-byte header + padded data per entry, 1024-byte end."""
    total = 1024
    for p in stage.rglob("*"):
        total += 512 + (-(-p.stat().st_size // 512) * 512 if p.is_file() else 0)
    return -(-total // 10240) * 10240  # tarfile pads to whole 10 KiB records


def write_parts(stage: Path, out: Path, part_bytes: int) -> list[Path]:
    """Tar ``stage`` into ``out/result.tar.NN`` parts; old parts are replaced only once the new ones are complete."""
    with tempfile.TemporaryDirectory(prefix="clel-pack-") as tmp:
        tar_path = Path(tmp) / "result.tar"
        with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
            for p in sorted(stage.iterdir()):
                tar.add(p, arcname=p.name)
        parts = []
        with open(tar_path, "rb") as src:
            i = 0
            while chunk := src.read(part_bytes):
                part = Path(tmp) / f"{PREFIX}{i:02d}"
                part.write_bytes(chunk)
                parts.append(part)
                i += 1
        out.mkdir(parents=True, exist_ok=True)
        staged = []
        for part in parts:  # copy next to the destination first, then swap names
            dst = out / f".{part.name}.new"
            shutil.copyfile(part, dst)
            staged.append(dst)
        for old in out.glob(PREFIX + "*"):
            old.unlink()
        final = []
        for dst in staged:
            target = out / dst.name[1:-len(".new")]
            os.replace(dst, target)
            final.append(target)
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="the training run folder (checkpoints/, metrics.jsonl)")
    p.add_argument("--out", required=True, type=Path, help="where the parts go ($OUT on the device)")
    p.add_argument("--bundle", type=Path, default=None, help="the bundled weights folder (scripts/bundle_weights.py)")
    p.add_argument("--partial", action="store_true", help="no bundle yet: export the newest checkpoint's EMA weights")
    p.add_argument("--name", default="cifar10", help="folder name of the weights inside the tar")
    p.add_argument("--max-total-mib", type=float, default=60.0,
                   help="all parts together (the tool brings back 64 MiB; leave room for the log and summary)")
    p.add_argument("--part-mib", type=float, default=15.0, help="size of one part (the tool's limit is 16 MiB)")
    p.add_argument("--extra", type=Path, action="append", default=[], help="another small file to include")
    return p


def stage_run(args: argparse.Namespace, ck, stage: Path, manifest: dict) -> None:
    """The weights (bundle, or the checkpoint's EMA as a partial export), metrics, the last grid and --extra."""
    if args.bundle is not None:
        if not (args.bundle / "config.json").is_file():
            raise SystemExit(f"{args.bundle}: no config.json (not a weights folder)")
        shutil.copytree(args.bundle, stage / args.name)
        manifest["weights"] = args.name
        manifest["weights_iteration"] = json.loads((args.bundle / "config.json").read_text()).get("iteration")
    elif ck is not None:
        it = partial_export(ck[0], ck[1], stage / f"{args.name}-partial")
        manifest["weights"], manifest["weights_iteration"] = f"{args.name}-partial", it
    run_dir = stage / "run"
    run_dir.mkdir()
    if (args.run / "metrics.jsonl").is_file():
        shutil.copyfile(args.run / "metrics.jsonl", run_dir / "metrics.jsonl")
    samples = sorted((args.run / "samples").glob("iter-*.png"))
    if samples:
        shutil.copyfile(samples[-1], run_dir / "samples-last.png")
    for extra in args.extra:
        if extra.is_file():
            shutil.copyfile(extra, run_dir / extra.name)


def stage_buffer(ck, stage: Path, limit: int) -> dict:
    """The checkpoint's replay buffer as uint8, cut to what is left of ``limit``; returns what was kept."""
    from clel.checkpoints import checkpoint_buffer, save_replay_buffer

    buf = checkpoint_buffer(ck[0], ck[1])
    per_image = buf[0].numel()  # bytes of one uint8 image
    # The buffer takes what is left; one MiB for the manifest, headers and the tar's padding.
    room = limit - tar_size(stage) - MiB
    keep = max(0, min(len(buf), room // per_image))
    if keep < min(64, len(buf)):  # a few images are not worth a file
        keep = 0
    if keep:
        (stage / "resume").mkdir()
        save_replay_buffer(buf[:keep], stage / "resume" / "replay_buffer.safetensors",
                           iteration=int(ck[0]["iteration"]))
    return {"kept": int(keep), "of": len(buf)}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.bundle is None and not args.partial:
        p.error("give --bundle DIR, or --partial to export the newest checkpoint")
    t0 = time.time()
    limit = int(args.max_total_mib * MiB)
    from clel.checkpoints import newest_checkpoint

    ck = newest_checkpoint(args.run)
    manifest: dict = {"format": "clel-gpu-result", "mode": "final" if args.bundle else "partial",
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": str(args.run),
                      "checkpoint": str(ck[2]) if ck else None,
                      "checkpoint_iteration": int(ck[0]["iteration"]) if ck else None}
    with tempfile.TemporaryDirectory(prefix="clel-stage-") as tmp:
        stage = Path(tmp)
        stage_run(args, ck, stage, manifest)
        if ck is not None:
            manifest["replay_buffer"] = stage_buffer(ck, stage, limit)
        manifest["files"] = {str(f.relative_to(stage)): f.stat().st_size for f in sorted(stage.rglob("*"))
                             if f.is_file()}
        (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
        size = tar_size(stage)
        if size > limit:
            raise SystemExit(f"the result is {size / MiB:.1f} MiB, over --max-total-mib {args.max_total_mib}")
        parts = write_parts(stage, args.out, int(args.part_mib * MiB))
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in parts}
    print(f"packed {manifest['mode']} result (weights {manifest.get('weights')} at iteration "
          f"{manifest.get('weights_iteration')}, replay buffer {manifest.get('replay_buffer', {}).get('kept', 0)} "
          f"images) into {len(parts)} parts, {sum(p.stat().st_size for p in parts) / MiB:.1f} MiB, "
          f"in {time.time() - t0:.1f} s: {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
