"""Quality probes: seeded, side-effect free, logged by the trainer with their cost and grid."""
from __future__ import annotations

import dataclasses

import json

import pytest

import torch
from torch import nn

from clel.models import CLEL
from clel.probe import Probe, ProbeSettings, clamped_fraction
from clel.eval.judges import CELEBA_JUDGE, CIFAR10_JUDGE, JUDGE_DIR, load_judge
from test_trainer import options, small_cfg, synthetic
from clel.trainer import train


class TinyFeatures(nn.Module):
    """A stand-in for the Inception network: 8 seeded random features per image (the probe's plumbing is what
    is tested here; the real network is tested in test_metrics)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(1)))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x.float()).mean((2, 3))


def tiny_probe(data, **kw):
    st = ProbeSettings(fid_samples=12, reference_images=40, judged_samples=10, batch_size=6,
                       fid_chain={"sweeps": 2}, **kw)
    return Probe(data, settings=st, inception=TinyFeatures(), judge=load_judge(JUDGE_DIR / CIFAR10_JUDGE))


def test_clamped_fraction_counts_pixels_on_the_clamp():
    x = torch.full((1, 3, 2, 2), 0.5)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 1, 1] = 0.0, 1.0, 0.999
    assert abs(clamped_fraction(x) - 2 / 12) < 1e-7


def test_a_probe_is_reproducible_from_its_seed_and_leaves_the_model_and_rng_alone(one_thread):
    torch.manual_seed(0)
    model = CLEL(small_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    probe = tiny_probe(synthetic())
    state = torch.get_rng_state()
    a = probe(model)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    b = tiny_probe(synthetic())(model)
    c = tiny_probe(synthetic(), seed=1)(model)
    keys = {"fid", "clamped_fraction", "judged_accuracy", "fd_judge", "kid_judge"}
    assert keys <= set(a) and all(a[k] == b[k] for k in keys)
    assert a["fid"] != c["fid"]  # another seed: other samples (and another reference subset)
    assert 0 <= a["judged_accuracy"] <= 1 and a["fid"] > 0
    # the independent distances: the same samples in the judge's features, which no model trains with
    assert a["fd_judge"] > 0 and a["fd_judge"] != c["fd_judge"] and a["feature_judge"] == CIFAR10_JUDGE


def test_probe_lookalikes_are_seeded_and_leave_the_model_and_rng_alone(one_thread):
    from conftest import data_path

    torch.manual_seed(0)
    model = CLEL(small_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe, root = tiny_probe(synthetic()), data_path()
    state = torch.get_rng_state()
    a = probe.lookalikes(model, root, n=3, per_upload=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(a) == {"lookalike_agreement", "lookalike_dist_own", "lookalike_dist_other"}
    assert a == probe.lookalikes(model, root, n=3, per_upload=2) and 0 <= a["lookalike_agreement"] <= 1
    assert a != probe.lookalikes(model, root, n=4, per_upload=2)  # more uploads: other distances


def test_celeba_probe_reports_agreement_per_attribute(one_thread):
    from clel.data import ImageSet

    g = torch.Generator().manual_seed(0)
    names = ["Male", "Smiling", "Young"]
    data = ImageSet(images=torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=g),
                    attrs=torch.randint(0, 2, (30, 3), generator=g), attr_names=names)
    st = ProbeSettings(fid_samples=6, reference_images=30, judged_samples=6, batch_size=6,
                       fid_chain={"sweeps": 1})
    probe = Probe(data, settings=st, inception=TinyFeatures(), judge=load_judge(JUDGE_DIR / CELEBA_JUDGE))
    out = probe(CLEL(small_cfg(dataset="celeba", num_classes=0)))
    assert {"judged_agreement", "judged_Young", "judged_Female", "judged_Smiling", "fd_judge", "kid_judge"} <= set(out)
    assert out["feature_judge"] == CELEBA_JUDGE
    mean = (out["judged_Young"] + out["judged_Female"] + out["judged_Smiling"]) / 3
    assert abs(out["judged_agreement"] - mean) < 1e-9
    nots = [out[f"judged_not_{a}"] for a in ("Young", "Female", "Smiling")]
    assert abs(out["judged_not_agreement"] - sum(nots) / 3) < 1e-9

    # Without guidance AND and NOT rows draw the same samples (one seed for every row): their agreements are
    # complements, so the NOT rows are judged on absence, not presence.
    blind = Probe(data, settings=dataclasses.replace(st, judged_chain={"guidance": 0.0}), inception=TinyFeatures(),
                  judge=load_judge(JUDGE_DIR / CELEBA_JUDGE))(CLEL(small_cfg(dataset="celeba", num_classes=0)))
    for a in ("Young", "Female", "Smiling"):
        assert blind[f"judged_{a}"] + blind[f"judged_not_{a}"] == pytest.approx(1.0)


def test_a_face_probe_takes_the_judge_of_its_image_size(tmp_path):
    from clel.data import ImageSet
    from clel.eval.judges import CELEBA_JUDGES, JudgeNet, JudgeSpec, save_judge

    for size, name in CELEBA_JUDGES.items():
        spec = JudgeSpec("attributes", ["Young", "Male", "Smiling"], size, (8,), stem=8)
        save_judge(JudgeNet(spec), tmp_path / name)

    def judge_for(size):
        data = ImageSet(images=torch.zeros(4, 3, size, size, dtype=torch.uint8),
                        attrs=torch.zeros(4, 3, dtype=torch.int64), attr_names=["Male", "Smiling", "Young"])
        return Probe(data, tmp_path, ProbeSettings(reference_images=4))._load_judge()

    assert [judge_for(s).spec.image_size for s in (32, 64)] == [32, 64]
    (tmp_path / CELEBA_JUDGES[32]).unlink()
    assert judge_for(32).name == CELEBA_JUDGE  # none trained at 32 here: the 64 px judge, which resizes


def test_trainer_logs_probes_with_cost_and_grid(tmp_path, monkeypatch):
    import clel.probe as P

    made = []

    def factory(data, device="cpu", features=None):
        made.append(1)
        return tiny_probe(data)

    monkeypatch.setattr(P, "Probe", factory)
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=4, probe_every=2), data=synthetic())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if r.get("event") == "probe"]
    assert [p["iteration"] for p in probes] == [2, 4] and len(made) == 1
    assert all(p["cost"] > 0 and p["weights"] in ("live", "ema") and "fid" in p for p in probes)
    assert all(p["fd_judge"] > 0 and "kid_judge" in p and p["feature_judge"] == CIFAR10_JUDGE for p in probes)
    assert sorted(p.name for p in (run / "probes").iterdir()) == ["iter-0000002.png", "iter-0000004.png"]


def test_a_failing_probe_does_not_end_the_run(tmp_path, monkeypatch):
    import clel.probe as P

    def broken(data, device="cpu"):
        raise RuntimeError("no judge here")

    monkeypatch.setattr(P, "Probe", broken)
    run = tmp_path / "run"
    t = train(small_cfg(), options(run, max_iters=3, probe_every=1), data=synthetic())
    assert t.it == 3 and "the probe at iteration 1 failed" in (run / "metrics.jsonl").read_text()
