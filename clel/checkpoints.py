"""Checkpoint and export-side files of a training run: one home for reading, writing and finding them.

* ``checkpoints/iter-NNNNNNN/``: the whole training state as ``state.safetensors`` + ``state.json``, written to
  a temporary folder, fsynced and renamed, so a crash never damages the previous checkpoint; no pickle anywhere;
* ``replay_buffer.safetensors`` (uint8 images) and ``ema.safetensors`` (the EMA of f and g) beside an export;
* what ``--resume`` and ``--resume auto`` continue from.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import CLELConfig
from .data import to_uint8
from .weights import CONFIG_NAME, fsync_dir, read_config, remove_tree

CKPT_FORMAT_VERSION = 1
# A replay buffer saved beside an export (uint8 images, metadata format=REPLAY_BUFFER_FORMAT): --resume EXPORT
# starts from it instead of noise (scripts/gpu/pack_result.py writes one; checkpoints hold theirs inline).
REPLAY_BUFFER_NAME = "replay_buffer.safetensors"
REPLAY_BUFFER_FORMAT = "clel-replay-buffer"
# The EMA of f and g beside an export of the live weights, so a run continued from the export keeps its average.
EMA_NAME = "ema.safetensors"
EMA_FORMAT = "clel-ema"
# Fields that define the networks (and their input): a checkpoint with other values is another model.
MODEL_FIELDS = ("dataset", "image_size", "mean", "std", "arch", "feature_dim", "head_hidden", "projection",
                "encoder_hidden", "encoder_width")


class TrainError(RuntimeError):
    """A problem the user can fix (bad path, wrong checkpoint, full disk); the CLI prints it and exits 2."""

    exit_code = 2


class DivergenceError(TrainError):
    """Training diverged ``max_failures`` times despite rollbacks; the CLI exits 3."""

    exit_code = 3


_CKPT_RE = re.compile(r"^iter-(\d+)$")


def find_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run (``checkpoints/iter-N`` with both files), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / "state.json").is_file() and (p / "state.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(state.json, tensors of state.safetensors) of one checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as e:  # truncated or foreign files
        raise TrainError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") != "clel-checkpoint":
        raise TrainError(f"{path}: not a clel checkpoint")
    if meta.get("format_version", 0) > CKPT_FORMAT_VERSION:
        raise TrainError(f"{path}: checkpoint format {meta['format_version']} is newer than this clel supports")
    return meta, tensors


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """state.json of a checkpoint, after checking (cheaply, from its header) that state.safetensors is readable."""
    from safetensors import safe_open

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            f.keys()
    except Exception as e:  # truncated or foreign files
        raise TrainError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "clel-checkpoint":
        raise TrainError(f"{path}: not a clel checkpoint")
    return meta


def newest_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor], Path] | None:
    """(state.json, tensors, folder) of the newest readable checkpoint of a run, or None (the public reader)."""
    for path in reversed(find_checkpoints(run_dir)):
        try:
            meta, tensors = load_checkpoint(path)
            return meta, tensors, path
        except (TrainError, OSError):  # being rotated away or half-written: try the one before
            continue
    return None


def write_checkpoint(path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write a checkpoint folder atomically: temporary folder, fsync, rename (the old one stays until then)."""
    from .weights import write_json_atomic, write_safetensors_atomic

    root = path.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{path.name}-{os.getpid()}"
    remove_tree(tmp)
    try:
        tmp.mkdir()
        write_safetensors_atomic(tensors, tmp / "state.safetensors")
        write_json_atomic(meta, tmp / "state.json")
        fsync_dir(tmp)
        if path.exists():  # the same iteration again (after a rollback): swap, then drop the old one
            old = root / f".old-{path.name}-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            remove_tree(old)
        else:
            os.replace(tmp, path)
        fsync_dir(root)
    except BaseException:
        remove_tree(tmp)
        raise


def tidy_checkpoint_dir(root: Path) -> None:
    """Clean up after a writer that was killed: drop temporary folders, restore a swapped-out checkpoint."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(".old-"):
            final = root / re.sub(r"-\d+$", "", p.name[len(".old-"):])
            if not final.exists():
                os.replace(p, final)  # killed between the two renames of a same-iteration rewrite
            else:
                remove_tree(p)
        elif p.name.startswith(".tmp-"):
            remove_tree(p)


def resolve_resume(resume: str | os.PathLike, warn: Any = None) -> tuple[str, Path]:
    """What ``--resume`` points at: ("checkpoint", folder) — the newest readable one of a run — or ("export",
    folder) for a pretrained folder without checkpoints."""
    p = Path(resume)
    if not p.is_dir():
        raise TrainError(f"--resume {resume}: no such folder")
    if (p / "state.json").is_file():
        return "checkpoint", p
    for c in reversed(find_checkpoints(p)):  # newest first; a damaged one falls back to the one before
        try:
            read_checkpoint_meta(c)
            return "checkpoint", c
        except TrainError as e:
            if warn is not None:
                warn(f"warning: skipping {c}: {e}")
    if (p / CONFIG_NAME).is_file():
        return "export", p
    raise TrainError(f"--resume {resume}: no checkpoint (checkpoints/iter-*/) and no export "
                     f"({CONFIG_NAME} + model.safetensors) in this folder")


def resolve_auto(out: str | os.PathLike, init: str | os.PathLike | None) -> tuple[str | None, str]:
    """What ``--resume auto`` continues from: (folder or None, a sentence saying so).

    The run folder ``out`` when it holds a complete checkpoint, else the ``init`` export, else nothing (scratch).
    """
    if find_checkpoints(out):
        return str(out), f"--resume auto: continuing the run in {out} from its newest checkpoint"
    if init is not None:
        kind, path = resolve_resume(init)
        return str(init), (f"--resume auto: no checkpoint in {out} yet, starting from the "
                           f"{'export' if kind == 'export' else 'checkpoint'} {path}")
    return None, f"--resume auto: no checkpoint in {out} and no --init, starting from scratch"


def saved_config(resume: str | os.PathLike) -> CLELConfig:
    """The CLELConfig stored with a run, checkpoint or export (so ``--resume`` alone rebuilds the model)."""
    kind, path = resolve_resume(resume)
    try:
        if kind == "checkpoint":
            return CLELConfig.from_dict(read_checkpoint_meta(path)["config"])
        return read_config(path)[0]
    except (KeyError, TypeError, ValueError) as e:
        raise TrainError(f"{path}: cannot read its config ({e})") from None


def model_mismatch(a: CLELConfig, b: CLELConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in MODEL_FIELDS if da.get(k) != db.get(k)]


def save_replay_buffer(images: Tensor, path: str | os.PathLike, iteration: int | None = None) -> Path:
    """Write replay-buffer images (float in [0, 1] or uint8) as the uint8 file ``--resume EXPORT`` reads."""
    from .weights import write_safetensors_atomic

    if images.dtype != torch.uint8:
        images = to_uint8(images)
    meta = {"format": REPLAY_BUFFER_FORMAT, "count": str(len(images))}
    if iteration is not None:
        meta["iteration"] = str(iteration)
    write_safetensors_atomic({"images": images.contiguous()}, path, metadata=meta)
    return Path(path)


def load_replay_buffer(path: str | os.PathLike, shape: tuple[int, ...]) -> Tensor:
    """uint8 images [N, *shape] of a saved replay buffer (``save_replay_buffer``); anything else raises TrainError."""
    from .weights import read_tagged_safetensors

    tensors, _ = read_tagged_safetensors(path, REPLAY_BUFFER_FORMAT, "replay buffer", error=TrainError)
    images = tensors.get("images")
    if images is None or images.dtype != torch.uint8 or tuple(images.shape[1:]) != tuple(shape):
        raise TrainError(f"{path}: expected uint8 images [N, {', '.join(map(str, shape))}], got "
                         f"{None if images is None else (images.dtype, tuple(images.shape))}")
    return images


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def clone_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # Optimisers and the replay buffer adopt loaded tensors without copying; a snapshot must stay pristine.
    return {k: v.clone() for k, v in tensors.items()}
