"""Every sampling mode reproduces samples recorded in tests/fixtures/sampling_modes.safetensors.

The chains run in float64 (``python tests/test_sampling_fixtures.py --record`` writes the fixture): a guided
chain amplifies last-bit differences between CPU kernels, and in float32 the kernels a CPU picks (oneDNN with or
without AMX, AVX2 or AVX-512) moved guided samples by up to 0.03. In float64 PyTorch runs its own convolutions,
and the samples were bit-identical under ONEDNN_MAX_CPU_ISA=AVX2, AVX512_CORE and the default (docs/testing.md),
so the tolerance below is loose for rounding and still 1,000x tighter than the gap between any two modes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clel.config import get_preset
from clel.models import CLEL
from clel.sampling import ChainSettings, Condition, draw, run_chain, sample

pytestmark = pytest.mark.pinned  # numbers that CPU kernels could move: CI runs these under AVX2 too

FIXTURE = Path(__file__).parent / "fixtures" / "sampling_modes.safetensors"
N = 3
ATOL = 1e-7  # measured spread across kernels: 0; modes differ by > 1e-4


def tiny_model() -> CLEL:
    torch.manual_seed(0)
    return CLEL(get_preset("tiny")).eval().requires_grad_(False)


def tiny_extras(model: CLEL) -> dict:
    g = torch.Generator().manual_seed(1)
    d = model.cfg.feature_dim
    unit = lambda k: F.normalize(torch.randn(k, d, generator=g), dim=1)  # noqa: E731
    return {"classes": [f"c{i}" for i in range(4)], "class_prototypes": unit(4), "class_contrasts": unit(4),
            "attributes": ["Young", "Male", "Smiling"], "attribute_latents": unit(3), "attribute_contrasts": unit(3),
            "path": "tiny"}


def reference_images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)


def cases(model: CLEL) -> dict[str, torch.Tensor]:
    """Final samples of every mode, on the plain chain and on the reference sampler's sweeps."""
    ex = tiny_extras(model)
    a, b = reference_images()
    conditions = {
        "unconditional": Condition.unconditional(),
        "instance": Condition.instance(a),
        "class_mean": Condition.classes(ex, ["c2"], "mean"),
        "class_contrast": Condition.classes(ex, ["c1"], "contrast"),
        "attributes_mean": Condition.attributes(ex, [("Young", 1.0), ("Female", 1.0), ("Smiling", -1.0)], "mean"),
        "attributes_contrast": Condition.attributes(ex, [("Smiling", 1.0), ("Male", -0.5)], "contrast"),
        "interpolate": Condition.interpolate(a, b),
    }
    plain = ChainSettings(steps=3)
    sweeps = ChainSettings(steps=2, sweeps=2, augment=True, reinit_prob=0.5)
    out = {}
    for name, cond in conditions.items():
        for chain, st in (("plain", plain), ("sweeps", sweeps)):
            for guidance in (None, 0.3):
                g = torch.Generator().manual_seed(7)
                out[f"{name}/{chain}/{guidance}"] = sample(model, N, condition=cond, settings=st, guidance=guidance,
                                                           generator=g)
    # the evaluation's draw (seeds the global RNG too) and a chain's every step
    out["draw/attributes"] = draw(model, N, conditions["attributes_mean"], settings=sweeps, seed=5).x
    g = torch.Generator().manual_seed(9)
    steps = list(run_chain(model, N, condition=conditions["interpolate"], settings=plain, generator=g))
    out["chain/interpolate/x"] = torch.stack([s.x for s in steps])
    out["chain/interpolate/energy"] = torch.stack([s.energy for s in steps])
    return out


@pytest.fixture(scope="module")
def recorded():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE))


def fp64_cases() -> dict[str, torch.Tensor]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # noise, reference images and latents are drawn in float64 too
    try:
        return cases(tiny_model().double())
    finally:
        torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def current(one_thread):
    return fp64_cases()


def test_every_mode_reproduces_the_recorded_samples(recorded, current):
    assert set(current) == set(recorded)
    for key, want in recorded.items():
        assert current[key].dtype == want.dtype, key
        torch.testing.assert_close(current[key], want, atol=ATOL, rtol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("key, wrong", [("class_mean/plain/None", "class_contrast/plain/None"),
                                        ("attributes_contrast/plain/0.3", "attributes_contrast/plain/None"),
                                        ("instance/sweeps/0.3", "instance/plain/0.3"),
                                        ("unconditional/plain/None", "interpolate/plain/None")])
def test_a_wrong_mode_fails_the_comparison(recorded, current, key, wrong):
    """The comparison above tells modes apart: samples of one mode do not pass for another's."""
    with pytest.raises(AssertionError):
        torch.testing.assert_close(current[key], recorded[wrong], atol=ATOL, rtol=0)


def test_the_modes_differ_from_each_other(recorded):
    """The fixture itself discriminates: conditioning, guidance and chain each change the samples."""
    flat = {k: v for k, v in recorded.items() if k.count("/") == 2}
    for a, b in (("unconditional/plain/None", "class_mean/plain/None"),
                 ("class_mean/plain/None", "class_contrast/plain/None"),
                 ("class_mean/plain/None", "class_mean/plain/0.3"),
                 ("instance/plain/None", "instance/sweeps/None"),
                 ("attributes_mean/plain/0.3", "attributes_contrast/plain/0.3")):
        assert (flat[a] - flat[b]).abs().max() > 1e-4, (a, b)


if __name__ == "__main__" and "--record" in sys.argv:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in fp64_cases().items()}, str(FIXTURE))
    print(f"wrote {FIXTURE}")
