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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .config import CLELConfig
from .data import to_float, to_uint8
from .weights import (CONFIG_NAME, WeightsError, fsync_dir, load_into, load_sharded, pack_tree, read_config,
                      remove_tree, unpack_tree)

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
                "encoder", "encoder_hidden", "encoder_width")
ENCODER_FIELDS = ("encoder", "encoder_hidden", "encoder_width")  # what --new-encoder may change


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


def checkpoint_weights(meta: dict[str, Any], tensors: dict[str, Tensor], which: str = "ema") -> dict[str, Tensor]:
    """The state dict of a checkpoint's ``ema`` or live ``model`` weights (from :func:`newest_checkpoint`)."""
    if which not in ("ema", "model"):
        raise ValueError(f"which must be ema or model, got {which!r}")
    return unpack_tree(meta["shared"], tensors)[which]


def checkpoint_buffer(meta: dict[str, Any], tensors: dict[str, Tensor], rank: int = 0) -> Tensor:
    """A rank's replay buffer in a checkpoint, as stored (uint8 with ``--buffer-uint8``, else float)."""
    return unpack_tree(meta["ranks"][rank], tensors)["buffer"]


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


def model_mismatch(a: CLELConfig, b: CLELConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in MODEL_FIELDS if k not in ignore and da.get(k) != db.get(k)]


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


def read_replay_buffer(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> tuple[Tensor, int | None]:
    """uint8 images [N, *shape] of a saved replay buffer (``save_replay_buffer``; any shape when None) and the
    iteration it was saved at (None when not recorded); anything else raises TrainError."""
    from .weights import read_tagged_safetensors

    tensors, meta = read_tagged_safetensors(path, REPLAY_BUFFER_FORMAT, "replay buffer", error=TrainError)
    images = tensors.get("images")
    if (images is None or images.dtype != torch.uint8 or images.ndim != 4
            or (shape is not None and tuple(images.shape[1:]) != tuple(shape))):
        raise TrainError(f"{path}: expected uint8 images [N, {', '.join(map(str, shape or ('C', 'H', 'W')))}], got "
                         f"{None if images is None else (images.dtype, tuple(images.shape))}")
    it = meta.get("iteration", "")
    return images, int(it) if it.isdigit() else None


def load_replay_buffer(path: str | os.PathLike, shape: tuple[int, ...]) -> Tensor:
    """uint8 images [N, *shape] of a saved replay buffer (:func:`read_replay_buffer` without the iteration)."""
    return read_replay_buffer(path, shape)[0]


def write_ema(tensors: dict[str, Tensor], path: str | os.PathLike, iteration: Any = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write the EMA of f and g as the ``EMA_NAME`` file beside an export (floats cast to ``dtype`` if given)."""
    from .weights import write_safetensors_atomic

    # contiguous: the trainer's networks are channels_last, files are NCHW
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in tensors.items()}
    write_safetensors_atomic(tensors, path, metadata={"format": EMA_FORMAT, "iteration": str(iteration)})
    return Path(path)


def read_ema(path: str | os.PathLike, error: type[Exception] = TrainError) -> dict[str, Tensor]:
    """The EMA of f and g from an ``EMA_NAME`` file (:func:`write_ema`); anything else raises ``error``."""
    from .weights import read_tagged_safetensors

    return read_tagged_safetensors(path, EMA_FORMAT, "EMA weights", error=error)[0]


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


class TrainerState:
    """The training state a checkpoint or a snapshot holds, captured and restored (mixed into
    :class:`clel.trainer.Trainer`): weights, EMA and optimisers (shared), and per rank the replay buffer and
    the random streams; plus continuing from an export and writing checkpoints."""

    def _shared_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt_ebm": self.opt_ebm.state_dict(), "opt_enc": self.opt_enc.state_dict(),
                "iteration": self.it, "lr_scale": self.lr_scale, "failures": self.failures,
                "warm_from": self.warm_from}

    def _rank_state(self, buffer_uint8: bool = False) -> dict[str, Any]:
        images = self.buffer.images
        if buffer_uint8:
            images = to_uint8(images)
        return {"buffer": images, "sampler_gen": self.sampler_gen.get_state(),
                "batches": self.batches.state_dict(), "rng": rng_state(self.device)}

    def _capture(self, buffer_uint8: bool = False) -> tuple[Any, Any, dict[str, Tensor]]:
        tensors: dict[str, Tensor] = {}
        shared = pack_tree(self._shared_state(), tensors, "shared")
        local = pack_tree(self._rank_state(buffer_uint8), tensors, f"rank{self.rank}")
        return shared, local, tensors

    def _restore(self, snap: tuple[Any, Any, dict[str, Tensor]]) -> None:
        shared, local, tensors = snap
        tensors = clone_tensors(tensors)
        self._apply_shared(unpack_tree(shared, tensors), source="snapshot")
        self._apply_rank(unpack_tree(local, tensors))

    def _apply_shared(self, s: dict[str, Any], source: str) -> None:
        try:
            load_into(self.model, s["model"], source=f"model weights of {source}")
            load_into(self.ema, s["ema"], source=f"EMA weights of {source}")
        except WeightsError as e:
            raise TrainError(str(e)) from None
        self.opt_ebm.load_state_dict(s["opt_ebm"])
        if "opt_enc" in s:  # absent when --new-encoder starts h afresh
            self.opt_enc.load_state_dict(s["opt_enc"])
        self.it, self.lr_scale, self.failures = int(s["iteration"]), float(s["lr_scale"]), int(s["failures"])
        self.warm_from = int(s.get("warm_from", 0))

    def _apply_rank(self, r: dict[str, Any]) -> None:
        self.buffer.load_state_dict({"images": r["buffer"]})
        self.sampler_gen.set_state(r["sampler_gen"])
        self.batches.load_state_dict(r["batches"])
        set_rng_state(r["rng"], self.device)

    def _fresh_encoder(self, state: dict[str, Tensor], ema: bool = False) -> dict[str, Tensor]:
        """``state`` with this run's newly built h in place of the saved one (--new-encoder)."""
        own = (self.ema if ema else self.model).state_dict()
        return {**{k: v for k, v in state.items() if not k.startswith("h.")},
                **{k: v for k, v in own.items() if k.startswith("h.")}}

    def _load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
        shared = unpack_tree(meta["shared"], tensors)
        if self.opts.new_encoder:
            shared = {k: v for k, v in shared.items() if k != "opt_enc"}
            shared.update(model=self._fresh_encoder(shared["model"]), ema=self._fresh_encoder(shared["ema"], ema=True))
            self._say(f"--new-encoder: a fresh {self.cfg.encoder} encoder h starts training with its own optimiser; "
                      "f, g, their EMA and optimiser, the schedule and the replay buffer continue")
        self._apply_shared(shared, source=source)
        ranks = meta["ranks"]
        if self.rank < len(ranks) and len(ranks) == self.world:
            self._apply_rank(unpack_tree(ranks[self.rank], tensors))
        else:  # another world size: reuse a buffer, but the random streams cannot continue exactly
            self._apply_rank({**unpack_tree(ranks[self.rank % len(ranks)], tensors),
                              "rng": rng_state(self.device), "sampler_gen": self.sampler_gen.get_state(),
                              "batches": self.batches.state_dict()})
            self._say(f"warning: checkpoint was written by {len(ranks)} ranks, this run has {self.world}: "
                      f"weights and optimisers resume exactly, random streams restart")

    def _load_export(self, path: Path) -> None:
        """Continue from an export: its weights, EMA and schedule position; fresh optimisers (an export has none).

        An export without its encoder (``parts`` lacks h) gets a fresh, randomly initialised h, said in the log.
        """
        try:
            _, meta = read_config(path)
            state = load_sharded(path)
            parts = set(meta.get("parts", ("f", "g", "h")))
            if self.opts.new_encoder:
                parts.discard("h")
            if "h" not in parts:
                state = self._fresh_encoder(state)
            load_into(self.model, state, source=f"weights in {path}")
            load_into(self.ema, state, source=f"weights in {path}")
            ema_file = path / EMA_NAME
            if ema_file.is_file():
                ema_fg = read_ema(ema_file)
                load_into(self.ema, {**state, **ema_fg}, source=f"EMA weights in {ema_file}")
        except WeightsError as e:
            raise TrainError(str(e)) from None
        schedule = meta.get("schedule") or {}
        recorded = int(schedule.get("iteration", meta.get("iteration", 0)) or 0)
        self.it = int(self.opts.init_iteration) if self.opts.init_iteration is not None else recorded
        self.lr_scale = float(schedule.get("lr_scale", 1.0))
        self.warm_from = self.it
        said = [f"continuing at iteration {self.it}"
                + (f" (--init-iteration; the export records {recorded})" if self.opts.init_iteration is not None
                   and self.it != recorded else "")
                + ", so the encoder's cosine schedule and the EMA continue; fresh optimisers (an export has no "
                  f"optimiser state), so the EBM learning rate warms up again over {self.cfg.warmup_iters} "
                  "iterations"]
        said.append(f"EMA from {EMA_NAME}" if ema_file.is_file() else "EMA restarts from these weights")
        if self.opts.new_encoder:
            said.append(f"--new-encoder: a fresh {self.cfg.encoder} encoder h starts training")
        elif "h" not in parts:
            said.append("this export has no encoder h: a fresh, randomly initialised encoder starts training "
                        "(look-alikes and OOD scores need it to learn again)")
        buffer_file = Path(self.opts.resume_buffer) if self.opts.resume_buffer else path / REPLAY_BUFFER_NAME
        if self.opts.resume_buffer or buffer_file.is_file():
            n = self._load_buffer_file(buffer_file)
            said.append(f"{n} replay-buffer images from {buffer_file}")
        else:
            said.append("the replay buffer starts from uniform noise")
        self._say(f"resuming from the export in {path}: " + "; ".join(said))

    def _load_buffer_file(self, path: Path) -> int:
        """Fill the first slots of the replay buffer from a saved uint8 buffer; the rest keep their U(0, 1) start."""
        images = load_replay_buffer(path, tuple(self.buffer.images.shape[1:]))
        if self.world > 1:  # every rank its own share, so the ranks' buffers differ as they did in training
            images = images[self.rank::self.world]
        n = min(len(images), len(self.buffer))
        self.buffer.images[:n] = to_float(images[:n].to(self.buffer.images.device))
        return n

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write the full training state of all ranks to ``out/checkpoints/iter-N`` (rank 0), keep the last N."""
        shared, local, tensors = self._capture(self.opts.buffer_uint8)
        if self.world > 1:  # rank-specific state travels to rank 0, which alone writes
            gathered: list[Any] | None = [None] * self.world if self.is_main else None
            local_tensors = {k: v for k, v in tensors.items() if k.startswith(f"rank{self.rank}")}
            dist.gather_object((local, local_tensors), gathered, dst=0)
            if self.is_main:
                ranks = []
                for loc, t in gathered:
                    ranks.append(loc)
                    tensors.update(t)
        else:
            ranks = [local]
        path = None
        error: str | None = None
        if self.is_main:
            path = self.out / "checkpoints" / f"iter-{self.it:07d}"
            meta = {"format": "clel-checkpoint", "format_version": CKPT_FORMAT_VERSION, "iteration": self.it,
                    "config": self.cfg.to_dict(), "options": self.opts.to_dict(), "world_size": self.world,
                    "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
                    "shared": shared, "ranks": ranks, "time": time.time()}
            try:
                write_checkpoint(path, meta, tensors)
            except OSError as e:
                prev = find_checkpoints(self.out)
                keep = f"the previous checkpoint {prev[-1]} is intact" if prev else "no earlier checkpoint exists"
                error = (f"could not write checkpoint {path}: {e.strerror or e} (errno {e.errno}); {keep}. "
                         f"Once that is fixed, continue with --resume {self.out}")
            else:
                for old in find_checkpoints(self.out)[:-max(1, self.opts.keep_ckpts)]:
                    remove_tree(old)
                self._log_event("checkpoint", iteration=self.it, path=str(path))
        self._t_ckpt = time.time()
        if self._any_rank(error is not None):
            raise TrainError(error or "checkpoint failed on rank 0")
        return path
