"""The fast path for SGLD chains: same function as the plain path, less overhead.

Each switch is independent and tested on CPU against the plain path
(``tests/test_fast.py``); ``measure/bench.py`` measures them side by side.

- ``cache_sn``: the EBM's weights do not change inside a chain, so the
  spectral-normalised weights are computed once and reused for every step
  (otherwise every forward repeats the power iteration and the division).
- ``channels_last``: NHWC activations, which cuDNN and oneDNN convolve faster; with it, the encoder's 3x3
  convolutions on small maps train through a GEMM on CPU (:class:`SmallMapConv2d`).
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
import torch.nn.functional as F
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

    By default glibc maps large allocations fresh from the OS and hands freed ones back (its thresholds adapt as
    it goes, but not far enough), so SGLD steps keep page-faulting their activations in again (the kernel zeroes
    every page): a 10-step cifar10-small chain at batch 64 in a fresh process took 156k page faults and a fifth
    of its CPU time in the kernel; a training iteration 65k. Raising the mmap threshold to its
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


def _patches(x: Tensor) -> Tensor:
    """The 3x3 neighbourhoods of ``x`` [N, C, H, W] (zero-padded) as rows [N·H·W, 9·C], ordered (ky, kx, c)."""
    n, c, h, w = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    return torch.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], dim=3).reshape(n * h * w, 9 * c)


class _SmallMapConvFn(torch.autograd.Function):
    """A 3x3, stride-1, padding-1 convolution without bias whose backward is two plain matrix products' worth.

    On small maps (the encoder's 4x4 stage: 512 channels, 16 positions) oneDNN's bf16 weight gradient runs at a
    fraction of its forward's speed (108 ms against 18 ms at batch 128 here); as one GEMM over the patches it
    takes 26 ms, and the input gradient as the forward convolution with the flipped, transposed kernel, the
    forward's time. Same sums, other order: within bf16 rounding of oneDNN's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.dtypes = (x.dtype, weight.dtype)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(xc, wc, padding=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xc, wc = ctx.saved_tensors
        grad = grad.to(xc.dtype)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            flipped = wc.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last)
            gx = F.conv2d(grad.contiguous(memory_format=torch.channels_last), flipped, padding=1).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            cout, cin = wc.shape[:2]
            rows = grad.permute(0, 2, 3, 1).reshape(-1, cout)  # [N·H·W, Cout]
            gw = (rows.t() @ _patches(xc)).view(cout, 3, 3, cin).permute(0, 3, 1, 2).to(ctx.dtypes[1])
        return gx, gw


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (3x3, stride 1, padding 1, no bias) that trains on small CPU maps through
    :class:`_SmallMapConvFn`; elsewhere (larger maps, no gradient, GPU) the plain convolution."""

    max_positions = 16  # 4x4: the GEMM wins 4x there, about breaks even at 8x8 and loses above

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (x.device.type == "cpu" and torch.is_grad_enabled() and x.shape[-1] * x.shape[-2] <= self.max_positions
                and (x.requires_grad or weight.requires_grad)):
            return _SmallMapConvFn.apply(x, weight)
        return super()._conv_forward(x, weight, bias)


def _small_map_candidate(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.bias is None and m.padding_mode == "zeros"
            and not parametrize.is_parametrized(m))


def prepare(module: nn.Module, fast: FastPath) -> nn.Module:
    """One-off model preparation for the chosen switches: channels_last, and with it the small-map convolutions
    of :class:`SmallMapConv2d` (the same modules and weights, so state dicts do not change)."""
    if fast.channels_last:
        module.to(memory_format=torch.channels_last)
        for m in module.modules():
            if _small_map_candidate(m):
                m.__class__ = SmallMapConv2d
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
