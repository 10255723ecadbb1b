"""The fast path computes the same function as the plain path (CPU)."""
import contextlib
import copy

import pytest
import torch

from clel import CLEL, energy, get_preset
from clel.fast import FastPath, cpu_has_bf16, fast_sgld, frozen_spectral_norm, prepare, wrap_energy
from clel.sgld import sgld

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
    assert FastPath.plain() == FastPath(False, False, False, False)
