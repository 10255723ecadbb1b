"""The energies against hand computation, and the Monte-Carlo argument for the marginal."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special

from clel import (CLEL, CLELConfig, class_prototypes, compositional_energy, conditional_energy, energy, joint_energy,
                  latent, mean_latent, ood_score)
from clel.energy import bounded

pytestmark = pytest.mark.pinned  # numbers that CPU kernels could move: CI runs these under AVX2 too


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLEL(CLELConfig(arch="tiny", head_hidden=32, encoder_hidden=32, feature_dim=8)).eval()


@pytest.fixture
def x():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_marginal_is_half_squared_norm(model, x):
    fx = model.f(x)
    assert torch.allclose(energy(model, x), 0.5 * (fx**2).sum(1))


@pytest.mark.parametrize("beta", [0.01, 0.1, 3.0])
def test_joint_minus_marginal_is_minus_beta_cosine(model, x, beta):
    z = F.normalize(torch.randn(6, 8), dim=1)
    cos = F.cosine_similarity(model.g(model.f(x)), z, dim=1)
    diff = joint_energy(model, x, z, beta) - energy(model, x)
    assert torch.allclose(diff, -beta * cos, atol=1e-6)
    # A single z broadcasts over the batch.
    assert torch.allclose(joint_energy(model, x, z[0], beta), joint_energy(model, x, z[:1].expand(6, -1), beta))


def log_sphere_partition(beta: float, d: int) -> float:
    """log E_z[exp(β z₁)] for z uniform on S^{d-1}: z₁ has density ∝ (1 − t²)^{(d−3)/2}."""
    w = lambda t: (1 - t * t) ** ((d - 3) / 2)  # noqa: E731
    num, _ = integrate.quad(lambda t: math.exp(beta * t) * w(t), -1, 1)
    den, _ = integrate.quad(w, -1, 1)
    return math.log(num / den)


def test_latent_integral_does_not_depend_on_x(model, x):
    """log ∫ exp(β cos(g(f(x)), z)) dz is the same for every x: the marginal of the joint is ½‖f‖²."""
    beta, d, n = 2.0, 8, 400_000
    z = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64), dim=1)
    gfx = F.normalize(model.g(model.f(x)).detach().double(), dim=1)
    w = torch.exp(beta * gfx @ z.T)  # [6, n]
    log_mean = torch.log(w.mean(1))
    se = (w.std(1) / math.sqrt(n) / w.mean(1))  # standard error of the log-mean (delta method)
    exact = log_sphere_partition(beta, d)
    assert torch.all((log_mean - exact).abs() < 4 * se), (log_mean, exact, se)
    # And the spread across x is MC noise, far below what a direction-dependent integral would show.
    assert float(log_mean.max() - log_mean.min()) < 8 * float(se.max())
    # Sanity of the closed form: for d = 3 the integral is sinh(β)/β.
    assert log_sphere_partition(beta, 3) == pytest.approx(math.log(math.sinh(beta) / beta), rel=1e-8)
    # Cross-check d = 8 against the Bessel form Γ(d/2)(2/β)^{d/2-1} I_{d/2-1}(β).
    bessel = special.gamma(d / 2) * (2 / beta) ** (d / 2 - 1) * special.iv(d / 2 - 1, beta)
    assert exact == pytest.approx(math.log(bessel), rel=1e-8)


def test_compositional_energy_by_hand(model, x):
    lat = F.normalize(torch.randn(3, 8), dim=1)
    weights = [1.0, -0.5, 2.0]
    fx = model.f(x)
    gfx = model.g(fx)
    cos = torch.stack([F.cosine_similarity(gfx, lat[a].expand_as(gfx), dim=1) for a in range(3)], 1)
    want = 0.5 * (fx**2).sum(1) - 0.7 * (cos * torch.tensor(weights)).sum(1)
    assert torch.allclose(compositional_energy(model, x, lat, weights, guidance=0.7), want, atol=1e-6)


def test_single_concept_is_conditional_energy_and_not_flips_the_sign(model, x):
    z = F.normalize(torch.randn(8), dim=0)
    e_and = compositional_energy(model, x, z[None], [1.0], guidance=0.5)
    e_not = compositional_energy(model, x, z[None], [-1.0], guidance=0.5)
    assert torch.allclose(e_and, conditional_energy(model, x, z, guidance=0.5), atol=1e-6)
    # AND and NOT sit symmetrically around the marginal.
    assert torch.allclose((e_and + e_not) / 2, energy(model, x), atol=1e-6)


def test_compositional_energy_rejects_mismatched_weights(model, x):
    with pytest.raises(ValueError, match="one weight per concept"):
        compositional_energy(model, x, torch.randn(2, 8), [1.0], guidance=1.0)


def test_mean_latent_and_prototypes():
    z = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=1)
    assert torch.allclose(mean_latent(z[:2]), torch.tensor([1, 1, 0]) / math.sqrt(2))
    protos = class_prototypes(z, torch.tensor([0, 1, 0, 1]), 2)
    assert torch.allclose(protos[0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(protos[1], torch.tensor([0, 1.0, 1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="no samples for classes"):
        class_prototypes(z, torch.tensor([0, 0, 0, 0]), 3)


def test_ood_score_is_joint_energy_with_own_latent(model, x):
    z = F.normalize(model.h(x), dim=1)
    assert torch.allclose(latent(model, x), z)
    assert torch.allclose(ood_score(model, x, beta=0.1), joint_energy(model, x, z, 0.1), atol=1e-6)
    assert not ood_score(model, x).requires_grad


def test_ood_scores_returns_score_and_marginal(model, x):
    from clel.energy import ood_scores
    s, e = ood_scores(model, x, beta=0.3)
    assert torch.allclose(s, ood_score(model, x, beta=0.3)) and torch.allclose(e, energy(model, x))


def test_contrast_direction_is_the_normalised_difference_of_means():
    from clel.energy import class_contrasts, contrast_direction

    # Hand-computed: with = (1,0) and (0,1) -> mean (.5,.5); without = (1,0) -> difference (-.5,.5).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    d = contrast_direction(z, torch.tensor([True, True, False]))
    torch.testing.assert_close(d, torch.tensor([-1.0, 1.0]) / 2 ** 0.5)
    # Two concepts that share a large common part: their means are nearly parallel, their contrasts opposite.
    common = torch.tensor([10.0, 0.0, 0.0])
    z = torch.stack([common + torch.tensor([0.0, 1.0, 0.0]), common + torch.tensor([0.0, 0.0, 1.0])] * 4)
    mask = torch.tensor([True, False] * 4)
    a, b = contrast_direction(z, mask), contrast_direction(z, ~mask)
    assert torch.dot(a, b) < -0.99
    assert torch.dot(F.normalize(z[mask].sum(0), dim=0), F.normalize(z[~mask].sum(0), dim=0)) > 0.98
    # Classes: class mean minus the mean of all images.
    labels = torch.tensor([0, 1] * 4)
    torch.testing.assert_close(class_contrasts(z, labels, 2), torch.stack([a, b]))
    with pytest.raises(ValueError, match="with and without"):
        contrast_direction(z, torch.ones(8, dtype=torch.bool))


def test_bound_caps_the_latent_pull_at_a_multiple_of_the_marginal_and_keeps_the_value(model, x):
    z = F.normalize(torch.randn(1, model.cfg.feature_dim, generator=torch.Generator().manual_seed(5)), dim=1)

    def parts(guidance, bound):
        fx = model.f(x).detach().requires_grad_(True)
        gfx = F.normalize(model.g(bounded(fx, bound)), dim=1)
        lat = -guidance * (gfx @ z.T).sum(1)
        (g_lat,) = torch.autograd.grad(lat.sum(), fx)
        return lat.detach(), g_lat, fx.detach().norm(dim=1)

    free_val, free_grad, fnorm = parts(1e4, None)
    val, grad, _ = parts(1e4, 2.0)
    assert torch.equal(val, free_val)  # the energy is the same; only its gradient is capped
    assert (free_grad.norm(dim=1) > 2.0 * fnorm).all()  # a strong guidance outpulls the marginal ...
    assert torch.allclose(grad.norm(dim=1), 2.0 * fnorm, rtol=1e-4)  # ... and is capped at 2x it
    assert torch.allclose(F.normalize(grad, dim=1), F.normalize(free_grad, dim=1), atol=1e-5)  # same direction
    unit = parts(1.0, None)[1].norm(dim=1)
    weak = float((fnorm / unit).min())  # the guidance at which every sample pulls at most 1x the marginal
    assert torch.equal(parts(weak, 2.0)[1], parts(weak, None)[1])  # under the cap: untouched


def test_compositional_energy_bound_changes_the_gradient_not_the_energy(model, x):
    lat = F.normalize(torch.randn(2, model.cfg.feature_dim, generator=torch.Generator().manual_seed(6)), dim=1)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    free = compositional_energy(model, xs[0], lat, [1.0, -1.0], 1e3)
    capped = compositional_energy(model, xs[1], lat, [1.0, -1.0], 1e3, bound=1.0)
    assert torch.allclose(free, capped)
    g_free, g_cap = (torch.autograd.grad(e.sum(), xi)[0] for e, xi in ((free, xs[0]), (capped, xs[1])))
    assert (g_cap.flatten(1).norm(dim=1) < 0.5 * g_free.flatten(1).norm(dim=1)).all()
