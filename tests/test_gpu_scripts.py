"""The one-call GPU training kit (scripts/gpu): lossless data pack, result packing, resuming with a saved buffer."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from clel import get_preset
from clel.data import ImageSet, load_cifar10
from clel.checkpoints import REPLAY_BUFFER_NAME, TrainError, save_replay_buffer
from clel.trainer import TrainOptions, Trainer, train

REPO = Path(__file__).resolve().parents[1]
from conftest import load_script  # noqa: E402

pack_data = load_script("scripts/gpu/pack_data.py", "pack_data")
pack_result = load_script("scripts/gpu/pack_result.py", "pack_result")

CLASSES = pack_data.CIFAR10_CLASSES


pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


def jpeg_cifar(root: Path, per_class: int = 3, odd_one: bool = True) -> Path:
    """A CIFAR-10 ImageFolder of JPEGs written by one encoder (shared header), plus one written differently."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                px = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(px).save(root / split / c / f"{i:04d}.jpg", quality=75)
    if odd_one:  # other tables: must be stored whole, and still come back byte for byte
        px = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(px).save(root / "train" / "cat" / f"{per_class:04d}.jpg", quality=95)
    return root


def small_cfg(**kw):
    base = dict(encoder_width=8, head_hidden=32, encoder_hidden=32, feature_dim=16, batch_size=8, buffer_size=32,
                sgld_steps=2, iters=10, warmup_iters=4, ema_start_iter=3)
    base.update(kw)
    return get_preset("tiny").replace(**base)


def synthetic(n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    labels=torch.arange(n) % 10, classes=list(CLASSES))


def options(out: Path, **kw) -> TrainOptions:
    base = dict(out=str(out), progress=False, tensorboard=False, log_every=1, sample_every=2, ckpt_every=2,
                buffer_uint8=True)
    base.update(kw)
    return TrainOptions(**base)


# -- the data pack ---------------------------------------------------------------------------------------------------

def test_pack_unpack_rebuilds_identical_files_that_the_loader_reads(tmp_path):
    src = jpeg_cifar(tmp_path / "src")
    pack = tmp_path / "carry" / "cifar10.npz"
    meta = pack_data.pack(src, pack, ["train", "test"], budget=None)
    assert meta["splits"]["train"]["count"] == 31 and meta["splits"]["train"]["whole_files"] == 1
    assert meta["splits"]["test"]["count"] == 30
    originals = sum(p.stat().st_size for p in src.rglob("*.jpg"))
    assert pack.stat().st_size < originals  # the shared header is stored once
    root = pack_data.unpack(pack, tmp_path / "out")
    for f in src.rglob("*.jpg"):
        assert (root / f.relative_to(src)).read_bytes() == f.read_bytes(), f
    a, b = load_cifar10(src, "train"), load_cifar10(root, "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_unpack_subset_and_damage_detection(tmp_path):
    src = jpeg_cifar(tmp_path / "src", odd_one=False)
    pack = tmp_path / "p.npz"
    pack_data.pack(src, pack, ["train"], budget=None)
    root = pack_data.unpack(pack, tmp_path / "few", splits=["train"], per_class=1)
    assert sorted(p.name for p in (root / "train" / "dog").iterdir()) == ["0000.jpg"]
    assert not (root / "test").exists()
    meta, arrays = pack_data.read_pack(pack)
    arrays["train_data"][5] ^= 0xFF  # one flipped byte
    meta_bytes = json.dumps(meta).encode()
    import numpy as np
    np.savez(tmp_path / "bad.npz", meta=np.frombuffer(meta_bytes, dtype=np.uint8), **arrays)
    with pytest.raises(SystemExit, match="SHA-256"):
        pack_data.unpack(tmp_path / "bad.npz", tmp_path / "bad")


def test_pack_fits_a_budget_with_a_balanced_subset(tmp_path):
    sizes = {"train": [[100] * 10 for _ in range(10)], "test": [[100] * 5 for _ in range(10)]}
    assert pack_data.choose_counts(sizes, 10**9) == {"train": None, "test": None}
    assert pack_data.choose_counts(sizes, 10 * 10 * 112) == {"train": None}  # test only goes in whole
    counts = pack_data.choose_counts(sizes, 10 * 4 * 112 + 50)
    assert counts == {"train": 4}
    with pytest.raises(SystemExit):
        pack_data.choose_counts(sizes, 100)


def test_jpeg_header_parsing():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "JPEG", quality=75)
    b = buf.getvalue()
    n = pack_data.jpeg_header_length(b)
    assert 0 < n < len(b) and b"\xff\xda" in b[:n] and b.endswith(pack_data.EOI)
    assert pack_data.split_body(b, b[:n]) == b[n:-2]
    assert pack_data.jpeg_header_length(b"\x89PNG....") == 0


# -- resuming from an export with a saved replay buffer --------------------------------------------------------------

def test_resume_from_export_with_a_saved_buffer(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=3), data=synthetic())
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    save_replay_buffer(images, run / REPLAY_BUFFER_NAME, iteration=3)
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "config.json", REPLAY_BUFFER_NAME):
        (export / name).write_bytes((run / name).read_bytes())
    t = Trainer(small_cfg(), options(tmp_path / "again", resume=str(export)), data=synthetic())
    assert "20 replay-buffer images" in capsys.readouterr().err
    assert torch.equal(t.buffer.images[:20], images.float() / 255)
    assert len(t.buffer) == 32  # the other slots keep their U(0, 1) start


def test_resume_buffer_errors(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=2), data=synthetic())
    with pytest.raises(TrainError, match="EXPORT only"):
        Trainer(small_cfg(), options(run, resume=str(run), resume_buffer=str(run / "x")), data=synthetic())
    bad = tmp_path / "bad.safetensors"
    save_replay_buffer(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), bad)
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "config.json"):
        (export / name).write_bytes((run / name).read_bytes())
    with pytest.raises(TrainError, match="expected uint8 images"):
        Trainer(small_cfg(), options(tmp_path / "a", resume=str(export), resume_buffer=str(bad)), data=synthetic())
    with pytest.raises(TrainError, match="not a clel replay buffer"):
        Trainer(small_cfg(), options(tmp_path / "b", resume=str(export),
                                     resume_buffer=str(export / "model.safetensors")), data=synthetic())


# -- packing a run for the trip back ---------------------------------------------------------------------------------

def _export_of(run: Path, dest: Path) -> Path:
    """The run's export alone (what bundle_weights.py would give), without its checkpoints."""
    dest.mkdir()
    for p in run.iterdir():
        if p.is_file() and p.suffix in (".safetensors", ".json"):
            (dest / p.name).write_bytes(p.read_bytes())
    return dest


def _untar(out: Path, dest: Path) -> Path:
    data = b"".join(p.read_bytes() for p in sorted(out.glob("result.tar.*")))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_pack_result_final_and_partial(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=4), data=synthetic())
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "result.tar.07").write_bytes(b"stale")  # an old part must not survive
    bundle = _export_of(run, tmp_path / "bundle")
    assert pack_result.main(["--run", str(run), "--bundle", str(bundle), "--out", str(out), "--part-mib", "0.25"]) == 0
    parts = sorted(out.glob("result.tar.*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 0.25 * 2**20 for p in parts)
    assert not (out / "result.tar.07").exists() and not list(out.glob(".*"))
    got = _untar(out, tmp_path / "final")
    manifest = json.loads((got / "MANIFEST.json").read_text())
    assert manifest["mode"] == "final" and manifest["checkpoint_iteration"] == 4
    assert manifest["replay_buffer"] == {"kept": 32, "of": 32}
    assert (got / "cifar10" / "config.json").is_file() and (got / "run" / "metrics.jsonl").is_file()
    t = Trainer(small_cfg(), options(tmp_path / "again", resume=str(got / "cifar10"),
                                     resume_buffer=str(got / "resume" / "replay_buffer.safetensors")),
                data=synthetic())
    assert t.resume_kind == "export"

    out2 = tmp_path / "OUT2"
    assert pack_result.main(["--run", str(run), "--out", str(out2), "--partial"]) == 0
    got = _untar(out2, tmp_path / "partial")
    cfg = json.loads((got / "cifar10-partial" / "config.json").read_text())
    assert cfg["iteration"] == 4 and cfg["partial"] is True and cfg["dtype"] == "float16"


def test_pack_result_cuts_the_buffer_to_fit(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(buffer_size=400), options(run, max_iters=2), data=synthetic())
    out = tmp_path / "OUT"
    weights = sum(p.stat().st_size for p in run.glob("*.safetensors"))
    limit = (weights + 1.3 * 2**20 + 200 * 3072) / 2**20
    bundle = _export_of(run, tmp_path / "bundle")
    assert pack_result.main(["--run", str(run), "--bundle", str(bundle), "--out", str(out),
                             "--max-total-mib", f"{limit:.3f}"]) == 0
    manifest = json.loads((_untar(out, tmp_path / "x") / "MANIFEST.json").read_text())
    assert 64 <= manifest["replay_buffer"]["kept"] < 400


def test_gpu_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu" / "train_cifar10.sh")]).returncode == 0
