"""The distributed plumbing of training and evaluation in one place (torchrun environment, gathers)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from .runtime import pick_device


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(world, rank, device) of this process; starts the process group under torchrun (NCCL on GPUs, else gloo).

    ``device``: cpu, cuda or auto. Raises ValueError for cuda without a GPU.
    """
    rank, world, local = dist_info()
    want = pick_device(device).type
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA device is available (use --device cpu)")
    dev = torch.device("cuda", local) if want == "cuda" else torch.device("cpu")
    if want == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want == "cuda" else "gloo")
    return world, rank, dev


def gather_keep_grad(t: Tensor, world: int, rank: int) -> Tensor:
    """Concatenate ``t`` from every rank; only the local slice carries gradient."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank] = t
    return torch.cat(parts)


def mean_over_ranks(stats: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The average of a dict of numbers over all ranks (itself when alone)."""
    if world == 1:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / world for k, v in zip(keys, t.tolist())}


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
