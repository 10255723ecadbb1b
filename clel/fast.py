"""The fast path for SGLD chains: same function as the plain path, less overhead.

Each switch is independent and tested on CPU against the plain path
(``tests/test_fast.py``); ``scripts/bench.py`` measures them side by side.

- ``cache_sn``: the EBM's weights do not change inside a chain, so the
  spectral-normalised weights are computed once and reused for every step
  (otherwise every forward repeats the power iteration and the division).
- ``channels_last``: NHWC activations, which cuDNN and oneDNN convolve faster.
- ``bf16``: autocast of the energy network only; x, the update and the noise
  stay fp32 because the noise (1e-3) is below bf16's resolution near 1. On by
  default on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX),
  where oneDNN's bf16 convolutions are about twice as fast as fp32.
- ``cuda_graph``: one SGLD step captured as a CUDA graph and replayed, which
  removes the per-kernel launch cost that dominates small batches (CUDA only).
- ``reuse_memory``: glibc keeps freed activations for reuse instead of handing
  them back to the OS after every step (CPU only; see :func:`reuse_freed_memory`).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .sgld import EnergyFn, SGLDStep, langevin_step, sgld_chain


@dataclass
class FastPath:
    cache_sn: bool = True
    channels_last: bool = True
    bf16: bool = False
    cuda_graph: bool = False
    reuse_memory: bool = True

    @classmethod
    def plain(cls) -> "FastPath":
        return cls(cache_sn=False, channels_last=False, bf16=False, cuda_graph=False, reuse_memory=False)

    @classmethod
    def best(cls, device: torch.device | str) -> "FastPath":
        """Every switch that helps on this device (graphs only on CUDA; bf16 where it is native)."""
        device = torch.device(device)
        cuda = device.type == "cuda"
        return cls(cache_sn=True, channels_last=True, bf16=native_bf16(device), cuda_graph=cuda)


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX); without it bf16 is emulated, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=None)
def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to 32 MB in glibc's heap instead of returning them to the OS; True if applied.

    By default glibc maps every large allocation fresh from the OS and unmaps it on free, so each SGLD step
    page-faults all of its activations in again (the kernel zeroes every page): a 10-step cifar10-small chain at
    batch 64 took 156k page faults and a fifth of its CPU time in the kernel. Raising the mmap threshold to its
    maximum and the trim threshold to 1 GB lets the next step reuse the same blocks. Process-wide and for good;
    peak memory is unchanged, but memory freed after a peak stays with the process. No-op outside glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's own symbol: musl and others have other mallopt semantics
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def native_bf16(device: torch.device | str) -> bool:
    """bf16 autocast pays off here: a CUDA GPU with bf16 support, or a CPU with native bf16."""
    device = torch.device(device)
    if device.type == "cuda":  # every GPU since Ampere; older ones are told apart once one is visible
        return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


@contextlib.contextmanager
def frozen_spectral_norm(module: nn.Module) -> Iterator[None]:
    """Inside this block every parametrised weight of ``module`` is computed once.

    The cache is filled under no_grad, so the cached weights carry no autograd
    graph: input gradients flow through them, parameter gradients do not (which
    is all SGLD needs). Use it only where the parameters do not change.
    """
    with parametrize.cached():
        with torch.no_grad():
            for m in module.modules():
                if parametrize.is_parametrized(m):
                    for name in m.parametrizations:
                        getattr(m, name)
        yield


def prepare(module: nn.Module, fast: FastPath) -> nn.Module:
    """One-off model preparation (memory format) for the chosen switches."""
    if fast.channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def wrap_energy(fn: EnergyFn, fast: FastPath, device: torch.device | str) -> EnergyFn:
    """The energy in the chain's precision and memory format; energies come back fp32."""
    kind = torch.device(device).type

    def wrapped(x: Tensor) -> Tensor:
        if fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if fast.bf16:
            with torch.autocast(kind, dtype=torch.bfloat16):
                return fn(x).float()
        return fn(x)

    return wrapped


def graphed_chain(fn: EnergyFn, x: Tensor, steps: int, step_size: float, noise: float,
                  grad_clip: float | None) -> Iterator[SGLDStep]:
    """SGLD with one step captured as a CUDA graph; same update as ``sgld_chain``.

    Noise comes from the default CUDA generator (graph-safe); the yielded tensors
    are views of static buffers, valid until the next step.
    """
    static_x = x.detach().clone().requires_grad_(True)

    def step() -> tuple[Tensor, Tensor]:
        return langevin_step(fn, static_x, step_size, noise, grad_clip)

    # Warm up on a side stream (cuDNN autotuning, allocator) before capture, as CUDA graphs require.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_e = step()
    for i in range(steps):
        graph.replay()
        with torch.no_grad():
            static_x.copy_(static_out)
        yield SGLDStep(i, static_x.detach(), static_e)


def fast_chain(model: nn.Module, fn: EnergyFn, x: Tensor, steps: int, step_size: float, noise: float,
               grad_clip: float | None, fast: FastPath, generator: torch.Generator | None = None,
               ) -> Iterator[SGLDStep]:
    """``sgld_chain`` on ``fn`` with the fast-path switches applied around ``model``'s EBM."""
    device = x.device
    if fast.reuse_memory and device.type == "cpu":
        reuse_freed_memory()
    efn = wrap_energy(fn, fast, device)
    with frozen_spectral_norm(model) if fast.cache_sn else contextlib.nullcontext():
        if fast.cuda_graph and device.type == "cuda":
            yield from graphed_chain(efn, x, steps, step_size, noise, grad_clip)
        else:
            yield from sgld_chain(efn, x, steps, step_size, noise, grad_clip, generator)


def fast_sgld(model: nn.Module, fn: EnergyFn, x: Tensor, steps: int, step_size: float, noise: float,
              grad_clip: float | None, fast: FastPath, generator: torch.Generator | None = None) -> Tensor:
    """Final samples of ``fast_chain``."""
    out = x
    for s in fast_chain(model, fn, x, steps, step_size, noise, grad_clip, fast, generator):
        out = s.x
    return out.detach().clone().contiguous()


def set_precision(precision: str, device: torch.device, error: type[Exception] = ValueError) -> None:
    """fp32 (strict), tf32 (TF32 matmuls/convs on CUDA) or bf16 (refused where it is not native)."""
    if precision == "bf16" and not native_bf16(device):
        raise error(f"--precision bf16 needs a CUDA GPU or a CPU with native bf16 (AVX512-BF16 or AMX); "
                         f"this {device.type} has none, use fp32")
    tf32 = precision == "tf32"
    if device.type == "cuda":
        matmul = torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; mixing with the legacy flags raises
            matmul.fp32_precision = "tf32" if tf32 else "ieee"
            torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
        else:
            matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
