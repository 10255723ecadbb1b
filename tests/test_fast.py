"""The fast path computes the same function as the plain path (CPU)."""
import contextlib
import copy
import subprocess
import sys

import pytest
import torch

from clel import CLEL, energy, get_preset
from clel.fast import FastPath, cpu_has_bf16, fast_sgld, frozen_spectral_norm, prepare, wrap_energy
from clel.models import avg_pool
from clel.sgld import sgld

pytestmark = pytest.mark.pinned  # numbers that CPU kernels could move: CI runs these under AVX2 too

SWITCHES = [FastPath(cache_sn=True, channels_last=False), FastPath(cache_sn=False, channels_last=True),
            FastPath(cache_sn=True, channels_last=True)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain = CLEL(get_preset("cifar10-small"))
    return plain, copy.deepcopy(plain)


def energy_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    e = fn(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


@pytest.mark.parametrize("fast", SWITCHES, ids=["cache_sn", "channels_last", "both"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_energy_and_input_gradient_match(models, fast, mode):
    plain, other = models
    plain.train(mode == "train")
    other.train(mode == "train")
    prepare(other.f, fast)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    e0, g0 = energy_and_grad(lambda y: energy(plain, y), x)
    fn = wrap_energy(lambda y: energy(other, y), fast, "cpu")
    with frozen_spectral_norm(other.f) if fast.cache_sn else contextlib.nullcontext():
        e1, g1 = energy_and_grad(fn, x)
    # Same weights, same u/v start: differences are float rounding only.
    assert torch.allclose(e0, e1, rtol=1e-4, atol=1e-7)
    assert torch.allclose(g0, g1, rtol=1e-3, atol=1e-3 * g0.abs().max().item())
    other.f.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bf16_energy_network_matches_fp32_within_bf16_rounding(models, mode):
    """bf16 autocast covers the network only: energies and input gradients stay within bf16's ~3 digits."""
    plain, other = models
    plain.train(mode == "train")
    other.train(mode == "train")
    fast = FastPath(cache_sn=True, channels_last=True, bf16=True)
    prepare(other.f, fast)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    e0, g0 = energy_and_grad(lambda y: energy(plain, y), x)
    with frozen_spectral_norm(other.f):
        e1, g1 = energy_and_grad(wrap_energy(lambda y: energy(other, y), fast, "cpu"), x)
    assert e1.dtype == g1.dtype == torch.float32  # the chain's state stays fp32
    assert torch.allclose(e0, e1, rtol=2e-2)
    assert not torch.equal(e0, e1)  # autocast really ran in bf16
    cos = torch.nn.functional.cosine_similarity(g0.flatten(1), g1.flatten(1))
    assert cos.min() > 0.995 and (g1 - g0).norm() / g0.norm() < 0.06
    other.f.to(memory_format=torch.contiguous_format)


def test_frozen_spectral_norm_leaves_parameter_gradients_alone(models):
    plain, _ = models
    plain.train()
    x = torch.rand(4, 3, 32, 32)
    with frozen_spectral_norm(plain.f):
        e = energy(plain, x.requires_grad_(True))
        (gx,) = torch.autograd.grad(e.sum(), x)
        e2 = energy(plain, x)  # a second forward reuses the cache; no graph was freed
    assert gx.abs().sum() > 0 and torch.allclose(e, e2)
    # Outside the block, parameters train as usual.
    plain.zero_grad(set_to_none=True)
    energy(plain, x.detach()).sum().backward()
    assert plain.f.trunks[0].layers[0].parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_sixty_step_chain_matches_plain(models, mode, bf16):
    plain, other = models
    for m in (plain, other):
        m.train(mode == "train")
    fast = FastPath(cache_sn=True, channels_last=True, bf16=bf16)
    prepare(other.f, fast)
    x0 = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a = sgld(lambda y: energy(plain, y), x0, steps=60, generator=torch.Generator().manual_seed(3))
    b = fast_sgld(other, lambda y: energy(other, y), x0, 60, 100.0, 0.001, 100.0, fast,
                  generator=torch.Generator().manual_seed(3))
    moved = (a - x0).abs().mean().item()
    diff = (a - b).abs().mean().item()
    assert moved > 1e-3  # the chain really moves
    assert diff < 0.02 * moved, (diff, moved)
    other.f.to(memory_format=torch.contiguous_format)


def test_best_switches_by_device():
    assert FastPath.best("cpu") == FastPath(cache_sn=True, channels_last=True, bf16=cpu_has_bf16(), cuda_graph=False)
    assert FastPath.best("cuda").cuda_graph and FastPath.best("cuda").bf16
    assert FastPath.plain() == FastPath(False, False, False, False, reuse_memory=False)
    assert FastPath.best("cpu").reuse_memory


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k", [2, 4])
def test_avg_pool_is_avg_pool2d_forward_and_backward_bit_for_bit(k, dtype, fmt):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, 5, 16, 8, generator=g).to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
    grad_out = torch.randn(3, 5, 16 // k, 8 // k, generator=g).to(dtype)
    y_ref, y = torch.nn.functional.avg_pool2d(x, k), avg_pool(x, k)
    (g_ref,) = torch.autograd.grad(y_ref, x, grad_out)
    (g_new,) = torch.autograd.grad(y, x, grad_out)
    assert torch.equal(y, y_ref) and torch.equal(g_new, g_ref)
    assert g_new.abs().sum() > 0


def test_avg_pool_takes_the_plain_path_where_k_does_not_divide_the_size():
    x = torch.randn(2, 3, 9, 8).bfloat16().requires_grad_(True)  # 9 rows: the last one is dropped by the pool
    (g_ref,) = torch.autograd.grad(torch.nn.functional.avg_pool2d(x, 2).sum(), x)
    (g_new,) = torch.autograd.grad(avg_pool(x, 2).sum(), x)
    assert torch.equal(g_new, g_ref) and (g_new[:, :, -1] == 0).all()


def test_ebm_input_gradient_unchanged_by_the_fast_pool_in_bf16(models):
    """The whole energy network in bf16 autocast: the same input gradient with the fast pool as with avg_pool2d."""
    import clel.models as M

    plain, _ = models
    plain.eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return energy_and_grad(lambda y: energy(plain, y).float(), x)[1]

    fast = grad()
    original = M._AvgPoolFn.apply
    M._AvgPoolFn.apply = lambda t, k: torch.nn.functional.avg_pool2d(t, k)
    try:
        ref = grad()
    finally:
        M._AvgPoolFn.apply = original
    assert torch.equal(fast, ref) and fast.abs().sum() > 0


def test_reuse_freed_memory_stops_the_page_faults_of_every_step():
    """Large blocks freed by one SGLD step are handed back to the OS and faulted in again by the next; not after."""
    code = """
import resource, torch
from clel.fast import reuse_freed_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # five "steps", each with six 8 MB activations alive at once, then freed
        blocks = [torch.ones(2 << 20) for _ in range(6)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

# glibc's default adapts its thresholds as it goes, so "before" pins the no-reuse end of it: every block mapped
import ctypes
libc = ctypes.CDLL(None)
libc.mallopt(-3, 128 * 1024), libc.mallopt(-1, 128 * 1024)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
faults()
before = faults()
applied = reuse_freed_memory()
faults()
print(before, applied, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, applied, after = int(out[0]), out[1] == "True", int(out[2])
    if not applied:
        pytest.skip("not glibc")
    pages = 5 * 6 * (8 << 20) // 4096
    assert before > pages // 2, before  # mapped afresh: every page faulted in again every time
    assert after < pages // 20, (before, after)


def test_prepare_gives_only_the_encoders_small_map_convolutions_the_gemm_backward():
    from clel.fast import SmallMapConv2d

    model = CLEL(get_preset("tiny"))
    keys = list(model.state_dict())
    prepare(model, FastPath())
    swapped = {n for n, m in model.named_modules() if type(m) is SmallMapConv2d}
    assert swapped and all(n.startswith("h.backbone.") for n in swapped)  # none of f (spectral-normalised)
    for n in swapped:
        m = model.get_submodule(n)
        assert m.kernel_size == (3, 3) and m.stride == (1, 1) and m.bias is None
    assert "h.backbone.layer2.0.conv1" not in swapped  # stride 2 keeps oneDNN's
    assert list(model.state_dict()) == keys  # same modules, same weights
    assert type(copy.deepcopy(model).get_submodule(next(iter(swapped)))) is SmallMapConv2d  # the EMA copy too


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("size", [4, 8], ids=["4x4-gemm", "8x8-plain"])
def test_small_map_conv_gradients_match_the_plain_convolution(bf16, size):
    from clel.fast import SmallMapConv2d

    torch.manual_seed(0)
    plain = torch.nn.Conv2d(24, 16, 3, padding=1, bias=False)
    fast = copy.deepcopy(plain)
    fast.__class__ = SmallMapConv2d
    x = torch.randn(6, 24, size, size).contiguous(memory_format=torch.channels_last)
    g = torch.randn(6, 16, size, size)

    def grads(conv):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(xi)
        (gx, gw) = torch.autograd.grad(y, (xi, conv.weight), g.to(y.dtype))
        return y.float(), gx, gw

    for a, b in zip(grads(plain), grads(fast)):
        assert a.dtype == b.dtype and a.abs().sum() > 0
        if size == 8:  # above 16 positions: the plain convolution itself
            assert torch.equal(a, b)
        else:  # the same sums in another order: fp32 or bf16 rounding apart
            assert (a - b).norm() / a.norm() < (1e-2 if bf16 else 1e-5)
