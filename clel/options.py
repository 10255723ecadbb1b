"""How a training run runs (not what it learns: that is :class:`~clel.config.CLELConfig`): the options of
``scripts/train.py``, whose help texts are the field metadata."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    new_encoder: bool = _opt(False, "with --resume or --init: a fresh encoder h of this config's --encoder (e.g. "
                                    "--encoder inception: a new head on the frozen network) while f, g, their EMA "
                                    "and optimiser, the schedule and the replay buffer continue; how a run "
                                    "switches encoder (ignored once the run has its own checkpoint)")
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
    export_buffer: int = _opt(1000, "images of the replay buffer saved beside the export (uint8; 1,000 are 3 MB at "
                              "32 px): a run continued from the export keeps its chains, and samplers may start "
                              "from them (0: none)")
    progress: bool = _opt(True, "show a tqdm progress bar")
    tensorboard: bool = _opt(True, "also log to TensorBoard (out/tb) when it is installed")
    inject_nan_at: tuple[int, ...] = _opt((), "testing aid: make the loss NaN once at these iterations")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
