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
* export: ``model.safetensors`` + ``config.json`` + class prototypes / attribute latents (:mod:`clel.weights`),
  the EMA and the replay buffer beside them;
* the frozen encoder (``encoder="inception"``): its network's features of the training set are computed once
  (:func:`clel.inception.cached_features`) and an iteration looks up its batch's rows; only the head trains.

Entry point: ``train(cfg, TrainOptions(...))`` or ``scripts/train.py``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .augment import StrongAugment
from .checkpoints import (EMA_NAME, ENCODER_FIELDS, REPLAY_BUFFER_NAME, DivergenceError, TrainError, TrainerState,
                          find_checkpoints, load_checkpoint, model_mismatch, read_checkpoint_meta, resolve_auto,
                          resolve_resume, save_replay_buffer, tidy_checkpoint_dir, write_ema)
from .concepts import concept_latents, encode_images
from .config import CLELConfig
from .data import DataError, ImageSet, RandomBatches, load_dataset
from .distributed import gather_keep_grad, init_distributed
from .energy import marginal
from .fast import FastPath, fast_sgld, prepare, set_precision
from .inception import cached_features
from .losses import EBMLoss, NTXentLoss
from .models import CLEL, FrozenEncoder
from .sgld import ReplayBuffer
from .weights import WeightsError, check_encoder, export_pretrained, read_config

__all__ = ["TrainOptions", "Trainer", "TrainError", "DivergenceError", "train", "ema_update", "ebm_lr", "encoder_lr"]



from .options import TrainOptions
from .runlog import RunLog
from .runtime import lower_priority, raise_on_sigterm, restore_sigterm, seed_all


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


class _Objective(nn.Module):
    """Every forward pass with trainable parameters in one module, so DDP can synchronise their gradients.

    Returns f(x⁺), f(x⁻), g(f(x⁺)), sg(g(f(x⁻))), z⁺ = sg(h(t(x⁺))/‖·‖) and h of the two views. The
    frozen encoder's part here is its head, and its inputs are the cached features of the images.
    """

    def __init__(self, model: CLEL, use_encoder: bool):
        super().__init__()
        self.f, self.g = model.f, model.g
        # β = 0 baseline: the encoder is not trained, so DDP must not wait for its gradients.
        h = model.h.head if isinstance(model.h, FrozenEncoder) else model.h
        self.h = h if use_encoder else None

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

class Trainer(TrainerState, RunLog):
    """Owns the networks, optimisers, replay buffer and data stream of one run (one rank under DDP)."""

    def __init__(self, cfg: CLELConfig, opts: TrainOptions, data: ImageSet | None = None):
        self.opts = opts
        self._messages: list[str] = []
        self._init_distributed(opts.device)
        set_precision(opts.precision, self.device, TrainError)
        self.out = Path(opts.out)
        self._t_start = time.time()
        if opts.nice:
            lower_priority(int(opts.nice), self._say)
        self._resolve_auto_resume()
        if self.device.type == "cpu":
            self._set_threads(self.opts.threads, self.opts.resume)

        ck_meta, ck_tensors, resume_path = self._what_to_continue(cfg)
        opts = self.opts
        self.cfg = cfg
        if self.is_main:
            tidy_checkpoint_dir(self.out / "checkpoints")

        # Data first: a wrong path should fail before any model is built.
        self.data = data if data is not None else self._load_data(cfg, opts.data)
        if tuple(self.data.images.shape[1:]) != (3, cfg.image_size, cfg.image_size):
            raise TrainError(f"data images are {tuple(self.data.images.shape[1:])}, config expects "
                             f"(3, {cfg.image_size}, {cfg.image_size})")

        self._build(cfg)
        self.features: Tensor | None = self._frozen_features()
        self._init_sampling(cfg)

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

    def _resolve_auto_resume(self) -> None:
        """``--resume auto``: the run's own latest checkpoint, else ``--init``, else a fresh start."""
        opts = self.opts
        if opts.resume == "auto":
            target, msg = resolve_auto(self.out, opts.init)
            self._say(msg)
            if target != opts.init:  # the run's own checkpoint: the options for starting from --init do not apply
                opts = dataclasses.replace(opts, resume_buffer=None, init_iteration=None, new_encoder=False)
            self.opts = dataclasses.replace(opts, resume=target)
        elif opts.init is not None:
            raise TrainError("--init applies to --resume auto only (use --resume EXPORT to start from an export)")

    def _frozen_features(self) -> Tensor | None:
        """The frozen encoder's features of every training image, computed once per data set and machine: an
        iteration never runs the network, it looks up its batch's rows. None for a trained encoder."""
        if not (self.use_encoder and isinstance(self.model.h, FrozenEncoder)):
            return None
        return cached_features(self.data.images, self.device,
                               progress=self.opts.progress and self.is_main).to(self.device)

    def _init_sampling(self, cfg: CLELConfig) -> None:
        """Per-rank randomness: each rank has its own buffer, batches and augmentations."""
        rank_seed = self.opts.seed + self.rank
        seed_all(rank_seed)
        self.sampler_gen = torch.Generator(self.device).manual_seed(rank_seed)
        self.buffer = ReplayBuffer(cfg.buffer_size, (3, cfg.image_size, cfg.image_size), cfg.reinit_prob,
                                   self.device, generator=self.sampler_gen)
        n_real = max(cfg.batch_size, cfg.contrastive_batch_size or cfg.batch_size)
        if n_real > len(self.data):
            raise TrainError(f"batch of {n_real} images but the data set has only {len(self.data)}")
        self.batches = RandomBatches(self.data, n_real, torch.Generator().manual_seed(rank_seed + 7919),
                                     self.device)

    def _what_to_continue(self, cfg: CLELConfig) -> tuple[dict[str, Any] | None, dict[str, Tensor] | None,
                                                          Path | None]:
        """Resolve --resume (a checkpoint, an export or nothing), check it holds the same model, and refuse to
        start over a run that has checkpoints. Returns the checkpoint's (meta, tensors) and the path."""
        opts = self.opts
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
                ex_cfg, ex_meta = read_config(resume_path)
                check_encoder(ex_cfg, ex_meta, resume_path)  # before any work: its frozen network must be here
            except WeightsError as e:
                raise TrainError(str(e)) from None
            self._check_same_model(cfg, ex_cfg, resume_path)
        if opts.resume_buffer and self.resume_kind != "export":
            raise TrainError("--resume-buffer applies to --resume EXPORT only (a checkpoint holds its own buffer)")
        if self.resume_kind is None and find_checkpoints(self.out):
            raise TrainError(f"{self.out} already holds checkpoints of a run; continue it with --resume "
                             f"{self.out}, or choose another --out (nothing was changed)")
        return ck_meta, ck_tensors, resume_path

    def _build(self, cfg: CLELConfig) -> None:
        """Networks, EMA, objective (DDP-wrapped under torchrun), optimisers, losses, augmentation, fast path."""
        opts = self.opts
        # Identical initial weights on every rank (DDP would also broadcast rank 0's).
        torch.manual_seed(opts.seed)
        # The trainer's own autocast covers bf16, so the fast path only caches, reorders and (on GPU) graphs.
        self.fast = FastPath(cache_sn=opts.fast, channels_last=opts.fast, bf16=False,
                             cuda_graph=opts.fast and self.device.type == "cuda", reuse_memory=opts.fast)
        # Every network channels_last (not only the chain's input): the training forward and backward of f and h
        # then run oneDNN/cuDNN's NHWC kernels without a reorder per convolution. Files stay NCHW (saves are
        # .contiguous()).
        self.model = prepare(CLEL(cfg).to(self.device), self.fast)
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
        diff = model_mismatch(saved, cfg, ignore=ENCODER_FIELDS if self.opts.new_encoder else ())
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
        self._set_learning_rates()

        # 1. Real images (the encoder may use more of them than the EBM: Large's contrastive batch 256).
        x_real, _, rows = self.batches.next_indexed()
        x_pos = x_real[:n]

        # 2. Negatives: replay buffer (with reinit) → strong augmentation → SGLD on the marginal energy → back.
        x_neg, slots = self.buffer.sample(n)
        x_neg = fast_sgld(self.model.f, self._marginal_energy, self.augment(x_neg), cfg.sgld_steps,
                          cfg.sgld_step_size, cfg.sgld_noise, cfg.sgld_grad_clip, self.fast, generator=self.sampler_gen)
        self.buffer.push(x_neg, slots)
        self.last_samples = x_neg

        # 3. One forward of every network: z⁺ from a third augmentation, two views for NT-Xent.
        v_z, views = self._encoder_inputs(x_real, x_pos, rows)
        with self._autocast():
            f_pos, f_neg, g_pos, g_neg, z_pos, h = self.objective(x_pos, x_neg, v_z, views)

        # 4. Losses: L_EBM on this rank's batch; L_LE over all ranks' views with sg(g(f(x⁻))) as extra negatives.
        l_ebm, stats = self.ebm_loss(f_pos, f_neg, g_pos, z_pos)
        l_le = self._contrastive_loss(h, g_neg)
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

        # 6. Update f, g (and h), then 7. the EMA. Half-life in images: with N ranks an iteration sees N batches.
        self._update(l_ebm, l_le)
        ema_update(self.ema, self.model, cfg.ema_decay ** self.world, copy_weights=self.it < cfg.ema_start_iter)
        self.it += 1
        return self._step_stats({"loss": loss, "l_ebm": l_ebm, "l_le": l_le, **stats, "e_max": e_max})

    def _set_learning_rates(self) -> None:
        for group in self.opt_ebm.param_groups:
            group["lr"] = ebm_lr(self.cfg, self.it, self.warm_from) * self.lr_scale
        for group in self.opt_enc.param_groups:
            group["lr"] = encoder_lr(self.cfg, self.it) * self.lr_scale

    def _encoder_inputs(self, x_real: Tensor, x_pos: Tensor, rows: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The encoder's inputs: for z⁺ (a third augmentation of x⁺) and the two NT-Xent views of the real batch.

        The frozen encoder is trained as the paper's MAE variant, without augmentation: the cached features of x⁺
        give z⁺ and both views (so L_LE spreads the images apart and away from the extra negatives g(f(x⁻))).
        """
        if self.features is not None:
            feats = self.features[rows.to(self.device)].float()
            return feats[:x_pos.shape[0]], torch.cat([feats, feats])
        v_z = self.augment(x_pos) if self.use_encoder else None
        views = torch.cat([self.augment(x_real), self.augment(x_real)]) if self.use_encoder else None
        return v_z, views

    def _contrastive_loss(self, h: Tensor | None, g_neg: Tensor) -> Tensor:
        """L_LE: NT-Xent over the views of all ranks, with every rank's sg(g(f(x⁻))) as extra negatives."""
        if not self.use_encoder:
            return torch.zeros((), device=self.device)
        m = h.shape[0] // 2
        z1 = gather_keep_grad(h[:m], self.world, self.rank)
        z2 = gather_keep_grad(h[m:], self.world, self.rank)
        negatives = gather_keep_grad(g_neg, self.world, self.rank) if self.cfg.extra_negatives else None
        return self.nt_xent(z1, z2, negatives)

    def _update(self, l_ebm: Tensor, l_le: Tensor) -> None:
        """One optimiser step of f, g and (unless β = 0) h."""
        # DDP averages gradients over ranks; every rank computed the *global* NT-Xent but only its own slice
        # carries gradient, so scaling by world size makes the average the exact global gradient.
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

    def _step_stats(self, scalars: dict[str, Tensor]) -> dict[str, float]:
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
            self._log_start()
        bar = self._progress(max_iters)
        t_last, it_last = time.time(), self.it
        self._t_ckpt = time.time()
        interrupted = False
        old_term = raise_on_sigterm()
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
                    t_last, it_last = self._log_step(stats, bar, t_last, it_last)
                if self.it % opts.sample_every == 0:
                    self.save_samples()
                if opts.probe_every and self.it % opts.probe_every == 0:
                    self._probe_or_warn()
                overdue = time.time() - self._t_ckpt > 60 * opts.ckpt_minutes
                if (self.it % opts.ckpt_every == 0 or self._any_rank(overdue)) and self.it < max_iters:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
            self._say(f"interrupted at iteration {self.it}: writing a checkpoint")
        finally:
            restore_sigterm(old_term)
            if bar is not None:
                bar.close()
        self._finish(interrupted)
        return self

    def _log_start(self) -> None:
        """Open metrics.jsonl (and TensorBoard) with a ``start`` line, then the messages said so far."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._open_logs()
        self._log_event("start", iteration=self.it, config=self.cfg.to_dict(), world_size=self.world,
                        device=str(self.device), resume=self.resume_kind)
        for msg in self._messages:
            self._log_event("message", text=msg)

    def _log_step(self, stats: dict[str, float], bar: Any, t_last: float, it_last: int) -> tuple[float, int]:
        """A metrics row of the ranks' mean statistics and the speed since the last row; returns the new mark."""
        now = time.time()
        stats = self._mean_over_ranks(stats)
        stats["it_per_s"] = (self.it - it_last) / max(now - t_last, 1e-9)
        self._log_metrics(stats)
        if bar is not None:
            bar.set_postfix(loss=f"{stats['loss']:.4g}", e_pos=f"{stats['e_pos']:.3g}",
                            e_neg=f"{stats['e_neg']:.3g}", lr=f"{stats['lr']:.1e}", refresh=False)
        return now, self.it

    def _probe_or_warn(self) -> None:
        try:
            self.run_probe()
        except Exception as e:  # a measurement must never end a long run
            self._say(f"warning: the probe at iteration {self.it} failed ({type(e).__name__}: {e}); "
                      f"training goes on")

    def _finish(self, interrupted: bool) -> None:
        """The last samples and checkpoint; the export unless interrupted (then KeyboardInterrupt goes on up)."""
        self.save_samples()
        self.save_checkpoint()
        if not interrupted:
            self.export()
        if self.is_main:
            self._log_event("end", iteration=self.it, seconds=time.time() - self._t_start)
            self._close_logs()
        if interrupted:
            raise KeyboardInterrupt

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
        seed_all(seed)
        self.sampler_gen.manual_seed(seed)
        self.batches.generator.manual_seed(seed + 7919)
        self._say(f"divergence at iteration {at} ({reason}): rolled back to iteration {self.it}, learning "
                  f"rates x{self.lr_scale:g}, reseeded (failure {failures} of {self.opts.max_failures})")
        if self.is_main:
            self._log_event("rollback", iteration=at, to=self.it, reason=reason, lr_scale=self.lr_scale,
                            failures=failures)

    # -- export, samples, prototypes -----------------------------------------------------------------------------

    def concept_latents(self, model: CLEL) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
        """Class prototypes and contrasts (labelled data), attribute latents and contrasts (CelebA)."""
        d = self.data
        if not self.use_encoder or (d.labels is None and d.attrs is None):
            return {}, {}
        z = encode_images(model.h, d.images, self.device, bf16=self.opts.precision == "bf16", features=self.features)
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
                self._write_buffer(path / REPLAY_BUFFER_NAME)
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
            self._probe = probe_mod.Probe(self.data, device=self.device, features=self.features)
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
        if exported == "ema":  # the export is the EMA itself
            file.unlink(missing_ok=True)
            return
        write_ema({k: v for k, v in self.ema.state_dict().items() if not k.startswith("h.")}, file, self.it, dtype)

    def _write_buffer(self, file: Path) -> None:
        """Beside an export, the first ``export_buffer`` images of the replay buffer (rank 0's), uint8."""
        n = min(self.opts.export_buffer, len(self.buffer))
        if n <= 0:
            file.unlink(missing_ok=True)
            return
        save_replay_buffer(self.buffer.images[:n].detach().cpu(), file, self.it)

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
