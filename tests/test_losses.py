"""L_EBM and NT-Xent against hand-written references, and the stop-gradients of Algorithm 1."""
import math

import pytest
import torch
import torch.nn.functional as F

from clel import CLEL, CLELConfig, EBMLoss, NTXentLoss, energy
from clel.energy import latent_cosine


def ntxent_reference(z1, z2, negatives, tau):
    """Eq. (4) written as loops: anchor, its positive, other samples' views and the extra negatives."""
    n = z1.shape[0]
    views = [F.normalize(z1, dim=1), F.normalize(z2, dim=1)]
    extra = [] if negatives is None else list(F.normalize(negatives, dim=1))
    sim = lambda a, b: float(a @ b) / tau  # noqa: E731
    total = 0.0
    for i in range(n):
        for j in range(2):
            a, pos = views[j][i], views[1 - j][i]
            negs = [views[l][k] for k in range(n) if k != i for l in range(2)] + extra
            num = math.exp(sim(a, pos))
            den = num + sum(math.exp(sim(a, b)) for b in negs)
            total += -math.log(num / den)
    return total / (2 * n)


def simclr_reference(z1, z2, tau):
    """The usual SimCLR implementation: positives on the off-diagonals of the 2n x 2n matrix."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    pos = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)])
    mask = ~torch.eye(2 * n, dtype=torch.bool)
    neg = sim[mask].view(2 * n, 2 * n - 1)
    return (-pos + torch.logsumexp(neg, dim=1)).mean()


@pytest.mark.parametrize("n,m,d,tau", [(4, 4, 8, 0.2), (6, 3, 16, 0.5), (3, 10, 5, 0.1)])
def test_ntxent_with_extra_negatives_matches_reference(n, m, d, tau):
    g = torch.Generator().manual_seed(n * 100 + m)
    z1, z2, neg = (torch.randn(k, d, generator=g, dtype=torch.float64) for k in (n, n, m))
    got = NTXentLoss(tau)(z1, z2, neg)
    assert got.item() == pytest.approx(ntxent_reference(z1, z2, neg, tau), abs=1e-6)


def test_ntxent_without_negatives_is_simclr():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss = NTXentLoss(0.2)
    assert loss(z1, z2).item() == pytest.approx(simclr_reference(z1, z2, 0.2).item(), abs=1e-6)
    assert loss(z1, z2).item() == pytest.approx(ntxent_reference(z1.double(), z2.double(), None, 0.2), abs=1e-5)
    # Extra negatives can only make the task harder.
    assert loss(z1, z2, torch.randn(8, 16, generator=g)).item() > loss(z1, z2).item()


def test_ebm_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(2)
    f_pos, f_neg, g_pos, z = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    loss, stats = EBMLoss(alpha=0.5, beta=0.3)(f_pos, f_neg, g_pos, F.normalize(z, dim=1))
    e_pos, e_neg = 0.5 * (f_pos**2).sum(1), 0.5 * (f_neg**2).sum(1)
    cos = (F.normalize(g_pos, dim=1) * F.normalize(z, dim=1)).sum(1)
    want = (e_pos - e_neg).mean() + 0.5 * (e_pos**2 + e_neg**2).mean() - 0.3 * cos.mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-9)
    assert stats["e_pos"].item() == pytest.approx(e_pos.mean().item())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return CLEL(CLELConfig(arch="tiny", head_hidden=32, encoder_hidden=32, feature_dim=16))


def _grads(module):
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_le_loss_sends_no_gradient_to_ebm_through_negatives(tiny_model):
    m = tiny_model
    m.zero_grad(set_to_none=True)
    x_pos, x_neg = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    negatives = m.g(m.f(x_neg))  # not detached by the caller: the loss must cut it
    NTXentLoss(0.2)(m.h(x_pos), m.h(x_pos.flip(-1)), negatives).backward()
    assert _grads(m.f) == [] and _grads(m.g) == []
    assert len(_grads(m.h)) > 0


def test_ebm_loss_sends_no_gradient_to_encoder_through_target(tiny_model):
    m = tiny_model
    m.zero_grad(set_to_none=True)
    x_pos, x_neg = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    f_pos, f_neg = m.f(x_pos), m.f(x_neg)
    z_pos = F.normalize(m.h(x_pos), dim=1)  # not detached by the caller
    loss, _ = EBMLoss(beta=1.0)(f_pos, f_neg, m.g(f_pos), z_pos)
    loss.backward()
    assert _grads(m.h) == []
    assert len(_grads(m.f)) > 0 and len(_grads(m.g)) > 0


def test_ebm_loss_cosine_term_is_the_joint_energy_gap(tiny_model):
    m = tiny_model.eval()
    x = torch.rand(3, 3, 32, 32)
    z = F.normalize(torch.randn(3, 16), dim=1)
    fx = m.f(x)
    assert torch.allclose(latent_cosine(m, fx, z), F.cosine_similarity(m.g(fx), z, dim=1))
    assert torch.allclose(energy(m, x), 0.5 * fx.pow(2).sum(1))
