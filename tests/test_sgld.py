"""SGLD on analytic energies, the replay buffer and the strong augmentation."""
import math

import pytest
import torch

from clel import ReplayBuffer, sgld, sgld_chain
from clel.augment import StrongAugment

pytestmark = pytest.mark.pinned  # numbers that CPU kernels could move: CI runs these under AVX2 too

MU, SIGMA = 0.5, 0.05  # a Gaussian well inside [0, 1], so the pixel clamp never bites


def quadratic(x):
    return 0.5 * ((x - MU) ** 2).flatten(1).sum(1) / SIGMA**2


@pytest.mark.parametrize("step_size", [1e-4, 5e-4, 2e-3])
def test_converges_to_the_minimum_without_noise(step_size):
    x0 = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = int(10 * SIGMA**2 / step_size) + 1  # ten time constants of the linear contraction
    x = sgld(quadratic, x0, steps=steps, step_size=step_size, noise=0.0, grad_clip=None)
    assert (x - MU).abs().max() < 1e-3
    energies = [s.energy.mean().item() for s in sgld_chain(quadratic, x0, steps=20, step_size=step_size, noise=0.0,
                                                            grad_clip=None)]
    assert all(b <= a for a, b in zip(energies, energies[1:]))  # gradient descent never goes uphill


@pytest.mark.parametrize("step_size", [2.5e-5, 1e-4])
def test_matched_noise_samples_the_gaussian(step_size):
    """With noise √(2η) the chain is an AR(1) process; its stationary law is known exactly."""
    a = 1 - step_size / SIGMA**2
    var_exact = 2 * step_size / (1 - a * a)  # → σ² as η → 0
    g = torch.Generator().manual_seed(1)
    x0 = MU + SIGMA * torch.randn(4096, 1, 1, 1, generator=g)
    x = sgld(quadratic, x0, steps=400, step_size=step_size, noise=math.sqrt(2 * step_size), grad_clip=None, generator=g)
    se_mean = math.sqrt(var_exact / x.numel())
    assert abs(x.mean().item() - MU) < 4 * se_mean
    assert x.var().item() == pytest.approx(var_exact, rel=4 * math.sqrt(2 / x.numel()))
    assert var_exact == pytest.approx(SIGMA**2, rel=0.03)


def test_pixel_clamp_is_honoured():
    push_up = lambda x: -1e3 * x.flatten(1).sum(1)  # noqa: E731
    chain = list(sgld_chain(push_up, torch.rand(8, 3, 4, 4), steps=3, step_size=1.0, noise=0.5))
    for s in chain:
        assert s.x.min() >= 0 and s.x.max() <= 1
    assert torch.all(chain[-1].x == 1)


@pytest.mark.parametrize("clip", [1e-3, 0.5, None])
def test_gradient_clip_bounds_the_step(clip):
    steep = lambda x: 1e4 * (x - 0.5).flatten(1).sum(1)  # noqa: E731  gradient 1e4 everywhere
    x0 = torch.full((2, 3, 2, 2), 0.5)
    x = sgld(steep, x0, steps=1, step_size=1e-5, noise=0.0, grad_clip=clip)
    want = 0.5 - 1e-5 * (1e4 if clip is None else min(clip, 1e4))
    assert torch.allclose(x, torch.full_like(x, want), atol=1e-7)


def test_chain_is_reproducible_and_parameters_get_no_gradient():
    w = torch.nn.Parameter(torch.tensor(3.0))
    fn = lambda x: w * (x**2).flatten(1).sum(1)  # noqa: E731
    x0 = torch.rand(4, 3, 4, 4)
    a = sgld(fn, x0, steps=5, step_size=0.01, generator=torch.Generator().manual_seed(5))
    b = sgld(fn, x0, steps=5, step_size=0.01, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not a.requires_grad and w.grad is None
    assert not torch.equal(x0, a)  # the input is not modified in place either
    assert torch.equal(x0, x0.clone())


def test_replay_buffer_reinit_rate():
    buf = ReplayBuffer(100, (1,), reinit_prob=0.001, generator=torch.Generator().manual_seed(0))
    buf.images.fill_(2.0)  # a value fresh noise can never take
    x, idx = buf.sample(100_000)
    rate = (x < 1.5).float().mean().item()
    sigma = math.sqrt(0.001 * 0.999 / 100_000)
    assert abs(rate - 0.001) < 3 * sigma
    assert idx.min() >= 0 and idx.max() < 100


def test_replay_buffer_push_writes_back_detached():
    buf = ReplayBuffer(10, (3, 2, 2), reinit_prob=0.0)
    x, idx = buf.sample(4)
    assert torch.equal(x, buf.images[idx])
    y = (x * torch.nn.Parameter(torch.tensor(0.5))).clamp(0, 1)
    buf.push(y, idx)
    assert not buf.images.requires_grad and buf.images.grad_fn is None
    assert torch.equal(buf.images[idx[-1]], y[-1].detach())
    # uint8 checkpoints of the buffer load back as [0, 1] floats.
    state = {"images": (buf.images * 255).round().to(torch.uint8)}
    other = ReplayBuffer(10, (3, 2, 2))
    other.load_state_dict(state)
    assert (other.images - buf.images).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="does not match"):
        ReplayBuffer(5, (3, 2, 2)).load_state_dict(state)


def test_augmentation_is_per_sample_and_in_range():
    aug = StrongAugment(32)
    one = torch.rand(1, 3, 32, 32)
    out = aug(one.expand(16, -1, -1, -1).contiguous())
    assert out.shape == (16, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    flat = out.flatten(1)
    distinct = {tuple(v.tolist()) for v in (flat * 1e4).round().int()}
    assert len(distinct) == 16  # every sample got its own crop / jitter
    assert not aug(one.requires_grad_()).requires_grad


def test_replay_buffer_batch_slots_are_distinct():
    buf = ReplayBuffer(100, (1,), generator=torch.Generator().manual_seed(3))
    _, idx = buf.sample(100)
    assert sorted(idx.tolist()) == list(range(100))
