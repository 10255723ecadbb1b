#!/usr/bin/env python
"""Evaluate a trained CLEL export the way the paper does; writes eval.json and eval.md into --out.

    python scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10              # everything, defaults
    python scripts/evaluate.py --weights weights/cifar10 --fid-samples 1000 --ood --out /tmp/eval
    torchrun --nproc_per_node=8 scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10

Sections (each on by default, each can be turned off with --no-<section>):
  FID/KID      unconditional samples vs the shared CIFAR-10 train set (TF-Inception 2015-12-05), FID-1k/10k/50k
  OOD          AUROC of s(x) and of the marginal energy, CIFAR-10 test vs each OOD set (Table 1c), histograms
  conditional  class-conditional samples judged by the CIFAR-10 judge: confusion matrix (Fig. 3c)
  compositional  attribute compositions on the CelebA export judged by the attribute judge (Fig. 4b)
  knn          kNN accuracy of the encoder h on CIFAR-10 (and nearest-prototype accuracy)

Generation is batched, resumable (rerun the same command after a kill) and shardable: under torchrun every rank
draws its share of the FID batches, rank 0 then computes all metrics. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


import torch

from clel.data import DataError
from clel.evaluation import EvaluationError, default_data_root
from clel.judges import JUDGE_DIR, JudgeError
from clel.sampling import SAMPLING

REPO = Path(__file__).resolve().parents[1]


def _ref_samples(v: str) -> str:
    if v in ("auto", "all") or (v.isdigit() and int(v) >= 2):
        return v
    raise argparse.ArgumentTypeError(f"expected auto, all or a number of images >= 2, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("general")
    g.add_argument("--weights", required=True, help="CLEL export folder (config.json + model.safetensors) or "
                   "Hugging Face repo id; the CIFAR-10 model")
    g.add_argument("--out", help="output folder for eval.json, eval.md, figures/ and samples/ "
                   "(default: eval/<weights folder name>)")
    g.add_argument("--data", default=str(default_data_root()),
                   help="offline data root with cifar10/, dtd10/, celeba/ (default: $CLEL_DATA or ../shared/data)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available; under torchrun each rank uses cuda:LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0, help="seed of every chain and subset (default 0)")
    g.add_argument("--fid", action=B, default=True, help="FID/KID section (default on)")
    g.add_argument("--ood", action=B, default=True, help="OOD AUROC section (default on)")
    g.add_argument("--conditional", action=B, default=True, help="judged class-conditional section (default on)")
    g.add_argument("--compositional", action=B, default=True, help="judged compositional section (default on)")
    g.add_argument("--knn", action=B, default=True, help="encoder kNN section (default on)")

    f = p.add_argument_group("FID / KID")
    f.add_argument("--fid-samples", type=int, default=50000,
                   help="number of unconditional samples (default 50000); FID-1k/10k/50k use the first 1k/10k/50k")
    f.add_argument("--fid-protocol", choices=("reference", "paper"), default="reference",
                   help="reference (default): 10 sweeps of the training chain from uniform noise, strong "
                   "augmentation and 0.1%% reset before each sweep; paper: 10 x the training steps in one chain")
    f.add_argument("--fid-sweeps", type=int, help="override the number of sweeps")
    f.add_argument("--fid-steps", type=int, help="override the SGLD steps per sweep (default: the model's, 60)")
    f.add_argument("--fid-batch", type=int, default=250,
                   help="samples per batch and per shard file (default 250); changing it changes the samples")
    f.add_argument("--fid-ref-samples", default="auto", type=_ref_samples,
                   help="CIFAR-10 train images for the reference statistics: all, a number (seeded subset), or "
                   "auto (default: all 50,000 on GPU; on CPU, where Inception runs at a few images/s, max(2000, "
                   "--fid-samples))")
    f.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets (default 100)")
    f.add_argument("--kid-subset-size", type=int, default=1000, help="KID: subset size (default 1000)")
    f.add_argument("--inception-batch", type=int, default=100, help="images per Inception forward (default 100)")
    f.add_argument("--resume", action=B, default=True,
                   help="reuse finished sample shards in --out (default on); --no-resume regenerates them")

    o = p.add_argument_group("OOD")
    o.add_argument("--ood-limit", type=int, help="seeded random subset of at most this many images per set")
    o.add_argument("--ood-beta", type=float, help="β of s(x) (default: the config's ood_beta, 0.1)")
    o.add_argument("--svhn", help="SVHN root (torchvision layout); default <data>/svhn, else 'not installed'")
    o.add_argument("--cifar100", help="CIFAR-100 root (torchvision layout); default <data>/cifar100")

    c = p.add_argument_group("judged conditional and compositional quality")
    c.add_argument("--judges", default=str(JUDGE_DIR),
                   help=f"folder with the judge weights (default {JUDGE_DIR.relative_to(REPO)})")
    c.add_argument("--celeba-weights", default=str(REPO / "weights" / "celeba64"),
                   help="CelebA export for the compositional section (default weights/celeba64)")
    c.add_argument("--cond-per-class", type=int, default=100,
                   help="class-conditional samples per class (default 100)")
    c.add_argument("--comp-samples", type=int, default=100, help="samples per attribute composition (default 100)")
    c.add_argument("--sampling", choices=sorted(SAMPLING), default="measured",
                   help="defaults of --guidance and --direction: measured (clel.sampling.DEFAULTS, chosen by "
                   "scripts/sweep_sampling.py) or paper (default measured)")
    c.add_argument("--guidance", type=float, default=None,
                   help="sampling-time β of the latent term (default: --sampling's for classes / attributes)")
    c.add_argument("--direction", choices=("mean", "contrast"), default=None,
                   help="concept latents: the paper's mean direction or the contrast with the rest (default: "
                   "--sampling's)")
    c.add_argument("--cond-steps", type=int,
                   help="SGLD steps of conditional chains from uniform noise (default: 10 x the model's, 600)")
    c.add_argument("--cond-step-size", type=float, help="SGLD step size (default: the model's, 100)")
    c.add_argument("--cond-noise", type=float, help="SGLD noise (default: the model's, 0.001)")
    c.add_argument("--cond-batch", type=int, default=250, help="chains run together (default 250)")

    k = p.add_argument_group("encoder kNN")
    k.add_argument("--knn-k", type=int, default=200, help="neighbours (default 200)")
    k.add_argument("--knn-train-limit", type=int, help="seeded subset of the 50,000 training images")
    k.add_argument("--knn-test-limit", type=int, help="seeded subset of the 10,000 test images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (EvaluationError, JudgeError, DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _shown_path(path: str | None) -> str | None:
    """A path as the report shows it: relative to the repository when inside it (reports travel)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from clel import evaluation as ev
    from clel.distributed import dist_info
    from clel.weights import WeightsError, load_pretrained

    rank, world, local = dist_info()
    device = args.device
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    try:
        model, cfg, extras = load_pretrained(args.weights, device=device)
    except WeightsError as e:
        raise EvaluationError(f"--weights {args.weights}: {e}") from None
    model.requires_grad_(False)
    out = Path(args.out) if args.out else REPO / "eval" / Path(str(args.weights)).name
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    settings_gen = ev.GenerateSettings.for_model(model, args.fid_protocol, sweeps=args.fid_sweeps,
                                                 steps=args.fid_steps, seed=args.seed, batch_size=args.fid_batch)

    if args.fid:
        _say(f"generating {args.fid_samples} samples ({settings_gen.sweeps} x {settings_gen.steps} steps) on "
             f"{device}, rank {rank}/{world}")
        gen_info = ev.generate(model, args.fid_samples, out, settings_gen, resume=args.resume,
                               feature_batch=args.inception_batch, log=_say)
        if rank != 0:
            return 0
    elif rank != 0:
        return 0

    report: dict = {"weights": {"path": str(extras.get("path", args.weights)), "source": extras.get("source"),
                                "dataset": cfg.dataset, "arch": cfg.arch, "iteration": extras.get("iteration"),
                                "image_size": cfg.image_size},
                    "device": str(device), "world_size": world, "seed": args.seed, "timings_s": {}}

    def save() -> None:
        from clel.weights import write_json_atomic

        write_json_atomic(report, out / "eval.json")
        (out / "eval.md").write_text(ev.markdown_report(report))

    def section(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except (EvaluationError, JudgeError, DataError, FileNotFoundError, WeightsError) as e:
            report[name] = {"status": f"skipped: {e}"}
            _say(f"{name}: skipped: {e}")
        report["timings_s"][name] = time.perf_counter() - t0
        save()

    # ---------------------------------------------------------------- FID
    def fid_section() -> dict:
        ev.wait_for_samples(out, args.fid_samples, settings_gen.batch_size)
        feats = ev.sample_features(out, args.fid_samples, settings_gen.batch_size, device, args.inception_batch)
        ref_n = args.fid_ref_samples
        note = None
        if ref_n == "all":
            limit = None
        elif ref_n == "auto":
            limit = None if str(device).startswith("cuda") else min(50000, max(2000, args.fid_samples))
            if limit is not None and limit < 50000:
                note = (f"CPU default: reference statistics from a seeded {limit}-image subset of the train set; "
                        "pass --fid-ref-samples all for the standard whole-train-set statistics")
                _say(note)
        else:
            limit = int(ref_n)
        _say(f"reference statistics ({'all' if limit is None else limit} CIFAR-10 train images; cached)")
        stats, ref_feats, ref_info = ev.train_reference(data, limit, device, feature_batch=args.inception_batch)
        res = ev.fid_report(feats, stats, ref_feats, kid_subsets=args.kid_subsets,
                            kid_subset_size=args.kid_subset_size)
        if note:
            ref_info["note"] = note
        samples = ev.load_samples(out, min(args.fid_samples, 100), settings_gen.batch_size)
        ev.save_grid(samples, out / "figures" / "fid_samples.png", nrow=10)
        res.update(reference=ref_info, protocol=args.fid_protocol, settings=settings_gen.key(),
                   generation=gen_info, grid="figures/fid_samples.png")
        _say(f"FID: {({k: v for k, v in res.items() if k.startswith('fid_') or k == 'kid'})}")
        return res

    if args.fid:
        section("fid", fid_section)

    # ---------------------------------------------------------------- OOD
    def ood_section() -> dict:
        sets, missing = ev.ood_sets(data, args.ood_limit, args.seed, args.svhn, args.cifar100)
        res, raw = ev.ood_evaluate(model, sets, missing, args.ood_beta, log=_say)
        res["figures"] = ev.ood_figures(raw, out)
        _say("OOD AUROC s(x) / E(x): " + ", ".join(
            f"{k} {v['auroc_score'] if v['auroc_score'] is None else round(v['auroc_score'], 4)} / "
            f"{v['auroc_energy']:.4f}" for k, v in res["sets"].items() if v.get("status") == "ok"))
        return res

    if args.ood:
        section("ood", ood_section)

    from clel.sampling import ChainSettings

    defaults = SAMPLING[args.sampling]

    def guidance(mode: str) -> float:
        # the judged sections run one plain chain from noise (chain_for)
        return args.guidance if args.guidance is not None else defaults.guidance(mode, "plain")

    def chain_for(m) -> ChainSettings:
        return ChainSettings.from_model(m, steps=args.cond_steps or 10 * m.cfg.sgld_steps,
                                        step_size=args.cond_step_size, noise=args.cond_noise)

    # ---------------------------------------------------------------- class-conditional
    def conditional_section() -> dict:
        from clel.judges import CIFAR10_JUDGE, load_judge

        if extras.get("class_prototypes") is None:
            raise EvaluationError(f"{args.weights} carries no class prototypes")
        judge = load_judge(Path(args.judges) / CIFAR10_JUDGE, device)
        classes = list(extras.get("classes") or judge.labels)
        direction = args.direction or ev.default_direction(extras, "class", defaults)
        res, samples = ev.class_conditional_eval(model, ev.class_latents(extras, classes, direction), classes, judge,
                                                 args.cond_per_class, guidance("class"), chain_for(model), args.seed,
                                                 args.cond_batch, log=_say)
        res["direction"] = direction
        grid = torch.cat([samples[c][:10] for c in classes])
        ev.save_grid(grid, out / "figures" / "class_conditional.png", nrow=min(10, args.cond_per_class))
        ev.confusion_png(res["confusion"], classes, out / "figures" / "confusion.png",
                         "class-conditional samples judged by the CIFAR-10 classifier")
        ev.plotly_confusion_html(res["confusion"], classes, out / "figures" / "confusion.html",
                                 "Class-conditional samples: P(judged class | conditioned class)")
        test = judge.info.get("test", {})
        res["judge"] = {"path": _shown_path(judge.path), "test_accuracy": test.get("accuracy")}
        res["figures"] = {"grid": "figures/class_conditional.png", "confusion_png": "figures/confusion.png",
                          "confusion_html": "figures/confusion.html"}
        return res

    if args.conditional:
        section("conditional", conditional_section)

    # ---------------------------------------------------------------- compositional (CelebA)
    def compositional_section() -> dict:
        from clel.judges import CELEBA_JUDGE, load_judge

        if not Path(args.celeba_weights).is_dir():
            raise EvaluationError(f"no CelebA export at {args.celeba_weights} (pass --celeba-weights)")
        judge = load_judge(Path(args.judges) / CELEBA_JUDGE, device)
        cmodel, ccfg, cextras = load_pretrained(args.celeba_weights, device=device)
        cmodel.requires_grad_(False)
        res, samples = ev.compositional_eval(cmodel, cextras, judge, ev.default_compositions(), args.comp_samples,
                                             guidance("attributes"), chain_for(cmodel), args.seed, args.cond_batch,
                                             log=_say,
                                             direction=args.direction or ev.default_direction(cextras, "attributes",
                                                                                              defaults))
        grid = torch.cat([v[:8] for v in samples.values()])
        ev.save_grid(grid, out / "figures" / "compositional.png", nrow=min(8, args.comp_samples))
        test = judge.info.get("test", {})
        res["judge"] = {"path": _shown_path(judge.path), "test_accuracy": test.get("accuracy")}
        res["weights"] = _shown_path(str(cextras.get("path", args.celeba_weights)))
        res["figures"] = {"grid": "figures/compositional.png (one row per condition, in table order)"}
        return res

    if args.compositional:
        section("compositional", compositional_section)

    # ---------------------------------------------------------------- encoder kNN
    def knn_section() -> dict:
        from clel.data import load_cifar10

        root = data / "cifar10" if (data / "cifar10").is_dir() else data
        tr, te = load_cifar10(root, "train"), load_cifar10(root, "test")
        g = torch.Generator().manual_seed(args.seed)

        def subset(x, y, limit):
            if limit and limit < len(x):
                idx = torch.randperm(len(x), generator=g)[:limit]
                return x[idx], y[idx]
            return x, y

        xtr, ytr = subset(tr.images, tr.labels, args.knn_train_limit)
        xte, yte = subset(te.images, te.labels, args.knn_test_limit)
        return ev.encoder_eval(model, xtr, ytr, xte, yte, k=args.knn_k, prototypes=extras.get("class_prototypes"))

    if args.knn:
        section("encoder", knn_section)

    save()
    _say(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    print(json.dumps({"eval_json": str(out / "eval.json"), "eval_md": str(out / "eval.md")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
