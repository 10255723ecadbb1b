"""Architecture facts from SPEC: parameter counts, spectral norm, initialisation, shapes."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from clel import CLEL, CLELConfig, count_parameters, get_preset
from clel.models import EBM, Encoder, build_projection


@pytest.mark.parametrize("arch,want", [("small", 1_730_000), ("base", 6_955_648), ("large", 30_700_000)])
def test_parameter_counts_f_and_g(arch, want):
    cfg = CLELConfig(arch=arch)
    n = count_parameters(EBM(cfg)) + count_parameters(build_projection(cfg))
    assert abs(n - want) / want < 0.01
    if arch == "base":
        assert n == 6_955_648


def test_encoder_size():
    assert abs(count_parameters(Encoder(CLELConfig())) - 12_480_000) / 12_480_000 < 0.01


@pytest.mark.parametrize("arch,size", [("small", 32), ("base", 64), ("large", 32)])
def test_f_shape(arch, size):
    f = EBM(CLELConfig(arch=arch, image_size=size)).eval()
    assert f(torch.rand(2, 3, size, size)).shape == (2, 128)


def test_spectral_norm_on_every_conv_and_no_linear():
    m = CLEL(CLELConfig(arch="small"))
    convs = [mod for mod in m.f.modules() if isinstance(mod, nn.Conv2d)]
    linears = [mod for mod in list(m.f.modules()) + list(m.g.modules()) if isinstance(mod, nn.Linear)]
    assert len(convs) == 1 + 4 * 2 + 1  # stem, two per block, one shortcut
    assert all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert linears and not any(parametrize.is_parametrized(lin) for lin in linears)
    # The encoder is an ordinary ResNet: no spectral norm there.
    assert not any(parametrize.is_parametrized(c) for c in m.h.modules() if isinstance(c, nn.Conv2d))


def test_spectral_norm_bounds_each_conv():
    f = EBM(CLELConfig(arch="small")).train()
    x = torch.rand(2, 3, 32, 32)
    for _ in range(30):  # a few power iterations converge u, v
        f(x)
    f.eval()
    for c in (mod for mod in f.modules() if isinstance(mod, nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(c.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, rel=0.05)


def test_initialisation():
    m = CLEL(CLELConfig(arch="base"))
    first = m.f.head[0]
    assert first.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(first.bias == 0)
    g0 = m.g[0]
    assert g0.bias is None and g0.weight.std().item() == pytest.approx(0.01, rel=0.05)
    stem = m.f.trunks[0].layers[0]
    w = stem.parametrizations.weight.original
    assert w.std().item() == pytest.approx((1 / 27) ** 0.5, rel=0.15)  # Kaiming fan_in, linear gain
    assert torch.all(stem.bias == 0)


def test_inputs_are_normalised_inside():
    cfg = CLELConfig(arch="tiny")
    m = CLEL(cfg)
    x = torch.tensor(cfg.mean).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert torch.allclose(m.f.normalize(x), torch.zeros(1, 3, 8, 8), atol=1e-6)


def test_projection_variants():
    assert isinstance(build_projection(CLELConfig(projection="identity")), nn.Identity)
    assert count_parameters(build_projection(CLELConfig(projection="linear"))) == 128 * 128
    with pytest.raises(ValueError, match="unknown projection"):
        CLELConfig(projection="deep")


def test_presets_and_config_round_trip():
    cfg = get_preset("cifar10-large")
    assert cfg.contrastive_batch_size == 256 and cfg.arch == "large"
    assert cfg.ema_decay == pytest.approx(0.99778, abs=1e-5)
    assert CLELConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("cifar11")
    with pytest.raises(ValueError, match="unknown config keys"):
        CLELConfig.from_dict({"archh": "small"})
