"""One evaluation run of a trained export, section by section, into eval.json and eval.md (``scripts/evaluate.py``).

The options are :class:`EvalOptions`, whose fields are the command line's flags (their help is the field
metadata). Sections: FID/KID of unconditional samples (and the same distances in the CIFAR-10 judge's features),
the same distances of the replay buffer shipped with the weights (the model's own long-run chains), OOD AUROC
(Table 1c), judged class-conditional samples (Fig. 3c), judged attribute compositions of the CelebA export
(Fig. 4b) and the encoder's kNN accuracy. A section that lacks its data or judge is skipped with the reason;
eval.json is rewritten after every section, so a long run shows its progress.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoints import REPLAY_BUFFER_NAME
from ..data import DataError, to_float
from ..images import save_grid
from ..runtime import option, pick_device
from ..sampling import SAMPLING, ChainSettings, SamplingError, class_latents
from ..weights import BUNDLED_WEIGHTS, REPO_ROOT, WeightsError, load_pretrained, write_json_atomic
from . import EvaluationError, default_data_root
from .fid import GenerateSettings, fid_report, generate, judge_report, load_samples, sample_features, train_images, \
    train_reference, wait_for_samples
from .judged import (class_conditional_eval, compositional_eval, default_compositions, encoder_eval, lookalike_eval,
                     lookalike_uploads)
from .judges import CIFAR10_JUDGE, CIFAR10_ROBUST_JUDGE, JUDGE_DIR, JudgeError, celeba_judge_path, load_judge
from .report import confusion_png, markdown_report, ood_figures, plotly_confusion_html

GENERAL, FID, OOD = "general", "FID / KID", "OOD"
JUDGED, KNN = "judged conditional and compositional quality", "encoder kNN"
# the chain settings the command line may set, field -> option: the FID protocol's and the judged chains'
FID_CHAIN = {"sweeps": "--fid-sweeps", "steps": "--fid-steps"}
JUDGED_CHAIN = {"guidance": "--guidance", "direction": "--direction", "guidance_ramp": "--guidance-ramp",
                "guidance_bound": "--guidance-bound", "steps": "--cond-steps", "step_size": "--cond-step-size",
                "noise": "--cond-noise", "sweeps": "--cond-sweeps"}  # --cond-sweeps 5: the demo's own chain


def ref_samples(v: str) -> str:
    """--fid-ref-samples: auto, all or a number of images >= 2."""
    if v in ("auto", "all") or (v.isdigit() and int(v) >= 2):
        return v
    raise argparse.ArgumentTypeError(f"expected auto, all or a number of images >= 2, got {v!r}")


@dataclass
class EvalOptions:
    """What to evaluate and how: the flags of ``scripts/evaluate.py``."""

    weights: str = option(help="CLEL export folder (config.json + model.safetensors) or Hugging Face repo id; "
                          "the CIFAR-10 model", group=GENERAL)
    out: str | None = option(None, "output folder for eval.json, eval.md, figures/ and samples/ (default: "
                             "eval/<weights folder name>)", group=GENERAL)
    data: str = option(str(default_data_root()), "offline data root with cifar10/, dtd10/, celeba/ (default: "
                       "$CLEL_DATA or ../shared/data)", group=GENERAL)
    device: str = option("auto", "torch device (default: cuda when available; under torchrun each rank uses "
                         "cuda:LOCAL_RANK)", group=GENERAL)
    seed: int = option(0, "seed of every chain and subset (default 0)", group=GENERAL)
    fid: bool = option(True, "FID/KID section (default on)", group=GENERAL)
    buffer: bool = option(True, "replay-buffer section: FID/KID and judge FD of the replay buffer shipped with "
                          "--weights, the model's own long-run chains (default on)", group=GENERAL)
    ood: bool = option(True, "OOD AUROC section (default on)", group=GENERAL)
    conditional: bool = option(True, "judged class-conditional section (default on)", group=GENERAL)
    compositional: bool = option(True, "judged compositional section (default on)", group=GENERAL)
    knn: bool = option(True, "encoder kNN section (default on)", group=GENERAL)
    lookalikes: bool = option(True, "look-alike section: held-out uploads, judged (default on)", group=GENERAL)

    fid_samples: int = option(50000, "number of unconditional samples (default 50000); FID-1k/10k/50k use the "
                              "first 1k/10k/50k", group=FID)
    fid_protocol: str = option("reference", "reference (default): 10 sweeps of the training chain from uniform "
                               "noise, strong augmentation and 0.1%% reset before each sweep; paper: 10 x the "
                               "training steps in one chain", choices=("reference", "paper"), group=FID)
    fid_batch: int = option(250, "samples per batch and per shard file (default 250); changing it changes the "
                            "samples", group=FID)
    fid_ref_samples: str = option("auto", "CIFAR-10 train images for the reference statistics: all, a number "
                                  "(seeded subset), or auto (default: all 50,000 on GPU; on CPU, where Inception "
                                  "runs at a few images/s, max(2000, --fid-samples))", type=ref_samples, group=FID)
    kid_subsets: int = option(100, "KID: number of random subsets (default 100)", group=FID)
    kid_subset_size: int = option(1000, "KID: subset size (default 1000)", group=FID)
    inception_batch: int = option(100, "images per Inception forward (default 100)", group=FID)
    resume: bool = option(True, "reuse finished sample shards in --out (default on); --no-resume regenerates them",
                          group=FID)

    ood_limit: int | None = option(None, "seeded random subset of at most this many images per set", group=OOD)
    ood_beta: float | None = option(None, "β of s(x) (default: the config's ood_beta, 0.1)", group=OOD)
    svhn: str | None = option(None, "SVHN root (torchvision layout); default <data>/svhn, else 'not installed'",
                              group=OOD)
    cifar100: str | None = option(None, "CIFAR-100 root (torchvision layout); default <data>/cifar100", group=OOD)

    judges: str = option(str(JUDGE_DIR), f"folder with the judge weights (default "
                         f"{JUDGE_DIR.relative_to(REPO_ROOT)})", group=JUDGED)
    cifar10_judge: str = option(CIFAR10_JUDGE, f"file in --judges that scores class-conditional samples (default "
                                f"{CIFAR10_JUDGE}; {CIFAR10_ROBUST_JUDGE} is the one fine-tuned on blurred, noisy "
                                "and down-sampled images)", group=JUDGED)
    celeba_weights: str = option(str(BUNDLED_WEIGHTS / "celeba32"), "CelebA export for the compositional section "
                                 "(default weights/celeba32)", group=JUDGED)
    cond_per_class: int = option(100, "class-conditional samples per class (default 100)", group=JUDGED)
    comp_samples: int = option(100, "samples per attribute composition (default 100)", group=JUDGED)
    sampling: str = option("measured", "defaults of --guidance and --direction: measured (clel.sampling.SAMPLING, "
                           "chosen by measure/sweep_sampling.py) or paper (default measured)",
                           choices=sorted(SAMPLING), group=JUDGED)
    cond_batch: int = option(250, "chains run together (default 250)", group=JUDGED)
    lookalike_uploads: int = option(50, "look-alikes: held-out images used as uploads (CIFAR-10 test images, or "
                                    "the last 1,000 faces; default 50)", group=JUDGED)
    lookalike_samples: int = option(4, "look-alikes drawn per upload, at the demo's chain (default 4)",
                                    group=JUDGED)

    knn_k: int = option(200, "neighbours (default 200)", group=KNN)
    knn_train_limit: int | None = option(None, "seeded subset of the 50,000 training images", group=KNN)
    knn_test_limit: int | None = option(None, "seeded subset of the 10,000 test images", group=KNN)

    # chain settings (clel.sampling.ChainSettings) given on the command line (FID_CHAIN, JUDGED_CHAIN), by field
    fid_chain: dict = field(default_factory=dict, metadata={"flags": FID_CHAIN, "group": FID})
    judged_chain: dict = field(default_factory=dict, metadata={"flags": JUDGED_CHAIN, "group": JUDGED})


def shown_path(path: str | None) -> str | None:
    """A path as the report shows it: relative to the repository when inside it (reports travel)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def celeba_reference(data: Path, size: int, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """A seeded subset of ``n`` shared CelebA faces at ``size``: the real faces of the judge-feature distances."""
    from ..data import load_celeba

    root = data / "celeba" if (data / "celeba").is_dir() else data
    images = load_celeba(root, image_size=size).images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx.sort().values]


class Evaluation:
    """The sections of one evaluation run; each writes its part of eval.json (and eval.md) when it ends."""

    def __init__(self, args: EvalOptions):
        from ..distributed import dist_info

        self.args = args
        self.rank, self.world, local = dist_info()
        self.device = str(pick_device(args.device))
        if self.world > 1 and self.device.startswith("cuda"):
            self.device = f"cuda:{local}"
            torch.cuda.set_device(local)
        try:
            self.model, self.cfg, self.extras = load_pretrained(args.weights, device=self.device)
        except WeightsError as e:
            raise EvaluationError(f"--weights {args.weights}: {e}") from None
        self.model.requires_grad_(False)
        self.out = Path(args.out) if args.out else REPO_ROOT / "eval" / Path(str(args.weights)).name
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = Path(args.data)
        self.gen = GenerateSettings.for_model(self.model, args.fid_protocol, args.seed, args.fid_batch,
                                              **args.fid_chain)
        self.gen_info: dict = {}
        self.report: dict = {
            "weights": {"path": str(self.extras.get("path", args.weights)), "source": self.extras.get("source"),
                        "dataset": self.cfg.dataset, "arch": self.cfg.arch, "iteration": self.extras.get("iteration"),
                        "image_size": self.cfg.image_size},
            "device": str(self.device), "world_size": self.world, "seed": args.seed, "timings_s": {}}

    def generate(self) -> None:
        """Every rank draws its share of the FID samples (rank 0 then computes the metrics)."""
        say(f"generating {self.args.fid_samples} samples ({self.gen.chain.sweeps} x {self.gen.chain.steps} steps) on "
            f"{self.device}, rank {self.rank}/{self.world}")
        self.gen_info = generate(self.model, self.args.fid_samples, self.out, self.gen, resume=self.args.resume,
                                 feature_batch=self.args.inception_batch, log=say)

    def save(self) -> None:
        write_json_atomic(self.report, self.out / "eval.json")
        (self.out / "eval.md").write_text(markdown_report(self.report))

    def section(self, name: str, fn) -> None:
        """Run one section; bad input or missing data skips it with the reason instead of ending the run."""
        t0 = time.perf_counter()
        try:
            self.report[name] = fn()
        except (EvaluationError, SamplingError, JudgeError, DataError, FileNotFoundError, WeightsError) as e:
            self.report[name] = {"status": f"skipped: {e}"}
            say(f"{name}: skipped: {e}")
        self.report["timings_s"][name] = time.perf_counter() - t0
        self.save()

    def reference_limit(self) -> tuple[int | None, str | None]:
        """CIFAR-10 train images of the FID reference (None: all of them), and a note when a CPU default cut them."""
        n, want = self.args.fid_samples, self.args.fid_ref_samples
        if want == "all":
            return None, None
        if want != "auto":
            return int(want), None
        limit = None if str(self.device).startswith("cuda") else min(50000, max(2000, n))
        if limit is None or limit >= 50000:
            return limit, None
        note = (f"CPU default: reference statistics from a seeded {limit}-image subset of the train set; "
                "pass --fid-ref-samples all for the standard whole-train-set statistics")
        say(note)
        return limit, note

    def fid(self) -> dict:
        args, out = self.args, self.out
        wait_for_samples(out, args.fid_samples, self.gen.batch_size)
        feats = sample_features(out, args.fid_samples, self.gen.batch_size, self.device, args.inception_batch)
        limit, note = self.reference_limit()
        say(f"reference statistics ({'all' if limit is None else limit} CIFAR-10 train images; cached)")
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
        say(f"FID: {({k: v for k, v in res.items() if k.startswith(('fid_', 'kid', 'fd_judge_'))})}")
        return res

    def buffer(self) -> dict:
        """FID/KID and the judge's FD of the replay buffer shipped with --weights (the model's own long-run chains)
        against the fid section's reference, so its FID-1k compares with the reference sampler's."""
        from .metrics import features, get_inception

        args, images = self.args, self.model.replay_buffer
        if images is None:
            raise EvaluationError(f"{args.weights} ships no replay buffer ({REPLAY_BUFFER_NAME} beside the export)")
        if self.cfg.dataset != "cifar10":
            raise EvaluationError(f"{args.weights} is a {self.cfg.dataset} model; the replay buffer is compared with "
                                  "CIFAR-10 (the compositional section scores a CelebA export's buffer)")
        say(f"replay buffer: Inception features of its {len(images)} images")
        feats = features(images, batch_size=args.inception_batch, model=get_inception(str(self.device)))
        limit, note = self.reference_limit()
        stats, ref_feats, ref_info = train_reference(self.data, limit, self.device, feature_batch=args.inception_batch)
        res = fid_report(feats, stats, ref_feats, sizes=(1000,), kid_subsets=args.kid_subsets,
                         kid_subset_size=args.kid_subset_size)
        res.pop("samples")
        if note:
            ref_info["note"] = note
        res.update(self.judge_distances(to_float(images), lambda: train_images(self.data, limit),
                                        Path(args.judges) / args.cifar10_judge, sizes=(1000,)))
        save_grid(images[:100], self.out / "figures" / "buffer.png", nrow=10)
        it = self.extras.get("replay_buffer_iteration") or self.extras.get("iteration")  # when saved, else the export's
        res = {"images": len(images), "iteration": it, **res, "reference": ref_info,
               "grid": "figures/buffer.png"}
        say(f"replay buffer: {({k: v for k, v in res.items() if k.startswith(('fid_', 'kid', 'fd_judge_'))})}")
        return res

    def judge_distances(self, samples, reference, judge, sizes=(1000, 10000, 50000)) -> dict:
        """FD and KID in a judge's features (clel.eval.fid.judge_report); ``reference``: a function that loads the
        real images; ``judge``: a judge or its file. What is missing is said in ``fd_judge_status``, not fatal to
        the section."""
        try:
            judge = load_judge(judge, self.device) if isinstance(judge, (str, Path)) else judge
            return judge_report(judge, samples, reference(), sizes, self.args.kid_subsets, self.args.kid_subset_size)
        except (JudgeError, EvaluationError, DataError, FileNotFoundError) as e:
            say(f"judge-feature distances: skipped: {e}")
            return {"feature_judge": None, "fd_judge_status": f"skipped: {e}"}

    def ood(self) -> dict:
        from ..data.ood import ood_sets
        from .ood import ood_evaluate

        args = self.args
        sets, missing = ood_sets(self.data, args.ood_limit, args.seed, args.svhn, args.cifar100)
        res, raw = ood_evaluate(self.model, sets, missing, args.ood_beta, log=say)
        res["figures"] = ood_figures(raw, self.out)
        say("OOD AUROC s(x) / E(x): " + ", ".join(
            f"{k} {v['auroc_score'] if v['auroc_score'] is None else round(v['auroc_score'], 4)} / "
            f"{v['auroc_energy']:.4f}" for k, v in res["sets"].items() if v.get("status") == "ok"))
        return res

    def chain_for(self, model, mode: str, extras) -> ChainSettings:
        """The judged chain of ``mode``: the measured (or --sampling's) plain chain, with what was given
        (``--cond-sweeps 5``: the demo's chain, 5 augmented sweeps of the training chain, with its guidance)."""
        return ChainSettings.measured(model, mode, table=self.args.sampling, extras=extras, **self.args.judged_chain)

    def conditional(self) -> dict:
        args, extras, figs = self.args, self.extras, self.out / "figures"
        if extras.get("class_prototypes") is None:
            raise EvaluationError(f"{args.weights} carries no class prototypes")
        judge = load_judge(Path(args.judges) / args.cifar10_judge, self.device)
        classes = list(extras.get("classes") or judge.labels)
        st = self.chain_for(self.model, "class", extras)
        res, samples = class_conditional_eval(self.model, class_latents(extras, classes, st.direction), classes,
                                              judge, args.cond_per_class, st.guidance, st, args.seed,
                                              args.cond_batch, log=say)
        res["direction"] = st.direction
        grid = torch.cat([samples[c][:10] for c in classes])
        save_grid(grid, figs / "class_conditional.png", nrow=min(10, args.cond_per_class))
        confusion_png(res["confusion"], classes, figs / "confusion.png",
                      "class-conditional samples judged by the CIFAR-10 classifier")
        plotly_confusion_html(res["confusion"], classes, figs / "confusion.html",
                              "Class-conditional samples: P(judged class | conditioned class)")
        res["judge"] = {"path": shown_path(judge.path), "test_accuracy": judge.info.get("test", {}).get("accuracy")}
        res["figures"] = {"grid": "figures/class_conditional.png", "confusion_png": "figures/confusion.png",
                          "confusion_html": "figures/confusion.html"}
        return res

    def compositional(self) -> dict:
        args = self.args
        if not Path(args.celeba_weights).is_dir():
            raise EvaluationError(f"no CelebA export at {args.celeba_weights} (pass --celeba-weights)")
        cmodel, ccfg, cextras = load_pretrained(args.celeba_weights, device=self.device)
        judge = load_judge(celeba_judge_path(args.judges, ccfg.image_size), self.device)  # of the model's face size
        cmodel.requires_grad_(False)
        st = self.chain_for(cmodel, "attributes", cextras)
        res, samples = compositional_eval(cmodel, cextras, judge, default_compositions(), args.comp_samples,
                                          st.guidance, st, args.seed, args.cond_batch, log=say,
                                          direction=st.direction)
        grid = torch.cat([v[:8] for v in samples.values()])
        save_grid(grid, self.out / "figures" / "compositional.png", nrow=min(8, args.comp_samples))
        uncond = samples["unconditional"]

        def faces() -> torch.Tensor:
            return celeba_reference(self.data, ccfg.image_size, seed=args.seed)

        res["unconditional"] = {"samples": len(uncond), **self.judge_distances(uncond, faces, judge, sizes=())}
        if cmodel.replay_buffer is not None:  # its own long-run chains; also at the samples' count, to compare
            buf = cmodel.replay_buffer
            res["buffer"] = {"images": len(buf), **self.judge_distances(to_float(buf), faces, judge,
                                                                        sizes=(len(uncond),))}
        res["judge"] = {"path": shown_path(judge.path), "test_accuracy": judge.info.get("test", {}).get("accuracy"),
                        "image_size": judge.spec.image_size}
        res["weights"] = shown_path(str(cextras.get("path", args.celeba_weights)))
        res["figures"] = {"grid": "figures/compositional.png (one row per condition, in table order)"}
        return res

    def lookalikes(self) -> dict:
        """Look-alikes of held-out uploads drawn as the demo's tab draws them (:meth:`ChainSettings.demo`), judged:
        do they share the upload's class (CIFAR-10) or its judged attributes (faces)?"""
        args, cfg = self.args, self.cfg
        faces = cfg.dataset != "cifar10"
        judge = load_judge(celeba_judge_path(args.judges, cfg.image_size) if faces
                           else Path(args.judges) / args.cifar10_judge, self.device)
        uploads, labels = lookalike_uploads(self.data, judge, args.lookalike_uploads, args.seed)
        chain = {k: v for k, v in args.judged_chain.items() if k != "sweeps"}  # the demo's sweeps, always
        st = ChainSettings.demo(self.model, "instance", **chain)
        res, samples = lookalike_eval(self.model, uploads, labels, judge, args.lookalike_samples, st, args.seed,
                                      log=say)
        k = args.lookalike_samples
        shown = min(8, len(uploads))
        rows = [torch.cat([to_float(uploads[i:i + 1]), samples[i * k:(i + 1) * k]]) for i in range(shown)]
        save_grid(torch.cat(rows), self.out / "figures" / "lookalikes.png", nrow=k + 1)
        res["chance"] = None if faces else 1 / len(judge.labels)
        res["judge"] = {"path": shown_path(judge.path), "test_accuracy": judge.info.get("test", {}).get("accuracy")}
        res["figures"] = {"grid": "figures/lookalikes.png (each row: the upload, then its look-alikes)"}
        return res

    def encoder(self) -> dict:
        from ..data import load_cifar10

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


def evaluate(args: EvalOptions) -> dict[str, str] | None:
    """Every section that ``args`` turns on; returns the paths of eval.json and eval.md (None on ranks > 0,
    which only draw their share of the FID samples)."""
    ev = Evaluation(args)
    if args.fid:
        ev.generate()
    if ev.rank != 0:
        return None
    for name, on, fn in (("fid", args.fid, ev.fid), ("buffer", args.buffer, ev.buffer), ("ood", args.ood, ev.ood),
                         ("conditional", args.conditional, ev.conditional),
                         ("compositional", args.compositional, ev.compositional),
                         ("lookalikes", args.lookalikes, ev.lookalikes), ("encoder", args.knn, ev.encoder)):
        if on:
            ev.section(name, fn)
    ev.save()
    say(f"wrote {ev.out / 'eval.json'} and {ev.out / 'eval.md'}")
    return {"eval_json": str(ev.out / "eval.json"), "eval_md": str(ev.out / "eval.md")}
