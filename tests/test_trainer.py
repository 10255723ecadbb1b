"""Training: exact resume, crash safety, divergence recovery, DDP, export, and the CLI's clear errors."""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import clel.weights as W
from clel import get_preset
from clel.data import ImageSet, to_float, to_uint8
from clel.energy import energy
from clel.checkpoints import find_checkpoints, load_checkpoint
from clel.trainer import DivergenceError, TrainError, TrainOptions, Trainer, ema_update, train
from clel.weights import load_pretrained

REPO = Path(__file__).resolve().parents[1]
from conftest import load_script  # noqa: E402

train_cli = load_script("scripts/train.py", "train")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def small_cfg(**kw):
    """The tiny preset, smaller still: a few seconds for a handful of iterations on 2 cores."""
    base = dict(encoder_width=8, head_hidden=32, encoder_hidden=32, feature_dim=16, batch_size=8, buffer_size=32,
                sgld_steps=2, iters=10, warmup_iters=4, ema_start_iter=3)
    base.update(kw)
    return get_preset("tiny").replace(**base)


def synthetic(n: int = 40, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    labels=torch.arange(n) % 10, classes=list(CLASSES))


def options(out: Path, **kw) -> TrainOptions:
    base = dict(out=str(out), progress=False, tensorboard=False, log_every=1, sample_every=5, ckpt_every=100)
    base.update(kw)
    return TrainOptions(**base)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in rows if "iter" in r}


def events(run: Path, name: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == name]


def fake_cifar(root: Path, per_class: int = 2) -> Path:
    """A CIFAR-10 ImageFolder with a few random PNGs per class (what load_dataset expects)."""
    g = torch.Generator().manual_seed(1)
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            px = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(px).save(root / "train" / c / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))


# -- the loop ----------------------------------------------------------------------------------------------------

def test_ema_copies_then_averages_and_copies_buffers():
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        b.weight.fill_(2.0)
        b.running_mean.fill_(5.0)
    ema_update(a, b, decay=0.9, copy_weights=True)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.running_mean, b.running_mean)
    with torch.no_grad():
        b.weight.fill_(3.0)
        b.running_mean.fill_(7.0)
    ema_update(a, b, decay=0.9)
    torch.testing.assert_close(a.weight, torch.full((3,), 0.9 * 2 + 0.1 * 3))
    assert torch.equal(a.running_mean, b.running_mean)  # buffers copied, not averaged


def test_resume_is_exact(tmp_path):
    """10 iterations == 5 + resume + 5: same losses (1e-6) and the same final weights."""
    cfg, data = small_cfg(), synthetic()
    full = train(cfg, options(tmp_path / "full", max_iters=10), data=data)
    train(cfg, options(tmp_path / "split", max_iters=5), data=data)
    split = train(cfg, options(tmp_path / "split", max_iters=10, resume=str(tmp_path / "split")), data=data)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 11)) and sorted(b) == list(range(1, 11))
    for it in range(1, 11):
        assert abs(a[it] - b[it]) <= 1e-6, (it, a[it], b[it])
    for (k, v), (k2, v2) in zip(full.model.state_dict().items(), split.model.state_dict().items()):
        assert torch.allclose(v.float(), v2.float(), atol=1e-6), k
    for (k, v), v2 in zip(full.ema.state_dict().items(), split.ema.state_dict().values()):
        assert torch.allclose(v.float(), v2.float(), atol=1e-6), k
    assert torch.allclose(full.buffer.images, split.buffer.images, atol=1e-6)
    assert [r["event"] for r in events(tmp_path / "split", "start")] == ["start", "start"]


def test_fast_trainer_keeps_every_network_channels_last_and_saves_nchw(tmp_path):
    from clel.weights import load_pretrained

    trainer = train(small_cfg(iters=2), options(tmp_path / "run", export_weights="live"), data=synthetic())
    convs = [p for m in (trainer.model, trainer.ema) for p in m.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # really NHWC, not a 1x1 that is both
    loaded, _, _ = load_pretrained(tmp_path / "run")
    x = torch.rand(4, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.f(x), trainer.model.f(x), atol=1e-6)
    assert all(p.is_contiguous() for p in loaded.parameters())


def test_run_writes_export_metrics_and_samples(tmp_path):
    run = tmp_path / "run"
    t = train(small_cfg(), options(run, max_iters=4, ckpt_every=2, keep_ckpts=1, export_weights="ema"),
              data=synthetic())
    for name in ("model.safetensors", "config.json", "extras.safetensors", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert len(load_pretrained(run)[0].replay_buffer) == min(1000, t.cfg.buffer_size)  # --export-buffer's 1,000
    t.opts.export_buffer = 3
    assert len(load_pretrained(t.export(tmp_path / "three"))[0].replay_buffer) == 3
    t.opts.export_buffer = 0
    assert load_pretrained(t.export(run))[0].replay_buffer is None  # and the old file is gone
    assert list((run / "samples").glob("*.png"))
    assert [p.name for p in find_checkpoints(run)] == ["iter-0000004"]  # keep_ckpts=1
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"iter"' in line][-1]
    assert {"loss", "l_ebm", "l_le", "e_pos", "e_neg", "lr", "lr_encoder", "it_per_s"} <= set(row)
    model, cfg, extras = load_pretrained(run)
    assert cfg == t.cfg and extras["weights"] == "ema" and extras["iteration"] == 4
    assert extras["class_prototypes"].shape == (10, cfg.feature_dim) and extras["classes"] == CLASSES
    assert extras["class_contrasts"].shape == (10, cfg.feature_dim)
    from clel.sampling import SamplingError, class_latents
    torch.testing.assert_close(class_latents(extras, ["cat"], "contrast"), extras["class_contrasts"][3:4])
    torch.testing.assert_close(class_latents(extras, ["cat"]), extras["class_prototypes"][3:4])
    with pytest.raises(SamplingError, match="store no class contrast"):
        class_latents({k: v for k, v in extras.items() if k != "class_contrasts"}, ["cat"], "contrast")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        # The same weights; the run keeps them NHWC and the file NCHW, so convolutions round differently.
        torch.testing.assert_close(energy(model, x), energy(t.ema.eval(), x), rtol=1e-4, atol=0)


def test_checkpoint_holds_everything_without_pickle(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=2, buffer_uint8=True), data=synthetic())
    meta, tensors = load_checkpoint(find_checkpoints(run)[-1])
    assert meta["iteration"] == 2 and meta["world_size"] == 1
    names = "\n".join(tensors)
    for part in ("shared/model", "shared/ema", "shared/opt_ebm", "shared/opt_enc", "rank0/buffer",
                 "rank0/sampler_gen", "rank0/batches", "rank0/rng"):
        assert part in names, part
    assert tensors["rank0/buffer"].dtype == torch.uint8
    assert not list((run / "checkpoints").glob("*.pt"))


def test_resume_from_an_export_continues_the_count_schedules_and_ema(tmp_path, capsys):
    run = tmp_path / "run"
    first = train(small_cfg(), options(run, max_iters=4, export_weights="live"), data=synthetic())
    meta = json.loads((run / "config.json").read_text())
    assert meta["schedule"]["iteration"] == 4 and (run / "ema.safetensors").is_file()
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "config.json", "ema.safetensors", "replay_buffer.safetensors"):
        (export / name).write_bytes((run / name).read_bytes())
    t = Trainer(small_cfg(), options(tmp_path / "again", resume=str(export)), data=synthetic())
    err = capsys.readouterr().err
    assert t.it == 4 and t.resume_kind == "export" and "continuing at iteration 4" in err
    # the export's replay buffer (uint8, all of it) continues the chains
    assert f"{len(first.buffer)} replay-buffer images from" in err
    assert torch.equal(t.buffer.images, to_float(to_uint8(first.buffer.images)))
    for k, v in first.model.state_dict().items():
        assert torch.equal(t.model.state_dict()[k], v), k
    for k, v in first.ema.state_dict().items():  # the EMA of f and g continues; h's restarts from the weights
        if not k.startswith("h."):
            assert torch.equal(t.ema.state_dict()[k], v), k
    t.fit()
    rows = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["iter"]: r for r in rows if "iter" in r}
    assert sorted(steps) == list(range(5, 11))  # the count continues: 5..10, not 1..10
    cfg = small_cfg()
    from clel.trainer import encoder_lr
    # the encoder's cosine continues from iteration 4; the EBM warms up again (fresh Adam) from there
    assert math.isclose(steps[5]["lr_encoder"], encoder_lr(cfg, 4), rel_tol=1e-9)
    assert math.isclose(steps[5]["lr"], cfg.lr / cfg.warmup_iters, rel_tol=1e-9)
    assert math.isclose(steps[8]["lr"], cfg.lr, rel_tol=1e-9)


def test_init_iteration_overrides_what_an_export_records(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=2), data=synthetic())
    t = Trainer(small_cfg(iters=100), options(tmp_path / "again", resume=str(run / "checkpoints" / ".."),
                                              init_iteration=7), data=synthetic())
    assert t.resume_kind == "checkpoint" and t.it == 2  # a checkpoint is exact: the option is for exports
    (run / "checkpoints").rename(tmp_path / "moved")
    t = Trainer(small_cfg(iters=100), options(tmp_path / "again2", resume=str(run), init_iteration=7),
                data=synthetic())
    assert t.resume_kind == "export" and t.it == 7 and t.warm_from == 7


def test_an_export_without_its_encoder_resumes_with_a_fresh_one(tmp_path, capsys):
    run = tmp_path / "run"
    first = train(small_cfg(), options(run, max_iters=2, export_weights="live"), data=synthetic())
    export = tmp_path / "no-encoder"
    W.export_pretrained(first.model, export, encoder=False, info={"iteration": 2})
    assert json.loads((export / "config.json").read_text())["parts"] == ["f", "g"]
    t = Trainer(small_cfg(), options(tmp_path / "again", resume=str(export)), data=synthetic())
    assert "no encoder h: a fresh, randomly initialised encoder" in capsys.readouterr().err
    for k, v in first.model.state_dict().items():
        if not k.startswith("h."):
            assert torch.equal(t.model.state_dict()[k], v), k
    assert not all(torch.equal(t.model.state_dict()[k], v) for k, v in first.model.state_dict().items()
                   if k.startswith("h.") and v.is_floating_point())
    t.fit()
    assert t.it == 10


def test_resume_auto_twice_equals_one_run(tmp_path, capsys):
    """The long-run workflow: the same command again and again gives the losses of one uninterrupted run."""
    cfg, data = small_cfg(), synthetic()
    train(cfg, options(tmp_path / "full", max_iters=10), data=data)
    auto = options(tmp_path / "auto", resume="auto")
    train(cfg, dataclasses.replace(auto, max_iters=5), data=data)
    assert "no checkpoint in" in capsys.readouterr().err and "starting from scratch" in \
        (tmp_path / "auto" / "metrics.jsonl").read_text()
    t = train(cfg, dataclasses.replace(auto, max_iters=10), data=data)
    assert "continuing the run in" in capsys.readouterr().err and t.resume_kind == "checkpoint"
    a, b = losses(tmp_path / "full"), losses(tmp_path / "auto")
    assert sorted(b) == list(range(1, 11))
    for it in range(1, 11):
        assert abs(a[it] - b[it]) <= 1e-6, (it, a[it], b[it])


def test_resume_auto_starts_from_init_then_continues_its_own_run(tmp_path):
    data, run = fake_cifar(tmp_path / "cifar"), tmp_path / "run"
    small = ["--encoder-width", "8", "--head-hidden", "32", "--encoder-hidden", "32", "--feature-dim", "16",
             "--batch-size", "8", "--buffer-size", "32", "--sgld-steps", "2", "--iters", "6"]
    assert train_cli.main(["--preset", "tiny", "--data", str(data), "--out", str(run), "--max-iters", "2",
                           "--no-progress", *small]) == 0
    cont = tmp_path / "cont"
    cmd = ["--resume", "auto", "--init", str(run), "--data", str(data), "--out", str(cont), "--no-progress",
           "--max-iters", "4"]
    (run / "checkpoints").rename(tmp_path / "elsewhere")  # run/ is now an export only
    assert train_cli.main(cmd) == 0
    assert json.loads((cont / "config.json").read_text())["iteration"] == 4
    assert train_cli.main(cmd[:-1] + ["6"] + ["--init-iteration", "9"]) == 0  # for --init only: ignored now
    starts = events(cont, "start")
    assert [s["iteration"] for s in starts] == [2, 4] and [s["resume"] for s in starts] == ["export", "checkpoint"]
    assert json.loads((cont / "config.json").read_text())["iteration"] == 6


def test_resume_auto_without_checkpoint_init_or_preset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--resume", "auto", "--out", str(tmp_path / "empty"), "--no-progress"])
    assert e.value.code == 2 and "pass --init EXPORT or --preset" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_checkpoint_after_ckpt_minutes_without_one(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=3, ckpt_every=100, ckpt_minutes=0.0, keep_ckpts=5), data=synthetic())
    assert [p.name for p in find_checkpoints(run)] == ["iter-0000001", "iter-0000002", "iter-0000003"]


def run_child_until(script: str, tmp_path: Path, marker: Path, sig: int, what: str) -> subprocess.Popen:
    """Start a training child, wait for it to touch ``marker``, send ``sig``, return the finished process."""
    env = {**os.environ, "CLEL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "tests")}  # the children import test_trainer's helpers
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, what
            time.sleep(0.1)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


SIGTERM_SCRIPT = """
import sys
import pathlib, clel.trainer as T
from test_trainer import small_cfg, synthetic, options
orig = T.Trainer.train_step
def step(self):
    out = orig(self)
    if self.it == 3:
        pathlib.Path({marker!r}).touch()
    return out
T.Trainer.train_step = step
try:
    T.train(small_cfg(iters=10**6), options({run!r}, ckpt_every=10**6, nice=1), data=synthetic())
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_writes_a_checkpoint_and_exits(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "at3"
    script = SIGTERM_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), marker=str(marker), run=str(run))
    proc = run_child_until(script, tmp_path, marker, signal.SIGTERM, "the child never reached iteration 3")
    assert proc.returncode == 130, proc.stderr.read()
    ckpts = find_checkpoints(run)
    assert ckpts and load_checkpoint(ckpts[-1])[0]["iteration"] >= 3


def test_nice_lowers_every_thread_of_the_process(tmp_path):
    code = ("import os, threading; import torch\n"
            "ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()\n"
            "from clel.runtime import lower_priority\n"
            "lower_priority(3, print)\n"
            "print(sorted({os.getpriority(os.PRIO_PROCESS, int(x)) for x in os.listdir('/proc/self/task')}))\n"
            "ev.set()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert out.stdout.strip() == f"[{min(base + 3, 19)}]", out.stderr


def test_resume_of_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=1), data=synthetic())
    with pytest.raises(TrainError, match=r"different model: feature_dim: 16 vs 24"):
        Trainer(small_cfg(feature_dim=24), options(run, resume=str(run)), data=synthetic())


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=1), data=synthetic())
    with pytest.raises(TrainError, match="already holds checkpoints"):
        Trainer(small_cfg(), options(run), data=synthetic())


def test_ablation_switches_train(tmp_path):
    """β = 0 is the baseline EBM (encoder untouched); identity g and no extra negatives also run."""
    t = train(small_cfg(beta=0.0), options(tmp_path / "a", max_iters=2), data=synthetic())
    torch.manual_seed(0)
    fresh = type(t.model)(t.cfg)
    assert all(torch.equal(a, b) for a, b in zip(t.model.h.parameters(), fresh.h.parameters()))
    assert not (tmp_path / "a" / "extras.safetensors").exists()  # no latents without a trained encoder
    t = train(small_cfg(projection="identity", extra_negatives=False), options(tmp_path / "b", max_iters=2),
              data=synthetic())
    assert t.it == 2


def test_bf16_on_cpu_trains_where_native_and_is_refused_elsewhere(tmp_path, monkeypatch):
    import clel.fast as T  # set_precision's check

    monkeypatch.setattr(T, "native_bf16", lambda device: False)
    with pytest.raises(TrainError, match="bf16 needs a CUDA GPU or a CPU with native bf16"):
        Trainer(small_cfg(), options(tmp_path / "no", precision="bf16", device="cpu"), data=synthetic())
    assert not (tmp_path / "no").exists() or not any((tmp_path / "no").rglob("*.safetensors"))
    monkeypatch.setattr(T, "native_bf16", lambda device: True)  # emulated where the CPU lacks it: still correct
    t = train(small_cfg(), options(tmp_path / "yes", precision="bf16", device="cpu", max_iters=2), data=synthetic())
    got = losses(tmp_path / "yes")
    assert t.it == 2 and sorted(got) == [1, 2] and all(math.isfinite(v) for v in got.values())
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # autocast, not a bf16 model
    assert t.buffer.images.dtype != torch.bfloat16


# -- failures ----------------------------------------------------------------------------------------------------

def test_injected_nan_rolls_back_and_continues(tmp_path):
    run = tmp_path / "run"
    t = train(small_cfg(), options(run, max_iters=6, snapshot_every=2, inject_nan_at=(3,)), data=synthetic())
    assert t.it == 6 and t.failures == 1 and t.lr_scale == 0.5
    (rb,) = events(run, "rollback")
    assert rb["iteration"] == 3 and rb["to"] == 2 and "nan" in rb["reason"]
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert losses(run)[6] == losses(run)[6]  # finite, logged after the rollback
    meta, _ = load_checkpoint(find_checkpoints(run)[-1])
    assert meta["shared"]["__dict__"]  # lr_scale and failures are part of the state
    assert t.opt_ebm.param_groups[0]["lr"] == pytest.approx(0.5 * get_preset("tiny").lr)


def test_repeated_divergence_stops_with_a_message(tmp_path):
    with pytest.raises(DivergenceError, match=r"failure 3 of 3, giving up"):
        train(small_cfg(), options(tmp_path / "run", max_iters=5, energy_bound=0.0), data=synthetic())


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(small_cfg(), options(run, max_iters=2), data=synthetic())
    (good,) = find_checkpoints(run)
    before = (good / "state.safetensors").read_bytes()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(W, "save_file", no_space)
    with pytest.raises(TrainError, match=r"No space left on device.*iter-0000002 is intact"):
        train(small_cfg(), options(run, max_iters=4, resume=str(run)), data=synthetic())
    assert find_checkpoints(run) == [good] and (good / "state.safetensors").read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp leftovers
    load_checkpoint(good)


KILL_SCRIPT = """
import sys, time
import clel.weights as W
from test_trainer import small_cfg, synthetic, options
from clel.trainer import train
real, calls = W.save_file, [0]
def hang_mid_write(tensors, path, metadata=None):
    calls[0] += 1
    if calls[0] == 2:  # the second checkpoint: half a file, then wait to be killed
        with open(path, "wb") as f:
            f.write(b"partial")
        open({marker!r}, "w").close()
        time.sleep(600)
    return real(tensors, path, metadata=metadata)
W.save_file = hang_mid_write
train(small_cfg(), options({run!r}, max_iters=4, ckpt_every=2), data=synthetic())
"""


def test_sigkill_while_writing_leaves_previous_checkpoint(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "writing"
    script = KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), marker=str(marker), run=str(run))
    run_child_until(script, tmp_path, marker, signal.SIGKILL, "the child never reached its second checkpoint")
    assert [p.name for p in find_checkpoints(run)] == ["iter-0000002"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]  # the torn write
    meta, _ = load_checkpoint(run / "checkpoints" / "iter-0000002")
    assert meta["iteration"] == 2
    t = train(small_cfg(), options(run, max_iters=3, resume=str(run)), data=synthetic())
    assert t.it == 3 and not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


# -- multi-process -----------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import sys
import torch, torch.distributed as dist
from safetensors.torch import save_file
from test_trainer import small_cfg, synthetic, options
from clel.trainer import train
t = train(small_cfg(), options({run!r}, max_iters=3), data=synthetic())
state = {{**{{"model." + k: v for k, v in t.model.state_dict().items()}},
          **{{"ema." + k: v for k, v in t.ema.state_dict().items()}}}}
save_file({{k: v.contiguous() for k, v in state.items()}}, {run!r} + f"/rank{{dist.get_rank()}}.safetensors")
dist.destroy_process_group()
"""


def test_torchrun_two_ranks_end_identical(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    run.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), run=str(run)))
    env = {**os.environ, "CLEL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "tests")}  # the children import test_trainer's helpers
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    meta, tensors = load_checkpoint(find_checkpoints(run)[-1])
    assert meta["world_size"] == 2 and len(meta["ranks"]) == 2
    # One replay buffer per rank, seeded differently.
    assert not torch.equal(tensors["rank0/buffer"], tensors["rank1/buffer"])
    assert (run / "model.safetensors").is_file()


# -- the command line --------------------------------------------------------------------------------------------

def test_help_lists_every_config_field(capsys):
    import dataclasses

    from clel.config import CLELConfig

    with pytest.raises(SystemExit) as e:
        train_cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(CLELConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    for flag in ("--preset", "--data", "--out", "--max-iters", "--max-minutes", "--resume", "--device",
                 "--precision", "--seed", "--no-extra-negatives"):
        assert flag in text


def test_cli_trains_resumes_and_overrides(tmp_path, capsys):
    data, run = fake_cifar(tmp_path / "cifar"), tmp_path / "run"
    small = ["--encoder-width", "8", "--head-hidden", "32", "--encoder-hidden", "32", "--feature-dim", "16",
             "--batch-size", "8", "--buffer-size", "32", "--sgld-steps", "2", "--iters", "4"]
    rc = train_cli.main(["--preset", "tiny", "--data", str(data), "--out", str(run), "--max-iters", "2",
                         "--no-progress", "--projection", "linear", "--no-extra-negatives", *small])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["projection"] == "linear" and cfg["extra_negatives"] is False and cfg["batch_size"] == 8
    # --resume alone: config and data path come from the checkpoint, out defaults to the run folder.
    assert train_cli.main(["--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["iteration"] == 4
    capsys.readouterr()
    # ... and a run of another model is refused with exit code 2.
    rc = train_cli.main(["--preset", "cifar10-small", "--resume", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "different model" in err and "arch: 'tiny' vs 'small'" in err and "Traceback" not in err


def test_cli_full_disk_exits_2(tmp_path, monkeypatch, capsys):
    data, run = fake_cifar(tmp_path / "cifar"), tmp_path / "run"

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(W, "save_file", no_space)
    rc = train_cli.main(["--preset", "tiny", "--data", str(data), "--out", str(run), "--max-iters", "1",
                         "--no-progress", "--encoder-width", "8", "--batch-size", "8", "--sgld-steps", "1"])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err


def test_cli_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--preset", "cifar11"])
    assert e.value.code == 2 and "invalid choice: 'cifar11'" in capsys.readouterr().err


def test_cli_missing_data_exits_2_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--preset", "tiny", "--data",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert "error: cannot load the cifar10 training data" in res.stderr and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # nothing created for a run that could not start


@pytest.mark.slow
def test_acceptance_tiny_preset_on_cifar10(tmp_path):
    """The issue's acceptance command: 50 iterations of the tiny preset on real CIFAR-10 in < 3 min."""
    from conftest import data_path

    data, run = data_path("cifar10"), tmp_path / "run"
    t0 = time.time()
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--preset", "tiny", "--data",
                          str(data), "--out", str(run), "--max-iters", "50"],
                         capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                            "CLEL_CACHE": str(Path.home() / ".cache" / "clel")})
    elapsed = time.time() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert elapsed < 180, f"took {elapsed:.0f} s"
    for name in ("model.safetensors", "config.json", "metrics.jsonl"):
        assert (run / name).is_file()
    assert list((run / "samples").glob("*.png"))
    _, _, extras = load_pretrained(run)
    assert extras["class_prototypes"].shape[0] == 10


def test_auto_export_takes_the_ema_only_once_the_run_is_ten_half_lives_long(tmp_path):
    run = tmp_path / "run"
    t = train(small_cfg(ema_half_life_images=80.0), options(run, max_iters=4), data=synthetic())
    # half-life 80 images / batch 8 = 10 iterations; the EMA starts at iteration 3, so it wins from 103 on
    assert t.opts.export_weights == "auto" and load_pretrained(run)[2]["weights"] == "live"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(energy(load_pretrained(run)[0], x), energy(t.model.eval(), x), rtol=1e-4, atol=0)
    t.it = 102
    assert t.export_choice() == "live"
    t.it = 103
    assert t.export_choice() == "ema"
    t.opts.export_weights = "live"
    assert t.export_choice() == "live"
