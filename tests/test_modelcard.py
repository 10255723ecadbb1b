"""The model card says what was measured, with the numbers of eval.json, and what was not."""
from clel import get_preset
from clel.eval.modelcard import render_model_card

CFG = get_preset("cifar10-small")
META = {"parts": ["f", "g", "h"], "dtype": "float16"}
TRAINING = {"iterations": 150, "seconds": 5400.0}


def card(evaluation):
    return render_model_card(CFG, META, evaluation=evaluation, training=TRAINING, hardware="2 CPU cores",
                             commands=["python scripts/train.py --preset cifar10-small"], status="Early weights.",
                             preset="cifar10-small")


def test_unmeasured_metrics_are_said_to_be_unmeasured():
    text = card(None)
    assert "FID: not measured." in text and "OOD detection: not measured." in text
    assert "Encoder kNN accuracy on CIFAR-10: not measured." in text
    assert "judged" not in text and "wall time 1.50 h" in text and "Iterations: 150" in text


def test_measured_numbers_are_quoted_from_eval_json():
    ev = {
        "fid": {"fid_1k": 123.456, "fid_10k": None, "protocol": "reference", "settings": {"sweeps": 10, "steps": 20},
                "reference": {"n": 2000}},
        "ood": {"beta": 0.1, "in_distribution": {"n": 1000},
                "sets": {"dtd": {"label": "Textures", "status": "ok", "auroc_score": 0.66, "auroc_energy": 0.765},
                         "svhn": {"label": "SVHN", "status": "not installed"}}},
        "encoder": {"knn_accuracy": 0.281},
        "conditional": {"accuracy": 0.1234, "n_per_class": 100, "guidance": 1.0, "judge": {"test_accuracy": 0.91}},
        "compositional": {"status": "skipped: no CelebA export"},
    }
    text = card(ev)
    assert "FID-1K: 123.46 (reference protocol, 10 sweeps x 20 SGLD steps, against 2000 images" in text
    assert "FID-10K" not in text  # not drawn: not shown as a number
    assert "| s(x), β = 0.1 | not installed | 0.6600 |" in text and "| ½‖f(x)‖² only | not installed | 0.7650 |" in text
    assert "Encoder kNN accuracy on CIFAR-10: 0.2810." in text
    assert "judged as their class by the CIFAR-10 judge (test accuracy 0.9100): 0.1234 on average" in text
    assert "Attribute compositions: skipped: no CelebA export." in text
    ev["compositional"] = {"mean_accuracy": 0.5, "n_per_condition": 100}
    assert "agrees with the asked-for terms 0.5000 of the time" in card(ev)
    assert "Look-alikes" not in card(ev)  # not measured: no line
    ev["lookalikes"] = {"agreement": 0.315, "uploads": 50, "per_upload": 4, "chance": 0.1, "dist_own": 0.5,
                        "dist_other": 0.625}
    assert ("Look-alikes of 50 held-out uploads (4 each, the demo's chain): the judge gives them the upload's class "
            "0.3150 of the time (chance: 0.1); in its features their distance to their own upload is 0.5000, to "
            "the other uploads 0.6250.") in card(ev)


def test_card_names_which_weights_the_export_holds():
    live = render_model_card(CFG, {**META, "weights": "live"}, evaluation=None, training=TRAINING,
                             hardware="2 CPU cores", commands=[], status="Early weights.", preset="cifar10-small")
    assert "Weights are the live training weights (not the EMA copies)" in live
    assert "Weights are the EMA copies" in card(None)  # an export without the field is the trainer's default, EMA


def test_celeba_card_quotes_the_compositions_and_no_cifar_numbers():
    comp = {"mean_accuracy": 0.3, "n_per_condition": 100, "guidance": 1.0, "chain": {"steps": 100},
            "judge": {"test_accuracy": {"Young": 0.876}},
            "rows": [{"condition": "unconditional", "terms": [], "rate": {"Young": 0.05}},
                     {"condition": "AND Young", "terms": [["Young", 1.0]], "accuracy": 0.94, "rate": {"Young": 0.94}}]}
    text = render_model_card(get_preset("celeba64-base"), META, evaluation={"compositional": comp},
                             training=TRAINING, hardware="2 CPU cores", commands=[], status="Early weights.",
                             preset="celeba64-base")
    assert "FID and OOD detection: not measured" in text and "kNN" not in text and "FID 15.27" not in text
    assert "agreement with the asked-for terms 0.3000 on average" in text
    assert "| unconditional | – | 0.0500 |" in text and "| AND Young | 0.9400 | 0.9400 |" in text
    assert "Attribute compositions: not measured." in render_model_card(
        get_preset("celeba64-base"), META, evaluation=None, training=TRAINING, hardware="", commands=[],
        status="", preset="celeba64-base")


def test_card_shows_each_sample_grid_and_the_reference_sampler_snippet():
    one = card(None)
    assert "![samples](samples.png)" in one and "samples-reference.png" not in one
    two = render_model_card(CFG, META, evaluation=None, training=TRAINING, hardware="", commands=[], status="",
                            preset="cifar10-small", grids=[("samples", "samples.png"),
                                                           ("reference", "samples-reference.png")])
    assert "![samples](samples.png)\n![reference](samples-reference.png)" in two
    assert "ChainSettings.reference(model)" in two


def test_card_names_the_numbers_the_frozen_encoder_may_flatter_and_quotes_the_independent_ones():
    ev = {"fid": {"fid_1k": 100.0, "protocol": "reference", "settings": {"sweeps": 10, "steps": 20},
                  "reference": {"n": 2000}, "fd_judge_1k": 12.345, "kid_judge": {"mean": 0.0123, "std": 0.001},
                  "feature_judge": "cifar10_classifier.safetensors", "judge_reference": 2000}}
    joint = card(ev)
    assert "may be biased" not in joint
    assert ("In the features of the judge `cifar10_classifier.safetensors`, which no model is trained with, the same "
            "samples score FD-JUDGE-1K 12.35, KID 0.0123 ± 0.0010 (against 2000 real images).") in joint
    frozen = render_model_card(CFG.replace(encoder="inception"), META, evaluation=ev, training=TRAINING,
                               hardware="", commands=[], status="", preset="cifar10-small")
    assert "**Numbers that may be biased: FID and KID.**" in frozen and "FID network itself" in frozen
    assert "`fd_judge`, `kid_judge`) are the independent measure" in frozen and "FD-JUDGE-1K 12.35" in frozen
    assert '"encoder": "inception"' in frozen  # the change from the preset, as the card lists every change
    comp = {"unconditional": {"samples": 100, "fd_judge_100": 3.5, "kid_judge": {"mean": 0.01, "std": 0.002},
                              "feature_judge": "celeba_attributes_32.safetensors", "judge_reference": 2000}}
    faces = render_model_card(get_preset("celeba32-small").replace(encoder="inception"), META,
                              evaluation={"compositional": comp}, training=TRAINING, hardware="", commands=[],
                              status="", preset="celeba32-small")
    assert "# CLEL Small on CelebA 32x32" in faces and "may be biased" in faces
    assert "`celeba_attributes_32.safetensors`" in faces and "FD-JUDGE-100 3.50" in faces


def test_card_quotes_the_replay_buffer_beside_the_reference_sampler_and_shows_its_start_when_shipped():
    ev = {"fid": {"fid_1k": 61.234, "fid_10k": 50.0, "protocol": "reference", "settings": {"sweeps": 10, "steps": 20},
                  "reference": {"n": 2000}, "fd_judge_1k": 5.678, "feature_judge": "cifar10_classifier.safetensors",
                  "judge_reference": 2000},
          "buffer": {"images": 1000, "iteration": 7, "fid_1k": 45.111, "kid": {"mean": 0.01, "std": 0.001},
                     "fd_judge_1k": 3.456, "feature_judge": "cifar10_classifier.safetensors", "judge_reference": 2000}}
    start = 'settings=ChainSettings(start="buffer"))'
    shipped = render_model_card(CFG, META, evaluation=ev, training=TRAINING, hardware="", commands=[], status="",
                                preset="cifar10-small", buffer_images=1000)
    assert ("The model's own long-run chains (the 1,000 images of its replay buffer, shipped as "
            "`replay_buffer.safetensors`; the demo can start from them): FID-1k 45.11 against the reference "
            "sampler's 61.23; judge FD-1k 3.46 against 5.68.") in shipped
    assert shipped.index("FID-1K: 61.23") < shipped.index("long-run chains (the 1,000")  # right after the FID line
    assert f"{start}        # continue the model's own long-run chains" in shipped
    kept = card(ev)  # eval.json scored a buffer that this folder does not ship
    assert "not shipped in this folder): FID-1k 45.11 against the reference sampler's 61.23" in kept
    assert start not in kept and "long-run chains" not in card({"fid": ev["fid"]})
    skipped = card({**ev, "buffer": {"status": "skipped: weights ships no replay buffer"}})
    assert "replay buffer" not in skipped.split("## Use")[0]
    comp = {"unconditional": {"samples": 100, "fd_judge_100": 3.5, "feature_judge": "c", "judge_reference": 2000},
            "buffer": {"images": 1000, "fd_judge_100": 2.25, "fd_judge_1000": 2.0, "feature_judge": "c",
                       "judge_reference": 2000}}
    faces = render_model_card(get_preset("celeba64-base"), META, evaluation={"compositional": comp},
                              training=TRAINING, hardware="", commands=[], status="", preset="celeba64-base",
                              buffer_images=1000)
    # the same number of images on both sides: the buffer's first 100 against the 100 samples from noise
    assert "judge FD-100 2.25 against the unconditional samples' 3.50." in faces and start in faces


def test_bundle_weights_writes_the_fp16_export_its_ema_replay_buffer_grids_and_card(tmp_path):
    """scripts/bundle_weights.py on a run whose export holds the live weights: the EMA of f and g comes along in
    fp16 (through clel.checkpoints' EMA file), and at most --buffer-images images of the run's replay buffer,
    beside the grids and the card."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from safetensors import safe_open

    from clel import CLEL
    from clel.checkpoints import EMA_NAME, REPLAY_BUFFER_NAME, read_ema, save_replay_buffer, write_ema
    from clel.weights import export_pretrained, load_pretrained

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    run, out = tmp_path / "run", tmp_path / "bundle"
    export_pretrained(CLEL(cfg).eval(), run, info={"weights": "live", "iteration": 4})
    ema = {k: v for k, v in CLEL(cfg).state_dict().items() if not k.startswith("h.")}
    write_ema(ema, run / EMA_NAME, iteration=4)
    buf = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_replay_buffer(buf, run / REPLAY_BUFFER_NAME, iteration=3)
    (run / "metrics.jsonl").write_text(json.dumps({"event": "start", "time": 0.0, "config": cfg.to_dict()}) + "\n"
                                       + json.dumps({"iter": 4, "time": 2.0}) + "\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "bundle_weights.py"

    def bundle(*extra: str) -> str:
        res = subprocess.run([sys.executable, str(script), "--run", str(run), "--out", str(out), "--preset", "tiny",
                              "--hardware", "a test", "--status", "Random weights.", "--samples", "4",
                              "--sample-steps", "2", "--reference-sweeps", "1", *extra], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    assert "replay buffer: 5 of 12 images (iteration 3)" in bundle("--buffer-images", "5")
    for name in ("config.json", "README.md", "samples.png", "samples-reference.png", EMA_NAME, REPLAY_BUFFER_NAME):
        assert (out / name).is_file(), name
    model, _, extras = load_pretrained(out)
    assert extras["replay_buffer"] == 5 and torch.equal(model.replay_buffer, buf[:5])  # its first images, as saved
    with safe_open(str(out / REPLAY_BUFFER_NAME), framework="pt") as f:
        assert f.metadata()["iteration"] == "3"
    assert 'ChainSettings(start="buffer")' in (out / "README.md").read_text()
    bundled = read_ema(out / EMA_NAME)
    assert bundled.keys() == ema.keys()
    assert all(torch.equal(bundled[k], v.half() if v.is_floating_point() else v) for k, v in ema.items())
    with safe_open(str(out / EMA_NAME), framework="pt") as f:
        assert f.metadata() == {"format": "clel-ema", "iteration": "4"}

    assert "wall time 0.00 h (training and export)" in (out / "README.md").read_text()  # the run folder's

    assert "replay buffer: none shipped" in bundle("--buffer-images", "0", "--cost", "about 3 CPU-hours in all")
    assert not (out / REPLAY_BUFFER_NAME).exists() and load_pretrained(out)[2]["replay_buffer"] == 0
    card = (out / "README.md").read_text()
    assert 'ChainSettings(start="buffer")' not in card
    assert "schedule), about 3 CPU-hours in all, hardware: a test" in card and "wall time" not in card


def test_bundle_weights_takes_the_newest_checkpoints_buffer_when_the_run_folder_has_no_file(tmp_path):
    """A run from before the trainer wrote replay_buffer.safetensors beside its export: the newest checkpoint's
    buffer (float there without --buffer-uint8), as the uint8 images it rounds to, at that checkpoint's iteration."""
    import importlib.util
    from pathlib import Path

    import torch

    from clel.checkpoints import CKPT_FORMAT_VERSION, REPLAY_BUFFER_NAME, save_replay_buffer, write_checkpoint
    from clel.data import to_uint8
    from clel.weights import pack_tree

    spec = importlib.util.spec_from_file_location(
        "bundle_weights", Path(__file__).resolve().parents[1] / "scripts" / "bundle_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.run_buffer(tmp_path, {"iteration": 9}) is None  # neither a file nor a checkpoint
    bufs = [torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for it, buf in zip((2, 5), bufs):
        tensors: dict = {}
        meta = {"format": "clel-checkpoint", "format_version": CKPT_FORMAT_VERSION, "iteration": it,
                "ranks": [pack_tree({"buffer": buf}, tensors, "rank0")]}
        write_checkpoint(tmp_path / "checkpoints" / f"iter-{it}", meta, tensors)
    images, iteration = mod.run_buffer(tmp_path, {"iteration": 9})
    assert iteration == 5 and torch.equal(to_uint8(images), to_uint8(bufs[1]))
    save_replay_buffer(bufs[0], tmp_path / REPLAY_BUFFER_NAME)  # the file beside the export wins; no iteration in it
    images, iteration = mod.run_buffer(tmp_path, {"iteration": 9})
    assert iteration == 9 and torch.equal(images, to_uint8(bufs[0]))


def test_reports_name_the_judged_chain_and_the_demo_s():
    from clel.eval.report import chain_words

    assert chain_words({"sweeps": 1, "steps": 200}) == "one chain of 200 SGLD steps from noise"
    assert chain_words({"sweeps": 5, "steps": 20}) == "5 augmented sweeps of 20 SGLD steps (the demo's chain)"
    assert chain_words({"sweeps": 10, "steps": 20}) == "10 augmented sweeps of 20 SGLD steps"
