"""The weights shipped in weights/: they load offline the way the app loads them, the cards quote their
eval.json, and SGLD from noise actually moves under them (a flat energy ships noise to every demo user)."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from clel.data import CIFAR10_CLASSES
from clel_app.models import MODEL_SPECS, ModelStore
from clel.sampling import ChainSettings, sample

REPO = Path(__file__).resolve().parents[1]
KINDS = {"cifar10": ("cifar10", 32), "celeba": ("celeba", 32)}


@pytest.fixture(scope="module")
def store():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        for env, _ in MODEL_SPECS.values():
            mp.delenv(env, raising=False)
        yield ModelStore()


@pytest.mark.parametrize("kind", list(KINDS))
def test_app_loads_the_bundled_weights_offline(store, kind):
    lm = store.get(kind)
    folder = REPO / "weights" / MODEL_SPECS[kind][1]
    assert Path(lm.path).resolve() == folder.resolve()
    dataset, size = KINDS[kind]
    assert (lm.cfg.dataset, lm.cfg.image_size) == (dataset, size)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["dtype"] == "float16" and meta["weights"] in ("ema", "live")
    for f in meta["files"]:
        assert (folder / f).stat().st_size <= 15 * 2**20, f  # Hub-friendly shards
    card = (folder / "README.md").read_text()
    assert f"Iterations: {meta['iteration']} " in card
    assert ("EMA copies" if meta["weights"] == "ema" else "live training weights") in card
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert "samples.png" in linked and all((folder / f).is_file() for f in linked), linked
    buffer = folder / "replay_buffer.safetensors"
    if buffer.is_file():  # its own long-run chains, saved with the weights they belong to; the card says so
        from clel.weights import read_tagged_safetensors

        _, info = read_tagged_safetensors(buffer, "clel-replay-buffer", "replay buffer")
        assert lm.model.replay_buffer.shape[1:] == (3, size, size) and lm.buffer_images == int(info["count"])
        assert int(info["iteration"]) == meta["iteration"] and "replay_buffer.safetensors" in card
    if kind == "cifar10":
        assert lm.extras["classes"] == CIFAR10_CLASSES
        assert lm.extras["class_prototypes"].shape == (10, lm.cfg.feature_dim)
        assert (folder / "ood_reference.safetensors").is_file()  # the Streamlit page draws these
    else:
        assert {"Young", "Female", "Smiling"} <= set(lm.extras["attributes"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_model_cards_quote_their_eval_json(kind):
    folder = REPO / "weights" / MODEL_SPECS[kind][1]
    ev = json.loads((folder / "eval.json").read_text())
    card = (folder / "README.md").read_text()
    if kind == "cifar10":
        assert ev["weights"]["iteration"] == json.loads((folder / "config.json").read_text())["iteration"]
        assert f"FID-1K: {ev['fid']['fid_1k']:.2f} " in card
        assert f"Encoder kNN accuracy on CIFAR-10: {ev['encoder']['knn_accuracy']:.4f}." in card
    else:
        assert set(ev) <= {"compositional", "device", "seed"}  # nothing measured on another model
        assert Path(ev["compositional"]["weights"]).name == folder.name
        assert f"agreement with the asked-for terms {ev['compositional']['mean_accuracy']:.4f}" in card
        for row in ev["compositional"]["rows"]:
            assert re.search(rf"^\| {re.escape(row['condition'])} \|", card, re.M), row["condition"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_chains_from_noise_move_beyond_their_own_noise(store, kind):
    lm = store.get(kind)
    steps = 20
    s = ChainSettings.from_model(lm.model, steps=steps)
    x0 = torch.rand(8, 3, lm.cfg.image_size, lm.cfg.image_size, generator=torch.Generator().manual_seed(0))
    x = sample(lm.model, 8, settings=s, x0=x0, generator=torch.Generator().manual_seed(1))
    # The noise alone moves a pixel by about noise * sqrt(steps) * sqrt(2 / pi) on average.
    noise_only = s.noise * math.sqrt(steps) * math.sqrt(2 / math.pi)
    moved = (x - x0).abs().mean().item()
    assert moved > 2.5 * noise_only, f"{kind}: mean |dx| {moved:.4f}, noise alone {noise_only:.4f}"
