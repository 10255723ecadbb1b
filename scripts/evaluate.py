#!/usr/bin/env python
"""Evaluate a trained CLEL export the way the paper does; writes eval.json and eval.md into --out.

    python scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10              # everything, defaults
    python scripts/evaluate.py --weights weights/cifar10 --fid-samples 1000 --ood --out /tmp/eval
    torchrun --nproc_per_node=8 scripts/evaluate.py --weights weights/cifar10 --out eval/cifar10

Sections (each on by default, each can be turned off with --no-<section>):
  FID/KID      unconditional samples vs the shared CIFAR-10 train set (TF-Inception 2015-12-05), FID-1k/10k/50k,
               and the same in the CIFAR-10 judge's features (fd_judge_1k/..., kid_judge: no model trains with them)
  OOD          AUROC of s(x) and of the marginal energy, CIFAR-10 test vs each OOD set (Table 1c), histograms
  conditional  class-conditional samples judged by the CIFAR-10 judge: confusion matrix (Fig. 3c)
  compositional  attribute compositions on the CelebA export judged by the attribute judge of its image size
               (Fig. 4b), and fd_judge / kid_judge of its unconditional samples against real faces
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
from clel.data.ood import ood_sets
from clel.eval import EvaluationError, default_data_root
from clel.eval.fid import GenerateSettings, fid_report, generate, judge_report, load_samples, sample_features, \
    train_images, train_reference, wait_for_samples
from clel.eval.judged import class_conditional_eval, compositional_eval, default_compositions, encoder_eval
from clel.eval.judges import CIFAR10_JUDGE, CIFAR10_ROBUST_JUDGE, JUDGE_DIR, JudgeError
from clel.eval.ood import ood_evaluate
from clel.eval.report import confusion_png, markdown_report, ood_figures, plotly_confusion_html
from clel.images import save_grid
from clel.sampling import SAMPLING, ChainSettings, SamplingError, class_latents, default_direction

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
    c.add_argument("--cifar10-judge", default=CIFAR10_JUDGE,
                   help=f"file in --judges that scores class-conditional samples (default {CIFAR10_JUDGE}; "
                   f"{CIFAR10_ROBUST_JUDGE} is the one fine-tuned on blurred, noisy and down-sampled images)")
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
    c.add_argument("--guidance-ramp", type=float, default=None,
                   help="judged chains: guidance ramped up from 0 over this fraction (default: --sampling's)")
    c.add_argument("--guidance-bound", type=float, default=None,
                   help="judged chains: latent pull capped at this many times the marginal's (0: none; default none)")
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


class Evaluation:
    """The sections of one evaluation run; each writes its part of eval.json (and eval.md) when it ends."""

    def __init__(self, args: argparse.Namespace):
        from clel.distributed import dist_info
        from clel.weights import WeightsError, load_pretrained

        self.args = args
        self.rank, self.world, local = dist_info()
        self.device = args.device
        if self.world > 1 and self.device.startswith("cuda"):
            self.device = f"cuda:{local}"
            torch.cuda.set_device(local)
        try:
            self.model, self.cfg, self.extras = load_pretrained(args.weights, device=self.device)
        except WeightsError as e:
            raise EvaluationError(f"--weights {args.weights}: {e}") from None
        self.model.requires_grad_(False)
        self.out = Path(args.out) if args.out else REPO / "eval" / Path(str(args.weights)).name
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = Path(args.data)
        self.gen = GenerateSettings.for_model(self.model, args.fid_protocol, sweeps=args.fid_sweeps,
                                              steps=args.fid_steps, seed=args.seed, batch_size=args.fid_batch)
        self.gen_info: dict = {}
        self.defaults = SAMPLING[args.sampling]
        self.report: dict = {
            "weights": {"path": str(self.extras.get("path", args.weights)), "source": self.extras.get("source"),
                        "dataset": self.cfg.dataset, "arch": self.cfg.arch, "iteration": self.extras.get("iteration"),
                        "image_size": self.cfg.image_size},
            "device": str(self.device), "world_size": self.world, "seed": args.seed, "timings_s": {}}

    def generate(self) -> None:
        """Every rank draws its share of the FID samples (rank 0 then computes the metrics)."""
        _say(f"generating {self.args.fid_samples} samples ({self.gen.sweeps} x {self.gen.steps} steps) on "
             f"{self.device}, rank {self.rank}/{self.world}")
        self.gen_info = generate(self.model, self.args.fid_samples, self.out, self.gen, resume=self.args.resume,
                                 feature_batch=self.args.inception_batch, log=_say)

    def save(self) -> None:
        from clel.weights import write_json_atomic

        write_json_atomic(self.report, self.out / "eval.json")
        (self.out / "eval.md").write_text(markdown_report(self.report))

    def section(self, name: str, fn) -> None:
        """Run one section; bad input or missing data skips it with the reason instead of ending the run."""
        from clel.weights import WeightsError

        t0 = time.perf_counter()
        try:
            self.report[name] = fn()
        except (EvaluationError, SamplingError, JudgeError, DataError, FileNotFoundError, WeightsError) as e:
            self.report[name] = {"status": f"skipped: {e}"}
            _say(f"{name}: skipped: {e}")
        self.report["timings_s"][name] = time.perf_counter() - t0
        self.save()

    def fid(self) -> dict:
        args, out = self.args, self.out
        wait_for_samples(out, args.fid_samples, self.gen.batch_size)
        feats = sample_features(out, args.fid_samples, self.gen.batch_size, self.device, args.inception_batch)
        note = None
        if args.fid_ref_samples == "all":
            limit = None
        elif args.fid_ref_samples == "auto":
            limit = None if str(self.device).startswith("cuda") else min(50000, max(2000, args.fid_samples))
            if limit is not None and limit < 50000:
                note = (f"CPU default: reference statistics from a seeded {limit}-image subset of the train set; "
                        "pass --fid-ref-samples all for the standard whole-train-set statistics")
                _say(note)
        else:
            limit = int(args.fid_ref_samples)
        _say(f"reference statistics ({'all' if limit is None else limit} CIFAR-10 train images; cached)")
        stats, ref_feats, ref_info = train_reference(self.data, limit, self.device, feature_batch=args.inception_batch)
        res = fid_report(feats, stats, ref_feats, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size)
        if note:
            ref_info["note"] = note
        res.update(self.judge_distances(load_samples(out, args.fid_samples, self.gen.batch_size),
                                        lambda: train_images(self.data, limit), Path(args.judges) / args.cifar10_judge))
        samples = load_samples(out, min(args.fid_samples, 100), self.gen.batch_size)
        save_grid(samples, out / "figures" / "fid_samples.png", nrow=10)
        res.update(reference=ref_info, protocol=args.fid_protocol, settings=self.gen.key(), generation=self.gen_info,
                   grid="figures/fid_samples.png")
        _say(f"FID: {({k: v for k, v in res.items() if k.startswith(('fid_', 'kid', 'fd_judge_'))})}")
        return res

    def judge_distances(self, samples, reference, judge, sizes=(1000, 10000, 50000)) -> dict:
        """FD and KID in a judge's features (clel.eval.fid.judge_report); ``reference``: a function that loads the
        real images; ``judge``: a judge or its file. What is missing is said in ``fd_judge_status``, not fatal to
        the section."""
        from clel.eval.judges import load_judge

        try:
            judge = load_judge(judge, self.device) if isinstance(judge, (str, Path)) else judge
            return judge_report(judge, samples, reference(), sizes, self.args.kid_subsets, self.args.kid_subset_size)
        except (JudgeError, EvaluationError, DataError, FileNotFoundError) as e:
            _say(f"judge-feature distances: skipped: {e}")
            return {"feature_judge": None, "fd_judge_status": f"skipped: {e}"}

    def ood(self) -> dict:
        args = self.args
        sets, missing = ood_sets(self.data, args.ood_limit, args.seed, args.svhn, args.cifar100)
        res, raw = ood_evaluate(self.model, sets, missing, args.ood_beta, log=_say)
        res["figures"] = ood_figures(raw, self.out)
        _say("OOD AUROC s(x) / E(x): " + ", ".join(
            f"{k} {v['auroc_score'] if v['auroc_score'] is None else round(v['auroc_score'], 4)} / "
            f"{v['auroc_energy']:.4f}" for k, v in res["sets"].items() if v.get("status") == "ok"))
        return res

    def guidance(self, mode: str) -> float:
        # the judged sections run one plain chain from noise (chain_for)
        return self.args.guidance if self.args.guidance is not None else self.defaults.guidance(mode, "plain")

    def chain_for(self, m) -> ChainSettings:
        a = self.args
        return ChainSettings.from_model(m, steps=a.cond_steps or 10 * m.cfg.sgld_steps, step_size=a.cond_step_size,
                                        noise=a.cond_noise, **self.defaults.controls("plain", a.guidance_ramp,
                                                                                     a.guidance_bound))

    def conditional(self) -> dict:
        from clel.eval.judges import load_judge

        args, extras, figs = self.args, self.extras, self.out / "figures"
        if extras.get("class_prototypes") is None:
            raise EvaluationError(f"{args.weights} carries no class prototypes")
        judge = load_judge(Path(args.judges) / args.cifar10_judge, self.device)
        classes = list(extras.get("classes") or judge.labels)
        direction = args.direction or default_direction(extras, "class", self.defaults)
        res, samples = class_conditional_eval(self.model, class_latents(extras, classes, direction), classes, judge,
                                              args.cond_per_class, self.guidance("class"), self.chain_for(self.model),
                                              args.seed, args.cond_batch, log=_say)
        res["direction"] = direction
        grid = torch.cat([samples[c][:10] for c in classes])
        save_grid(grid, figs / "class_conditional.png", nrow=min(10, args.cond_per_class))
        confusion_png(res["confusion"], classes, figs / "confusion.png",
                      "class-conditional samples judged by the CIFAR-10 classifier")
        plotly_confusion_html(res["confusion"], classes, figs / "confusion.html",
                              "Class-conditional samples: P(judged class | conditioned class)")
        res["judge"] = {"path": _shown_path(judge.path), "test_accuracy": judge.info.get("test", {}).get("accuracy")}
        res["figures"] = {"grid": "figures/class_conditional.png", "confusion_png": "figures/confusion.png",
                          "confusion_html": "figures/confusion.html"}
        return res

    def compositional(self) -> dict:
        from clel.eval.judges import celeba_judge_path, load_judge
        from clel.weights import load_pretrained

        args = self.args
        if not Path(args.celeba_weights).is_dir():
            raise EvaluationError(f"no CelebA export at {args.celeba_weights} (pass --celeba-weights)")
        cmodel, ccfg, cextras = load_pretrained(args.celeba_weights, device=self.device)
        judge = load_judge(celeba_judge_path(args.judges, ccfg.image_size), self.device)  # of the model's face size
        cmodel.requires_grad_(False)
        direction = args.direction or default_direction(cextras, "attributes", self.defaults)
        res, samples = compositional_eval(cmodel, cextras, judge, default_compositions(), args.comp_samples,
                                          self.guidance("attributes"), self.chain_for(cmodel), args.seed,
                                          args.cond_batch, log=_say, direction=direction)
        grid = torch.cat([v[:8] for v in samples.values()])
        save_grid(grid, self.out / "figures" / "compositional.png", nrow=min(8, args.comp_samples))
        uncond = samples["unconditional"]
        res["unconditional"] = {"samples": len(uncond), **self.judge_distances(
            uncond, lambda: celeba_reference(self.data, ccfg.image_size, seed=args.seed), judge, sizes=())}
        res["judge"] = {"path": _shown_path(judge.path), "test_accuracy": judge.info.get("test", {}).get("accuracy"),
                        "image_size": judge.spec.image_size}
        res["weights"] = _shown_path(str(cextras.get("path", args.celeba_weights)))
        res["figures"] = {"grid": "figures/compositional.png (one row per condition, in table order)"}
        return res

    def encoder(self) -> dict:
        from clel.data import load_cifar10

        args, data = self.args, self.data
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
        return encoder_eval(self.model, xtr, ytr, xte, yte, k=args.knn_k,
                            prototypes=self.extras.get("class_prototypes"))


def celeba_reference(data: Path, size: int, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """A seeded subset of ``n`` shared CelebA faces at ``size``: the real faces of the judge-feature distances."""
    from clel.data import load_celeba

    root = data / "celeba" if (data / "celeba").is_dir() else data
    images = load_celeba(root, image_size=size).images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx.sort().values]


def run(args: argparse.Namespace) -> int:
    ev = Evaluation(args)
    if args.fid:
        ev.generate()
    if ev.rank != 0:
        return 0
    for name, on, fn in (("fid", args.fid, ev.fid), ("ood", args.ood, ev.ood),
                         ("conditional", args.conditional, ev.conditional),
                         ("compositional", args.compositional, ev.compositional), ("encoder", args.knn, ev.encoder)):
        if on:
            ev.section(name, fn)
    ev.save()
    _say(f"wrote {ev.out / 'eval.json'} and {ev.out / 'eval.md'}")
    print(json.dumps({"eval_json": str(ev.out / "eval.json"), "eval_md": str(ev.out / "eval.md")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
