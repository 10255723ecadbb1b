"""clel.weights: exports that round-trip exactly, sharding, clear mismatch errors, Hub loading without network."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import clel.weights as W
from clel import CLEL, get_preset
from clel.energy import energy, joint_energy
from clel.weights import (WeightsError, check_state_dict, export_pretrained, load_pretrained, load_sharded,
                          pack_tree, unpack_tree)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def small_cfg(**kw):
    return get_preset("tiny").replace(encoder_width=8, head_hidden=32, encoder_hidden=32, feature_dim=16, **kw)


def trained_like(cfg=None) -> CLEL:
    """A model whose spectral-norm vectors and BN statistics are no longer at their initial values."""
    torch.manual_seed(0)
    model = CLEL(cfg or small_cfg()).train()
    with torch.no_grad():
        for _ in range(3):
            x = torch.rand(8, 3, 32, 32)
            model.f(x)
            model.h(x)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_pack_tree_round_trips_optimizer_and_rng_states():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], betas=(0.0, 0.999))
    p.grad = torch.randn(3)
    opt.step()
    state = {"opt": opt.state_dict(), "py": random.getstate(), "np": np.random.get_state(),
             "torch": torch.get_rng_state(), "nan": float("nan"), "inf": float("-inf"), "none": None}
    tensors: dict = {}
    packed = pack_tree(state, tensors, "s")
    text = json.dumps(packed)  # plain JSON, nothing pickled
    back = unpack_tree(json.loads(text), tensors)
    assert back["opt"]["param_groups"][0]["betas"] == (0.0, 0.999)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["py"] == state["py"]
    np_back = back["np"]
    assert np_back[0] == "MT19937" and np.array_equal(np_back[1], state["np"][1]) and np_back[1].dtype == np.uint32
    np.random.set_state(np_back)  # accepted by numpy
    random.setstate(back["py"])
    assert torch.equal(back["torch"], state["torch"])
    assert np.isnan(back["nan"]) and back["inf"] == float("-inf") and back["none"] is None
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))])
    opt2.load_state_dict(back["opt"])


def test_export_round_trip_gives_identical_energies(tmp_path):
    model = trained_like()
    export_pretrained(model, tmp_path / "exp", info={"weights": "ema", "iteration": 7})
    loaded, cfg, extras = load_pretrained(tmp_path / "exp")
    assert cfg == model.cfg and extras["source"] == "local" and extras["iteration"] == 7
    assert not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert any(k.endswith("_u") for k in sd) and any(k.endswith("original") for k in sd)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    x = torch.rand(6, 3, 32, 32)
    z = torch.nn.functional.normalize(torch.randn(16), dim=0)
    with torch.no_grad():
        assert torch.equal(energy(model, x), energy(loaded, x))
        assert torch.equal(joint_energy(model, x, z, 0.1), joint_energy(loaded, x, z, 0.1))
        # In train mode spectral norm runs a power iteration from the stored u, v: still identical.
        model.train(), loaded.train()
        assert torch.equal(energy(model, x), energy(loaded, x))


def test_sharded_export_follows_hf_index_convention(tmp_path):
    model = trained_like()
    limit = 64 * 1024
    files = W.save_sharded(model.state_dict(), tmp_path, max_shard_bytes=limit)
    assert len(files) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    sd = model.state_dict()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert set(index["weight_map"]) == set(sd) and set(index["weight_map"].values()) == {f.name for f in files}
    for f in files:  # each shard is within the limit unless it holds a single oversize tensor
        with W.safe_open(str(f), framework="pt") as h:
            keys = list(h.keys())
        nbytes = sum(sd[k].numel() * sd[k].element_size() for k in keys)
        assert nbytes <= limit or len(keys) == 1
    back = load_sharded(tmp_path)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # Re-exporting unsharded removes the stale shards and index.
    W.save_sharded(sd, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_full_size_export_is_sharded_at_15_mib(tmp_path):
    model = CLEL(get_preset("cifar10-small"))
    export_pretrained(model, tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((tmp_path / s).stat().st_size <= 15 * 2**20 + 64 * 1024 for s in shards)
    loaded, _, _ = load_pretrained(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(energy(model.eval(), x), energy(loaded, x))


def test_fp16_export_is_smaller_and_loads_into_fp32(tmp_path):
    model = trained_like()
    export_pretrained(model, tmp_path / "a")
    export_pretrained(model, tmp_path / "b", dtype=torch.float16)
    assert (tmp_path / "b" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "a" / "model.safetensors").stat().st_size
    loaded, _, extras = load_pretrained(tmp_path / "b")
    assert extras["dtype"] == "float16" and next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(energy(loaded, x), energy(model, x), rtol=2e-2, atol=1e-4)


def test_extras_round_trip(tmp_path):
    model = trained_like()
    protos = torch.nn.functional.normalize(torch.randn(10, 16), dim=1)
    attrs = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    export_pretrained(model, tmp_path, extras={"class_prototypes": protos, "attribute_latents": attrs},
                      extra_names={"class_prototypes": [f"c{i}" for i in range(10)],
                                   "attribute_latents": ["Young", "Female", "Smiling"]})
    _, _, extras = load_pretrained(tmp_path)
    assert torch.equal(extras["class_prototypes"], protos) and extras["classes"][3] == "c3"
    assert torch.equal(extras["attribute_latents"], attrs) and extras["attributes"] == ["Young", "Female", "Smiling"]


def test_mismatched_weights_name_the_problem(tmp_path):
    model = trained_like()
    export_pretrained(model, tmp_path)
    cfg_path = tmp_path / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["feature_dim"] = 24  # config now disagrees with the tensors
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"shape mismatches .*f\.head\.2\.weight: .*\(16, 32\).*\(24, 32\)"):
        load_pretrained(tmp_path)
    meta["config"]["arch"] = "small"
    meta["config"]["feature_dim"] = 16
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"missing keys .*unexpected keys"):
        load_pretrained(tmp_path)


def test_missing_key_and_unknown_config_key(tmp_path):
    model = trained_like()
    sd = dict(model.state_dict())
    sd.pop("f.head.0.bias")
    with pytest.raises(WeightsError, match=r"1 missing keys \(f\.head\.0\.bias\)"):
        check_state_dict(model, sd, "test file")
    export_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["not_a_field"] = 1
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="not_a_field"):
        load_pretrained(tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path):
    export_pretrained(trained_like(), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_pretrained(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    export_pretrained(trained_like(), tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    import pickle
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_pretrained(tmp_path)


# -- Hugging Face Hub, all offline -------------------------------------------------------------------------------

def test_hub_repo_id_uses_snapshot_download_with_patterns(tmp_path, monkeypatch):
    import huggingface_hub

    export_pretrained(trained_like(), tmp_path / "snap")
    seen = {}

    def fake_snapshot_download(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model, cfg, extras = load_pretrained("someone/clel-tiny")
    assert extras["source"] == "hub" and seen["repo_id"] == "someone/clel-tiny"
    assert set(seen["allow_patterns"]) == {"*.safetensors", "*.json", "README.md"}
    assert seen["local_files_only"] is False


def test_hub_offline_reads_local_cache(tmp_path, monkeypatch):
    """A real snapshot_download over a fake local cache, with HF_HUB_OFFLINE=1: no network involved."""
    snap = tmp_path / "cache" / "models--someone--clel-tiny" / "snapshots" / "0123abcd"
    export_pretrained(trained_like(), snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, extras = load_pretrained("someone/clel-tiny", cache_dir=tmp_path / "cache")
    assert extras["source"] == "hub" and Path(extras["path"]) == snap


def test_hub_failure_falls_back_to_bundled_weights(tmp_path, monkeypatch, caplog):
    bundled = tmp_path / "weights"
    export_pretrained(trained_like(), bundled / "clel-tiny")
    monkeypatch.setattr(W, "BUNDLED_WEIGHTS", bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # empty cache + offline: the Hub cannot serve it
    with caplog.at_level("WARNING", logger="clel.weights"):
        _, _, extras = load_pretrained("someone/clel-tiny", cache_dir=tmp_path / "empty-cache")
    assert extras["source"] == "bundled" and Path(extras["path"]) == bundled / "clel-tiny"
    assert "bundled" in caplog.text
    with pytest.raises(WeightsError, match="no bundled copy"):
        load_pretrained("someone/not-there", cache_dir=tmp_path / "empty-cache")


def test_offline_flag_sets_env_before_hub_import(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(W, "BUNDLED_WEIGHTS", tmp_path / "none")
    with pytest.raises(WeightsError, match="Hugging Face Hub failed"):
        load_pretrained("someone/clel-tiny", cache_dir=tmp_path / "c", offline=True)
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_not_a_folder_nor_repo_id():
    with pytest.raises(WeightsError, match="no such folder"):
        load_pretrained("/definitely/not/a/folder")


def test_export_without_encoder_keeps_sampling_and_says_what_needs_it(tmp_path):
    model = trained_like()
    full = export_pretrained(model, tmp_path / "full")
    lean = export_pretrained(model, tmp_path / "lean", encoder=False)
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert size(lean) < size(full)
    loaded, _, _ = load_pretrained(lean)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(energy(loaded, x), energy(model, x))
    z = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    assert torch.equal(joint_energy(loaded, x, z, 0.1), joint_energy(model, x, z, 0.1))
    with pytest.raises(WeightsError, match="without its encoder"):
        loaded.h(x)


def test_an_installed_copy_finds_the_bundled_weights_in_the_working_directory(tmp_path):
    """The Docker image installs the package into site-packages and runs from its WORKDIR, which holds weights/."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    site, work = tmp_path / "site", tmp_path / "work"
    shutil.copytree(repo / "clel", site / "clel", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "weights").mkdir(parents=True)
    code = "import clel.weights as w; print(w.BUNDLED_WEIGHTS)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == (work / "weights").resolve()
    here = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=120)
    assert Path(here.stdout.strip()) == site / "weights"  # no weights/ in the working directory: beside the code
