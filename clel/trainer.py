"""Training CLEL (Algorithm 1 of the paper, constants in SPEC.md), with everything a long run needs.

Read :meth:`Trainer.train_step` for one iteration of the algorithm and :meth:`Trainer.fit` for the loop around
it; the rest is plumbing:

* schedules: Adam with linear warm-up for the EBM (f and g), SGD with cosine decay for the encoder h;
* EMA of all three networks by half-life (copied before ``ema_start_iter``, buffers always copied);
* checkpoints: the *whole* training state (weights, EMA, optimisers, replay buffer, data-iterator position,
  every RNG), every ``ckpt_every`` iterations, after ``ckpt_minutes`` and on SIGINT/SIGTERM; the files and what
  ``--resume`` / ``--resume auto`` continue from are :mod:`clel.checkpoints`;
* divergence recovery: a non-finite loss or an energy beyond ``energy_bound`` rolls back to an in-memory
  snapshot, halves the learning rates, reseeds and continues; ``max_failures`` failures stop the run;
* DDP (``torchrun``): one replay buffer per rank, NT-Xent over the negatives of all ranks, I/O on rank 0;
* export: ``model.safetensors`` + ``config.json`` + class prototypes / attribute latents (:mod:`clel.weights`).

Entry point: ``train(cfg, TrainOptions(...))`` or ``scripts/train.py``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .augment import StrongAugment
from .checkpoints import (CKPT_FORMAT_VERSION, EMA_FORMAT, EMA_NAME, REPLAY_BUFFER_NAME,
                          DivergenceError, TrainError, clone_tensors, find_checkpoints, load_checkpoint,
                          load_replay_buffer, model_mismatch, read_checkpoint_meta, resolve_auto, resolve_resume,
                          rng_state, set_rng_state, tidy_checkpoint_dir,
                          write_checkpoint)
from .concepts import concept_latents, encode_images
from .config import CLELConfig
from .data import DataError, ImageSet, RandomBatches, load_dataset, to_float, to_uint8
from .distributed import gather_keep_grad, init_distributed, mean_over_ranks
from .energy import marginal
from .fast import FastPath, fast_sgld, set_precision
from .losses import EBMLoss, NTXentLoss
from .models import CLEL
from .sgld import ReplayBuffer
from .weights import (WeightsError, export_pretrained, load_into, load_sharded, pack_tree, read_config, remove_tree,
                      unpack_tree)

__all__ = ["TrainOptions", "Trainer", "TrainError", "DivergenceError", "train", "ema_update", "ebm_lr", "encoder_lr"]



def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainOptions:
    """How to run (not what to learn: that is :class:`~clel.config.CLELConfig`)."""

    data: str | None = _opt(None, "training data folder (e.g. ../shared/data/cifar10); stored in checkpoints",
                            metavar="PATH")
    out: str = _opt("runs/clel", "run folder: checkpoints/, samples/, metrics.jsonl and the export (CLI "
                                 "default: runs/<preset>; with --resume the run's own folder, or "
                                 "<export>-resumed when resuming from an export)", metavar="DIR")
    max_iters: int | None = _opt(None, "stop when the iteration counter reaches N (absolute, so a resumed run "
                                       "stops at the same place); schedules still follow --iters")
    max_minutes: float | None = _opt(None, "stop (checkpoint + export) after this many minutes of training")
    resume: str | None = _opt(None, "run folder, checkpoint folder or export folder to continue from; auto: the "
                                    "newest complete checkpoint in --out, else --init, else from scratch (run "
                                    "the same command again and again)", metavar="DIR|auto")
    init: str | None = _opt(None, "with --resume auto: the export to start from when --out holds no checkpoint "
                                  "yet (e.g. weights/cifar10)", metavar="EXPORT")
    init_iteration: int | None = _opt(None, "with an export to start from: the iterations already behind it, for "
                                            "an export that does not record them (default: its config.json's)")
    resume_buffer: str | None = _opt(None, "with --resume EXPORT: start the replay buffer from these images (a "
                                           "uint8 replay_buffer.safetensors from scripts/gpu/pack_result.py; "
                                           "default: that file in the export folder, if there)", metavar="FILE")
    device: str = _opt("auto", "cpu, cuda or auto (cuda when available)", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("fp32", "fp32 (strict), tf32 (TF32 matmuls/convs on CUDA) or bf16 (autocast for "
                                  "the networks, on CUDA or a CPU with native bf16; SGLD images and updates "
                                  "stay fp32)",
                          choices=("fp32", "tf32", "bf16"))
    threads: int | None = _opt(None, "CPU threads for torch on --device cpu (default: torch's choice, but 1 "
                                     "when the machine is already busy: OpenMP threads that compete for cores "
                                     "are several times slower; a resumed run reuses the saved value)")
    fast: bool = _opt(True, "fast SGLD path (clel.fast): spectral-normalised weights computed once per chain, "
                            "channels_last, CUDA-graph capture on GPU; --no-fast runs the plain eager chain")
    seed: int = _opt(0, "random seed (rank r of a multi-GPU run uses seed + r for its buffer, batches and "
                        "augmentations)")
    log_every: int = _opt(10, "write metrics.jsonl / TensorBoard every N iterations")
    sample_every: int = _opt(500, "save a PNG grid of the current SGLD samples every N iterations")
    ckpt_every: int = _opt(1000, "write a checkpoint every N iterations (and always at the end)")
    ckpt_minutes: float = _opt(10.0, "also write a checkpoint after this many minutes without one (and on "
                                     "SIGINT/SIGTERM)")
    probe_every: int = _opt(0, "every N iterations append a quality probe to metrics.jsonl (clel.probe: FID of "
                               "500 reference-sampler samples against 2,000 training images, judged accuracy or "
                               "attribute agreement, clamped pixels) and its grid to probes/; 0: off")
    nice: int | None = _opt(None, "lower this process's CPU priority by N (os.nice) so a machine in use stays "
                                  "responsive")
    keep_ckpts: int = _opt(3, "keep the last N checkpoints")
    buffer_uint8: bool = _opt(False, "store the replay buffer as uint8 in checkpoints (4x smaller, resume "
                                     "then is not bit-exact)")
    snapshot_every: int = _opt(100, "keep an in-memory copy of the training state every N iterations "
                                    "(what a divergence rolls back to)")
    energy_bound: float = _opt(1e4, "treat |E(x)| above this as divergence")
    max_failures: int = _opt(3, "give up at the N-th divergence; the ones before roll back to the last good "
                                "state, halve the learning rates and reseed")
    export_weights: str = _opt("auto", "which weights model.safetensors holds: ema, live, or auto: the EMA once "
                                "the run is at least 10 EMA half-lives long, else the live weights (an EMA "
                                "that lags a short run by a large part of it is a flatter energy)",
                               choices=("auto", "ema", "live"))
    export_dtype: str = _opt("fp32", "dtype of the exported weights", choices=("fp32", "fp16"))
    max_shard_mb: float = _opt(15.0, "shard model.safetensors into files of at most this many MiB")
    prototypes: bool = _opt(True, "export class prototypes (labelled data) or attribute latents (CelebA)")
    progress: bool = _opt(True, "show a tqdm progress bar")
    tensorboard: bool = _opt(True, "also log to TensorBoard (out/tb) when it is installed")
    inject_nan_at: tuple[int, ...] = _opt((), "testing aid: make the loss NaN once at these iterations")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers: EMA, schedules, RNG state, distributed plumbing
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, copy_weights: bool = False) -> None:
    """ema ← decay·ema + (1−decay)·model for parameters; buffers (BN stats, spectral-norm u, v) are copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        if copy_weights:
            pe.copy_(p)
        else:
            pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def ebm_lr(cfg: CLELConfig, it: int, warm_from: int = 0) -> float:
    """Adam lr of f and g: linear warm-up over ``warmup_iters`` (counted from ``warm_from``), then constant.

    A run continued from an export has no Adam moments; it warms up again from the iteration it continues at.
    """
    return cfg.lr * min(1.0, (it - warm_from + 1) / max(1, cfg.warmup_iters))


def encoder_lr(cfg: CLELConfig, it: int) -> float:
    """SGD lr of h: cosine decay from ``encoder_lr`` to 0 over ``iters``."""
    return cfg.encoder_lr * 0.5 * (1.0 + math.cos(math.pi * min(it, cfg.iters) / max(1, cfg.iters)))


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _lower_priority(n: int, say: Any) -> None:
    """os.nice for the whole process: on Linux it changes only the calling thread, and torch has started others."""
    try:
        prio = os.nice(n)
        tasks = Path("/proc/self/task")
        for tid in (tasks.iterdir() if tasks.is_dir() else ()):
            os.setpriority(os.PRIO_PROCESS, int(tid.name), prio)
    except (AttributeError, OSError) as e:
        say(f"warning: --nice {n} not fully applied ({e})")


def _raise_on_sigterm() -> Any:
    """SIGTERM (``kill``, a scheduler's stop) ends training like Ctrl-C: checkpoint, then exit."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(old: Any) -> None:
    import signal

    if old is not None:
        signal.signal(signal.SIGTERM, old)


class _Objective(nn.Module):
    """Every forward pass with trainable parameters in one module, so DDP can synchronise their gradients.

    Returns f(x⁺), f(x⁻), g(f(x⁺)), sg(g(f(x⁻))), z⁺ = sg(h(t(x⁺))/‖·‖) and h of the two views.
    """

    def __init__(self, model: CLEL, use_encoder: bool):
        super().__init__()
        self.f, self.g = model.f, model.g
        # β = 0 baseline: the encoder is not trained, so DDP must not wait for its gradients.
        self.h = model.h if use_encoder else None

    def forward(self, x_pos: Tensor, x_neg: Tensor, v_z: Tensor | None, views: Tensor | None
                ) -> tuple[Tensor, ...]:
        n = x_pos.shape[0]
        fx = self.f(torch.cat([x_pos, x_neg])).float()  # one pass: one spectral-norm power iteration
        f_pos, f_neg = fx[:n], fx[n:]
        g_pos = self.g(f_pos).float()
        with torch.no_grad():
            g_neg = self.g(f_neg).float()
        if self.h is None:
            return f_pos, f_neg, g_pos, g_neg, torch.zeros_like(g_pos), None
        with torch.no_grad():
            z_pos = F.normalize(self.h(v_z).float(), dim=1)
        return f_pos, f_neg, g_pos, g_neg, z_pos, self.h(views).float()


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------

class Trainer:
    """Owns the networks, optimisers, replay buffer and data stream of one run (one rank under DDP)."""

    def __init__(self, cfg: CLELConfig, opts: TrainOptions, data: ImageSet | None = None):
        self.opts = opts
        self._messages: list[str] = []
        self._init_distributed(opts.device)
        set_precision(opts.precision, self.device, TrainError)
        self.out = Path(opts.out)
        self._t_start = time.time()
        if opts.nice:
            _lower_priority(int(opts.nice), self._say)
        if opts.resume == "auto":
            target, msg = resolve_auto(self.out, opts.init)
            self._say(msg)
            if target != opts.init:  # the run's own checkpoint: the options for starting from --init do not apply
                opts = dataclasses.replace(opts, resume_buffer=None, init_iteration=None)
            self.opts = opts = dataclasses.replace(opts, resume=target)
        elif opts.init is not None:
            raise TrainError("--init applies to --resume auto only (use --resume EXPORT to start from an export)")
        if self.device.type == "cpu":
            self._set_threads(opts.threads, opts.resume)

        # What are we continuing from?
        self.resume_kind, resume_path = self._find_resume(opts.resume)
        ck_meta: dict[str, Any] | None = None
        ck_tensors: dict[str, Tensor] | None = None
        if self.resume_kind == "checkpoint":
            ck_meta, ck_tensors = load_checkpoint(resume_path)
            ck_cfg = CLELConfig.from_dict(ck_meta["config"])
            self._check_same_model(cfg, ck_cfg, resume_path)
            changed = [f"{k}: {v!r} -> {cfg.to_dict()[k]!r}" for k, v in ck_cfg.to_dict().items()
                       if cfg.to_dict()[k] != v]
            if changed:
                self._say("config differs from the checkpoint's, using the new values: " + "; ".join(changed))
            if opts.data is None:
                self.opts = opts = dataclasses.replace(opts, data=ck_meta.get("options", {}).get("data"))
        elif self.resume_kind == "export":
            try:
                ex_cfg, _ = read_config(resume_path)
            except WeightsError as e:
                raise TrainError(str(e)) from None
            self._check_same_model(cfg, ex_cfg, resume_path)
        if opts.resume_buffer and self.resume_kind != "export":
            raise TrainError("--resume-buffer applies to --resume EXPORT only (a checkpoint holds its own buffer)")
        if self.resume_kind is None and find_checkpoints(self.out):
            raise TrainError(f"{self.out} already holds checkpoints of a run; continue it with --resume "
                             f"{self.out}, or choose another --out (nothing was changed)")
        self.cfg = cfg
        if self.is_main:
            tidy_checkpoint_dir(self.out / "checkpoints")

        # Data first: a wrong path should fail before any model is built.
        self.data = data if data is not None else self._load_data(cfg, opts.data)
        if tuple(self.data.images.shape[1:]) != (3, cfg.image_size, cfg.image_size):
            raise TrainError(f"data images are {tuple(self.data.images.shape[1:])}, config expects "
                             f"(3, {cfg.image_size}, {cfg.image_size})")

        # Identical initial weights on every rank (DDP would also broadcast rank 0's).
        torch.manual_seed(opts.seed)
        self.model = CLEL(cfg).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.use_encoder = cfg.beta != 0  # β = 0: the baseline EBM without latent guidance
        objective = _Objective(self.model, self.use_encoder)
        if self.world > 1:
            # DDP's default buffer sync (rank 0's at every forward) keeps spectral-norm u, v and BN stats equal.
            objective = DDP(objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.objective = objective
        self.opt_ebm = torch.optim.Adam([*self.model.f.parameters(), *self.model.g.parameters()], lr=cfg.lr,
                                        betas=cfg.adam_betas)
        self.opt_enc = torch.optim.SGD(self.model.h.parameters(), lr=cfg.encoder_lr, momentum=cfg.encoder_momentum,
                                       weight_decay=cfg.encoder_weight_decay)
        self.ebm_loss = EBMLoss(cfg.alpha, cfg.beta)
        self.nt_xent = NTXentLoss(cfg.temperature)
        self.augment = StrongAugment(cfg.image_size).to(self.device)
        # The trainer's own autocast covers bf16, so the fast path only caches, reorders and (on GPU) graphs.
        self.fast = FastPath(cache_sn=opts.fast, channels_last=opts.fast, bf16=False,
                             cuda_graph=opts.fast and self.device.type == "cuda")

        # Per-rank randomness: each rank has its own buffer, batches and augmentations.
        rank_seed = opts.seed + self.rank
        _seed_all(rank_seed)
        self.sampler_gen = torch.Generator(self.device).manual_seed(rank_seed)
        self.buffer = ReplayBuffer(cfg.buffer_size, (3, cfg.image_size, cfg.image_size), cfg.reinit_prob,
                                   self.device, generator=self.sampler_gen)
        n_real = max(cfg.batch_size, cfg.contrastive_batch_size or cfg.batch_size)
        if n_real > len(self.data):
            raise TrainError(f"batch of {n_real} images but the data set has only {len(self.data)}")
        self.batches = RandomBatches(self.data, n_real, torch.Generator().manual_seed(rank_seed + 7919),
                                     self.device)

        self.it = 0
        self.lr_scale = 1.0  # halved by every divergence rollback
        self.failures = 0
        self.warm_from = 0  # iteration the EBM warm-up counts from (a resumed export's fresh Adam warms up again)
        self._pending_nan = set(opts.inject_nan_at)
        if self.resume_kind == "checkpoint":
            self._load_state(ck_meta, ck_tensors, source=str(resume_path))
            self._say(f"resumed from checkpoint {resume_path} at iteration {self.it}")
        elif self.resume_kind == "export":
            self._load_export(resume_path)
        self._snapshot = self._capture()  # the last known-good state, for rollbacks

        self._metrics_file = None
        self._tb = None
        self.last_samples: Tensor | None = None

    # -- setup helpers -------------------------------------------------------------------------------------------

    def _init_distributed(self, device: str) -> None:
        try:
            self.world, self.rank, self.device = init_distributed(device)
        except ValueError as e:
            raise TrainError(str(e)) from None
        self.is_main = self.rank == 0

    def _set_threads(self, threads: int | None, resume: str | None) -> None:
        if threads is None and resume:  # the same thread count keeps CPU arithmetic bit-identical on resume
            try:
                kind, path = resolve_resume(resume)
                threads = read_checkpoint_meta(path).get("threads") if kind == "checkpoint" else None
            except TrainError:
                threads = None
        if threads is None:
            threads = torch.get_num_threads()
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            if load >= cores and threads > 1:
                threads = 1
                self._say(f"the machine is busy (load {load:.1f} on {cores} cores): using 1 CPU thread "
                          f"(--threads to override)")
        torch.set_num_threads(max(1, int(threads)))

    def _find_resume(self, resume: str | None) -> tuple[str | None, Path | None]:
        return resolve_resume(resume, warn=self._say) if resume else (None, None)

    def _check_same_model(self, cfg: CLELConfig, saved: CLELConfig, path: Path) -> None:
        diff = model_mismatch(saved, cfg)
        if diff:
            raise TrainError(f"--resume {path} is a different model: " + "; ".join(diff)
                             + " (saved vs requested). Resume without --preset/model options to use the "
                             "saved config, or start a new run with another --out")

    @staticmethod
    def _load_data(cfg: CLELConfig, path: str | None) -> ImageSet:
        if not path:
            raise TrainError(f"no training data: pass --data PATH (the {cfg.dataset} folder)")
        try:
            return load_dataset(cfg.dataset, path, split="train", image_size=cfg.image_size)
        except DataError as e:
            raise TrainError(f"cannot load the {cfg.dataset} training data: {e}") from None

    # -- one iteration of Algorithm 1 ----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.opts.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _marginal_energy(self, x: Tensor) -> Tensor:
        """E(x) = ½‖f(x)‖² on the unwrapped f (SGLD needs no gradient sync)."""
        with self._autocast():
            fx = self.model.f(x)
        return marginal(fx.float())

    def train_step(self) -> dict[str, float] | None:
        """One iteration; returns its statistics, or None when it diverged (and was rolled back)."""
        cfg, n = self.cfg, self.cfg.batch_size
        for group in self.opt_ebm.param_groups:
            group["lr"] = ebm_lr(cfg, self.it, self.warm_from) * self.lr_scale
        for group in self.opt_enc.param_groups:
            group["lr"] = encoder_lr(cfg, self.it) * self.lr_scale

        # 1. Real images (the encoder may use more of them than the EBM: Large's contrastive batch 256).
        x_real, _ = next(self.batches)
        x_pos = x_real[:n]

        # 2. Negatives: replay buffer (with reinit) → strong augmentation → SGLD on the marginal energy → back.
        x_neg, slots = self.buffer.sample(n)
        x_neg = fast_sgld(self.model.f, self._marginal_energy, self.augment(x_neg), cfg.sgld_steps,
                          cfg.sgld_step_size, cfg.sgld_noise, cfg.sgld_grad_clip, self.fast, generator=self.sampler_gen)
        self.buffer.push(x_neg, slots)
        self.last_samples = x_neg

        # 3. One forward of every network: z⁺ from a third augmentation, two views for NT-Xent.
        v_z = self.augment(x_pos) if self.use_encoder else None
        views = torch.cat([self.augment(x_real), self.augment(x_real)]) if self.use_encoder else None
        with self._autocast():
            f_pos, f_neg, g_pos, g_neg, z_pos, h = self.objective(x_pos, x_neg, v_z, views)

        # 4. Losses: L_EBM on this rank's batch; L_LE over all ranks' views with sg(g(f(x⁻))) as extra negatives.
        l_ebm, stats = self.ebm_loss(f_pos, f_neg, g_pos, z_pos)
        l_le = torch.zeros((), device=self.device)
        if self.use_encoder:
            m = h.shape[0] // 2
            z1 = gather_keep_grad(h[:m], self.world, self.rank)
            z2 = gather_keep_grad(h[m:], self.world, self.rank)
            negatives = gather_keep_grad(g_neg, self.world, self.rank) if cfg.extra_negatives else None
            l_le = self.nt_xent(z1, z2, negatives)
        loss = l_ebm + l_le
        if self.it in self._pending_nan:
            self._pending_nan.discard(self.it)
            loss = loss * float("nan")

        # 5. Divergence check, agreed by all ranks before anyone steps.
        e_max = marginal(torch.cat([f_pos, f_neg]).detach()).abs().max()
        bad = (~torch.isfinite(loss.detach())) | (e_max > self.opts.energy_bound)
        if self._any_rank(bool(bad)):
            self._recover(f"loss {loss.item():.4g}, max |E| {e_max.item():.4g}")
            return None

        # 6. Update: DDP averages gradients over ranks; every rank computed the *global* NT-Xent but only its
        #    own slice carries gradient, so scaling by world size makes the average the exact global gradient.
        self.opt_ebm.zero_grad(set_to_none=True)
        self.opt_enc.zero_grad(set_to_none=True)
        (l_ebm + self.world * l_le).backward()
        self.opt_ebm.step()
        if self.use_encoder:
            self.opt_enc.step()
        if self.world > 1:
            # This forward updated BN statistics from the local batch; make rank 0's authoritative now (as DDP
            # does at the next forward) so the EMA, checkpoints and the final weights agree on every rank.
            for b in self.model.buffers():
                dist.broadcast(b, src=0)
        # Half-life in images: with N ranks an iteration sees N batches.
        ema_update(self.ema, self.model, cfg.ema_decay ** self.world, copy_weights=self.it < cfg.ema_start_iter)
        self.it += 1
        scalars = {"loss": loss, "l_ebm": l_ebm, "l_le": l_le, **stats, "e_max": e_max}
        values = torch.stack([v.detach().float() for v in scalars.values()]).tolist()  # one device sync
        return {**dict(zip(scalars, values)), "lr": self.opt_ebm.param_groups[0]["lr"],
                "lr_encoder": self.opt_enc.param_groups[0]["lr"]}

    # -- the loop ------------------------------------------------------------------------------------------------

    def fit(self) -> "Trainer":
        """Train until ``max_iters`` (default ``cfg.iters``) or ``max_minutes``; checkpoint and export at the end."""
        opts, cfg = self.opts, self.cfg
        max_iters = opts.max_iters if opts.max_iters is not None else cfg.iters
        deadline = self._t_start + 60 * opts.max_minutes if opts.max_minutes else None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._open_logs()
            self._log_event("start", iteration=self.it, config=cfg.to_dict(), world_size=self.world,
                            device=str(self.device), resume=self.resume_kind)
            for msg in self._messages:
                self._log_event("message", text=msg)
        bar = self._progress(max_iters)
        t_last, it_last = time.time(), self.it
        self._t_ckpt = time.time()
        interrupted = False
        old_term = _raise_on_sigterm()
        try:
            while self.it < max_iters:
                if deadline is not None and self._any_rank(time.time() > deadline):
                    self._say(f"time limit of {opts.max_minutes} min reached at iteration {self.it}")
                    break
                stats = self.train_step()
                if stats is None:  # rolled back
                    if bar is not None:
                        bar.n = self.it
                        bar.refresh()
                    continue
                if bar is not None:
                    bar.update(1)
                if self.it % opts.snapshot_every == 0:
                    self._snapshot = self._capture()
                if self.it % opts.log_every == 0 or self.it == max_iters:
                    now = time.time()
                    stats = self._mean_over_ranks(stats)
                    stats["it_per_s"] = (self.it - it_last) / max(now - t_last, 1e-9)
                    t_last, it_last = now, self.it
                    self._log_metrics(stats)
                    if bar is not None:
                        bar.set_postfix(loss=f"{stats['loss']:.4g}", e_pos=f"{stats['e_pos']:.3g}",
                                        e_neg=f"{stats['e_neg']:.3g}", lr=f"{stats['lr']:.1e}", refresh=False)
                if self.it % opts.sample_every == 0:
                    self.save_samples()
                if opts.probe_every and self.it % opts.probe_every == 0:
                    try:
                        self.run_probe()
                    except Exception as e:  # a measurement must never end a long run
                        self._say(f"warning: the probe at iteration {self.it} failed ({type(e).__name__}: {e}); "
                                  f"training goes on")
                overdue = time.time() - self._t_ckpt > 60 * opts.ckpt_minutes
                if (self.it % opts.ckpt_every == 0 or self._any_rank(overdue)) and self.it < max_iters:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
            self._say(f"interrupted at iteration {self.it}: writing a checkpoint")
        finally:
            _restore_sigterm(old_term)
            if bar is not None:
                bar.close()
        self.save_samples()
        self.save_checkpoint()
        if not interrupted:
            self.export()
        if self.is_main:
            self._log_event("end", iteration=self.it, seconds=time.time() - self._t_start)
            self._close_logs()
        if interrupted:
            raise KeyboardInterrupt
        return self

    # -- divergence ----------------------------------------------------------------------------------------------

    def _any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _recover(self, reason: str) -> None:
        """Roll back to the last good state, halve the learning rates, reseed; give up after max_failures."""
        self.failures += 1
        at = self.it
        if self.failures >= self.opts.max_failures:
            msg = (f"training diverged at iteration {at} ({reason}); this is failure {self.failures} of "
                   f"{self.opts.max_failures}, giving up. Try a lower --lr, a larger --alpha or a smaller "
                   f"--sgld-step-size; the last checkpoint is in {self.out / 'checkpoints'}")
            if self.is_main:
                self._log_event("diverged", iteration=at, reason=reason, failures=self.failures)
            raise DivergenceError(msg)
        failures, lr_scale = self.failures, self.lr_scale * 0.5
        self._restore(self._snapshot)
        self.failures, self.lr_scale = failures, lr_scale
        # A different random path, so the same blow-up is not replayed exactly.
        seed = self.opts.seed + self.rank + 1_000_003 * failures
        _seed_all(seed)
        self.sampler_gen.manual_seed(seed)
        self.batches.generator.manual_seed(seed + 7919)
        self._say(f"divergence at iteration {at} ({reason}): rolled back to iteration {self.it}, learning "
                  f"rates x{self.lr_scale:g}, reseeded (failure {failures} of {self.opts.max_failures})")
        if self.is_main:
            self._log_event("rollback", iteration=at, to=self.it, reason=reason, lr_scale=self.lr_scale,
                            failures=failures)

    # -- state: capture / restore (checkpoints and snapshots share one format) ------------------------------------

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
        self.opt_enc.load_state_dict(s["opt_enc"])
        self.it, self.lr_scale, self.failures = int(s["iteration"]), float(s["lr_scale"]), int(s["failures"])
        self.warm_from = int(s.get("warm_from", 0))

    def _apply_rank(self, r: dict[str, Any]) -> None:
        self.buffer.load_state_dict({"images": r["buffer"]})
        self.sampler_gen.set_state(r["sampler_gen"])
        self.batches.load_state_dict(r["batches"])
        set_rng_state(r["rng"], self.device)

    def _load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
        self._apply_shared(unpack_tree(meta["shared"], tensors), source=source)
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
            if "h" not in parts:
                fresh_h = {k: v for k, v in self.model.state_dict().items() if k.startswith("h.")}
                state = {**state, **fresh_h}
            load_into(self.model, state, source=f"weights in {path}")
            load_into(self.ema, state, source=f"weights in {path}")
            ema_file = path / EMA_NAME
            if ema_file.is_file():
                from .weights import read_tagged_safetensors

                ema_fg, _ = read_tagged_safetensors(ema_file, EMA_FORMAT, "EMA weights", error=TrainError)
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
        if "h" not in parts:
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

    # -- export, samples, prototypes -----------------------------------------------------------------------------

    def concept_latents(self, model: CLEL) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
        """Class prototypes and contrasts (labelled data), attribute latents and contrasts (CelebA)."""
        d = self.data
        if not self.use_encoder or (d.labels is None and d.attrs is None):
            return {}, {}
        z = encode_images(model.h, d.images, self.device, bf16=self.opts.precision == "bf16")
        return concept_latents(z, d)

    def export_choice(self) -> str:
        """"ema" or "live": ``--export-weights``, where "auto" picks the EMA once the run is 10 half-lives long.

        The EMA's mean age is about 1.4 half-lives; a 1,000-iteration CPU run with a 625-iteration half-life
        exports an average of networks from its first half, whose energy is flat enough that chains from noise
        barely move (docs/training-log.md, run 2). A long GPU run's EMA is the better model.
        """
        if self.opts.export_weights != "auto":
            return self.opts.export_weights
        half_life_iters = self.cfg.ema_half_life_images / (self.cfg.batch_size * self.world)
        return "ema" if self.it - self.cfg.ema_start_iter >= 10 * half_life_iters else "live"

    def export(self, folder: str | os.PathLike | None = None) -> Path | None:
        """Write the pretrained folder (see :meth:`export_choice`) to ``folder`` (default: the run folder)."""
        path = None
        error = None
        if self.is_main:
            path = Path(folder) if folder is not None else self.out
            which = self.export_choice()
            model = self.ema if which == "ema" else self.model
            extras, names = self.concept_latents(model) if self.opts.prototypes else ({}, {})
            try:
                dtype = torch.float16 if self.opts.export_dtype == "fp16" else torch.float32
                export_pretrained(model, path, dtype=dtype, extras=extras, extra_names=names,
                                  info={"weights": which, "iteration": self.it,
                                        "schedule": {"iteration": self.it, "lr_scale": self.lr_scale,
                                                     "iters": self.cfg.iters}},
                                  max_shard_bytes=int(self.opts.max_shard_mb * 2**20))
                self._write_ema(path / EMA_NAME, dtype, which)
            except OSError as e:
                error = f"could not write the export to {path}: {e.strerror or e}; the checkpoints are intact"
            else:
                self._log_event("export", iteration=self.it, path=str(path))
        if self._any_rank(error is not None):
            raise TrainError(error or "export failed on rank 0")
        return path

    def run_probe(self) -> dict[str, Any] | None:
        """A quality probe (:mod:`clel.probe`) of the weights an export would hold, logged as a ``probe`` event."""
        if not self.is_main:
            return None
        from torchvision.utils import save_image

        from . import probe as probe_mod

        if getattr(self, "_probe", None) is None:
            self._probe = probe_mod.Probe(self.data, device=self.device)
            self._t_probe = self._t_start
        which = self.export_choice()
        t0 = time.time()
        result = self._probe(self.ema if which == "ema" else self.model)  # fp32: FID features are not for bf16
        trained = max(t0 - self._t_probe, 1e-9)
        self._t_probe = time.time()
        result.update(weights=which, cost=round(result["seconds"] / trained, 4))
        path = self.out / "probes" / f"iter-{self.it:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(self._probe.last_samples[:64], str(path), nrow=8)
        self._log_event("probe", iteration=self.it, **result)
        self._say("probe at iteration {}: {}".format(self.it, ", ".join(
            f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))))
        return result

    def _write_ema(self, file: Path, dtype: torch.dtype, exported: str) -> None:
        """Beside an export of the live weights, the EMA of f and g (a few MB), which a continued run resumes."""
        from .weights import write_safetensors_atomic

        if exported == "ema":  # the export is the EMA itself
            file.unlink(missing_ok=True)
            return
        ema = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in self.ema.state_dict().items() if not k.startswith("h.")}
        write_safetensors_atomic(ema, file, metadata={"format": EMA_FORMAT, "iteration": str(self.it)})

    def save_samples(self) -> Path | None:
        """PNG grid of the latest SGLD samples (rank 0's) in ``out/samples/iter-N.png``."""
        if not self.is_main or self.last_samples is None:
            return None
        from torchvision.utils import save_image

        path = self.out / "samples" / f"iter-{self.it:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        x = self.last_samples.float().cpu()
        try:
            save_image(x, str(path), nrow=max(1, int(math.ceil(math.sqrt(len(x))))))
        except OSError as e:  # a picture is not worth stopping a run for; the checkpoint write will tell
            self._say(f"warning: could not write {path}: {e.strerror or e}")
            return None
        return path

    # -- logging -------------------------------------------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self._messages.append(msg)
        if self.is_main:
            try:
                from tqdm import tqdm

                tqdm.write(f"clel: {msg}", file=sys.stderr)
            except ImportError:
                print(f"clel: {msg}", file=sys.stderr)
            if getattr(self, "_metrics_file", None) is not None:
                self._log_event("message", text=msg)

    def _progress(self, total: int) -> Any:
        if not (self.is_main and self.opts.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.it, desc="clel", unit="it", dynamic_ncols=True, file=sys.stderr)

    def _open_logs(self) -> None:
        self._metrics_file = open(self.out / "metrics.jsonl", "a")
        if self.opts.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return
            self._tb = SummaryWriter(str(self.out / "tb"), purge_step=self.it or None)

    def _close_logs(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _mean_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        return mean_over_ranks(stats, self.world, self.device)

    def _log_metrics(self, stats: dict[str, float]) -> None:
        if not self.is_main or self._metrics_file is None:
            return
        row = {"iter": self.it, "time": round(time.time() - self._t_start, 3), **stats}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for k, v in stats.items():
                self._tb.add_scalar(f"train/{k}", v, self.it)

    def _log_event(self, event: str, **fields: Any) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps({"event": event, "time": round(time.time() - self._t_start, 3),
                                                 **fields}, default=str) + "\n")
            self._metrics_file.flush()

    def close(self) -> None:
        self._close_logs()
        if self.world > 1 and dist.is_initialized():
            dist.barrier()


def train(cfg: CLELConfig, opts: TrainOptions | None = None, data: ImageSet | None = None,
          **options: Any) -> Trainer:
    """Build a :class:`Trainer` and run it: ``train(get_preset("tiny"), data="../shared/data/cifar10")``.

    Keyword ``options`` override fields of ``opts`` (a :class:`TrainOptions`). ``data`` may be an in-memory
    :class:`~clel.data.ImageSet` instead of a folder. Returns the trainer (``.model``, ``.ema``, ``.it``).
    """
    opts = dataclasses.replace(opts or TrainOptions(), **options)
    trainer = Trainer(cfg, opts, data=data)
    try:
        trainer.fit()
    finally:
        trainer._close_logs()
    return trainer
