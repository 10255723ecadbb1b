"""CelebA at 32x32 for CPU training: the ``celeba32-small`` preset is the model of the shared CPU run (so its export
resumes under the preset), and it trains and exports."""
from __future__ import annotations

import pytest
import torch

from clel import get_preset
from clel.checkpoints import model_mismatch, saved_config
from clel.config import CELEBA_MEAN, CELEBA_STD
from clel.data import ImageSet
from clel.energy import energy
from clel.trainer import TrainOptions, train
from clel.weights import load_pretrained

from conftest import DATA_ROOT

CPU_RUN = DATA_ROOT.parent / "checkpoints" / "celeba32-small-cpu" / "export"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def test_the_preset_is_small_at_32_px_on_faces_with_the_cpu_recipe():
    cfg = get_preset("celeba32-small")
    assert (cfg.dataset, cfg.image_size, cfg.arch, cfg.num_classes) == ("celeba", 32, "small", 0)
    assert (cfg.mean, cfg.std, cfg.encoder) == (CELEBA_MEAN, CELEBA_STD, "resnet18")
    assert (cfg.batch_size, cfg.sgld_steps, cfg.buffer_size) == (64, 20, 1000)
    assert get_preset("celeba64-base").image_size == 64  # the GPU preset stays


def test_the_shared_cpu_run_resumes_under_the_preset():
    if not (CPU_RUN / "config.json").is_file():
        pytest.skip(f"{CPU_RUN} not here")
    saved = saved_config(CPU_RUN)
    assert model_mismatch(get_preset("celeba32-small"), saved) == []  # the trainer's test: the same model
    assert saved == get_preset("celeba32-small")  # and the same recipe, field for field


def test_the_preset_trains_and_exports(tmp_path):
    """The preset's networks (Small f and g at 32 px; the encoder narrowed) for two short iterations."""
    cfg = get_preset("celeba32-small").replace(batch_size=4, sgld_steps=2, buffer_size=8, encoder_width=8,
                                               encoder_hidden=32, iters=10, warmup_iters=2, ema_start_iter=1)
    g = torch.Generator().manual_seed(0)
    data = ImageSet(images=torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g),
                    attrs=torch.randint(0, 2, (12, 3), generator=g), attr_names=["Male", "Smiling", "Young"])
    opts = TrainOptions(out=str(tmp_path / "run"), max_iters=2, progress=False, tensorboard=False, log_every=1,
                        sample_every=100, ckpt_every=100)
    trainer = train(cfg, opts, data=data)
    assert trainer.it == 2
    model, loaded, extras = load_pretrained(opts.out)
    assert loaded == cfg and model.cfg.image_size == 32 and "Young" in extras["attributes"]
    assert torch.isfinite(energy(model, torch.rand(2, 3, 32, 32))).all()
