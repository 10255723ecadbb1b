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


def test_bundle_weights_writes_the_fp16_export_its_ema_grids_and_card(tmp_path):
    """scripts/bundle_weights.py on a run whose export holds the live weights: the EMA of f and g comes along in
    fp16 (through clel.checkpoints' EMA file), beside the grids and the card."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from safetensors import safe_open

    from clel import CLEL
    from clel.checkpoints import EMA_NAME, read_ema, write_ema
    from clel.weights import export_pretrained

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    run, out = tmp_path / "run", tmp_path / "bundle"
    export_pretrained(CLEL(cfg).eval(), run, info={"weights": "live", "iteration": 4})
    ema = {k: v for k, v in CLEL(cfg).state_dict().items() if not k.startswith("h.")}
    write_ema(ema, run / EMA_NAME, iteration=4)
    (run / "metrics.jsonl").write_text(json.dumps({"event": "start", "time": 0.0, "config": cfg.to_dict()}) + "\n"
                                       + json.dumps({"iter": 4, "time": 2.0}) + "\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "bundle_weights.py"
    res = subprocess.run([sys.executable, str(script), "--run", str(run), "--out", str(out), "--preset", "tiny",
                          "--hardware", "a test", "--status", "Random weights.", "--samples", "4",
                          "--sample-steps", "2", "--reference-sweeps", "1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("config.json", "README.md", "samples.png", "samples-reference.png", EMA_NAME):
        assert (out / name).is_file(), name
    bundled = read_ema(out / EMA_NAME)
    assert bundled.keys() == ema.keys()
    assert all(torch.equal(bundled[k], v.half() if v.is_floating_point() else v) for k, v in ema.items())
    with safe_open(str(out / EMA_NAME), framework="pt") as f:
        assert f.metadata() == {"format": "clel-ema", "iteration": "4"}
