"""Distilling an encoder for an export saved without one: h learns where g∘f points, f and g stay as they were."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from clel import CLEL, get_preset
from clel.data import ImageSet
from clel.distill import DistillRecipe, distill_encoder, ebm_latents
from clel.weights import export_pretrained, load_pretrained
from conftest import load_script


def blobs(n: int, seed: int) -> torch.Tensor:
    """Images with structure (a bright square in one of four corners on a coloured background), uint8."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, 1, 1, generator=g) * 120).expand(n, 3, 32, 32).clone()
    corner = torch.randint(0, 4, (n,), generator=g)
    for i, c in enumerate(corner.tolist()):
        r, k = divmod(c, 2)
        x[i, :, 16 * r:16 * r + 16, 16 * k:16 * k + 16] = 250
    return x.to(torch.uint8)


def tiny():
    torch.manual_seed(0)
    return CLEL(get_preset("tiny")).eval().requires_grad_(False)


def test_distilled_encoder_agrees_with_g_of_f_on_held_out_images_and_leaves_f_g_alone():
    model = tiny()
    f_before = {k: v.clone() for k, v in model.f.state_dict().items()}
    images, held = blobs(256, 0), blobs(64, 1)
    target = ebm_latents(model, images[:8])
    report = distill_encoder(model, images, held, DistillRecipe(epochs=4, batch_size=32, lr=0.05), width=8,
                             log=lambda _: None)
    assert report.cos_after > report.cos_before + 0.3 and report.cos_after > 0.8, report
    assert len(report.losses) == 4 and report.losses[-1] < report.losses[0]
    assert model.cfg.encoder_width == 8 and not model.h.training
    assert all(torch.equal(v, model.f.state_dict()[k]) for k, v in f_before.items())  # the EBM is untouched
    assert torch.equal(ebm_latents(model, images[:8]), target)


def test_script_writes_an_export_with_its_encoder_and_the_old_concepts(tmp_path, monkeypatch):
    model = tiny()
    att = F.normalize(torch.randn(2, model.cfg.feature_dim, generator=torch.Generator().manual_seed(2)), dim=1)
    export_pretrained(model, tmp_path / "w", extras={"attribute_latents": att},
                      extra_names={"attribute_latents": ["Smiling", "Young"]}, encoder=False,
                      info={"iteration": 123})
    images = blobs(200, 3)
    attrs = torch.stack([torch.arange(200) % 2 == 0, torch.arange(200) % 3 == 0], 1)
    script = load_script("scripts/distill_encoder.py", "distill_script")
    monkeypatch.setattr(script, "load_data", lambda *a: ImageSet(images, attrs=attrs, attr_names=["Smiling", "Young"]))
    assert script.main(["--weights", str(tmp_path / "w"), "--out", str(tmp_path / "w"), "--epochs", "1"]) == 2
    assert script.main(["--weights", str(tmp_path / "w"), "--out", str(tmp_path / "new"), "--epochs", "2",
                        "--batch", "32", "--width", "8", "--holdout", "40", "--threads", "1"]) == 0
    new, cfg, extras = load_pretrained(tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "config.json").read_text())
    assert meta["parts"] == ["f", "g", "h"] and meta["iteration"] == 123 and cfg.encoder_width == 8
    assert meta["encoder"]["holdout"] == 40 and len(meta["encoder"]["losses"]) == 2
    assert torch.allclose(extras["attribute_latents"], att)  # the stored concepts are kept, not re-encoded
    assert extras["attributes"] == ["Smiling", "Young"] and "attribute_contrasts" in extras  # and the missing added
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(new.f(x), model.f(x), atol=1e-6) and new.h(x).shape == (3, cfg.feature_dim)
