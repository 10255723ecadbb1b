"""The fast path computes the same function as the plain path (CPU)."""
import contextlib
import copy

import pytest
import torch

from clel import CLEL, energy, get_preset
from clel.fast import FastPath, fast_sgld, frozen_spectral_norm, prepare, wrap_energy
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


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_sixty_step_chain_matches_plain(models, mode):
    plain, other = models
    for m in (plain, other):
        m.train(mode == "train")
    fast = FastPath(cache_sn=True, channels_last=True)
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
    assert FastPath.best("cpu") == FastPath(cache_sn=True, channels_last=True, bf16=False, cuda_graph=False)
    assert FastPath.best("cuda").cuda_graph and FastPath.best("cuda").bf16
    assert FastPath.plain() == FastPath(False, False, False, False)
