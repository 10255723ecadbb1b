#!/usr/bin/env python
"""Train CLEL from the command line.

    python scripts/train.py --preset tiny --data ../shared/data/cifar10 --out /tmp/run --max-iters 50
    python scripts/train.py --resume /tmp/run --max-iters 100            # continue exactly
    torchrun --nproc_per_node=4 scripts/train.py --preset cifar10-base --data DATA --out runs/base

Every field of ``CLELConfig`` is an option (``--field-name``), generated from the dataclass; the preset gives
the defaults. Exit codes: 0 done, 2 a problem to fix (message printed), 3 training diverged, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any


from clel.config import ARCHS, ENCODERS, PRESETS, CLELConfig, get_preset

# Help for config fields whose definition carries no comment (the others use their comment).
CONFIG_HELP = {
    "dataset": "data set name: cifar10, celeba or imagenet32",
    "image_size": "image side in pixels",
    "mean": "per-channel mean used by the networks' normalisation layer",
    "std": "per-channel std used by the networks' normalisation layer",
    "arch": "EBM architecture: small, base, large (three scales) or tiny (smoke tests)",
    "feature_dim": "size of f(x) and of the latent z",
    "head_hidden": "hidden width of f's head MLP and of the projection g",
    "projection": "projection g: mlp (paper), linear or identity (ablations)",
    "encoder_width": "base width of the encoder's ResNet-18 (64 = the paper's; lower only for smoke runs)",
    "beta": "β, weight of the latent term cos(g(f(x)), z) in training (0 = baseline EBM, no encoder)",
    "alpha": "α, weight of the energy-magnitude regulariser",
    "temperature": "NT-Xent temperature τ",
    "extra_negatives": "append the detached g(f(x⁻)) of the SGLD samples as NT-Xent negatives",
    "sgld_grad_clip": "clamp SGLD gradients to ±this (the reference clamps at the step size)",
    "contrastive_batch_size": "real images per iteration for the encoder (none: batch size; Large: 256)",
    "ema_start_iter": "before this iteration the EMA copies the weights",
    "encoder_hidden": "hidden width of the encoder's MLP head",
    "sgld_steps": "SGLD steps per training iteration",
    "sgld_step_size": "SGLD step size (multiplies the clamped gradient)",
    "sgld_noise": "SGLD noise scale",
    "buffer_size": "replay buffer size (images)",
    "reinit_prob": "probability that a drawn buffer sample restarts from U(0, 1)",
    "batch_size": "real and SGLD images per iteration for the EBM (per GPU)",
    "iters": "run length that the schedules (encoder cosine decay) are defined over",
    "lr": "Adam learning rate of f and g",
    "adam_betas": "Adam betas of f and g",
    "warmup_iters": "linear warm-up of the EBM learning rate",
    "encoder_lr": "SGD learning rate of the encoder h (cosine decay)",
    "encoder_momentum": "SGD momentum of the encoder",
    "encoder_weight_decay": "SGD weight decay of the encoder",
    "ema_half_life_images": "EMA half-life in images (decay per iteration = 0.5 ** (batch / this))",
    "ood_beta": "β of the OOD score at evaluation",
    "num_classes": "number of classes (0: unlabelled)",
    "extra": "free-form JSON object stored with the config",
}


CONFIG_CHOICES = {"arch": sorted(ARCHS), "projection": ["mlp", "linear", "identity"], "encoder": list(ENCODERS)}


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines: the documentation the code already has."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _add_dataclass_args(group: argparse._ArgumentGroup, cls: type, helps: dict[str, str],
                        show_defaults: bool) -> None:
    """One ``--field-name`` per dataclass field, typed from its annotation; unset options stay absent."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f.metadata.get("help") or helps.get(f.name, "")
        if show_defaults and f.name != "out":
            text += f" (default: {default})"
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text, "dest": f.name}
        args = typing.get_args(tp)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            items = typing.get_args(base)
            if items and items[-1] is Ellipsis:
                kw.update(nargs="*", type=items[0])
            else:
                kw.update(nargs=len(items), type=items[0])
            kw["metavar"] = items[0].__name__.upper()
        elif typing.get_origin(base) is dict or base is dict:
            kw.update(type=json.loads, metavar="JSON")
        elif optional:
            kw.update(type=lambda s, b=base: None if s.lower() == "none" else b(s), metavar=base.__name__.upper())
        else:
            kw["type"] = base
            kw["metavar"] = base.__name__.upper()
        choices = f.metadata.get("choices") or (CONFIG_CHOICES.get(f.name) if cls is CLELConfig else None)
        if choices:
            kw["choices"] = choices
            kw.pop("metavar", None)
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        group.add_argument(flag, **kw)


def build_parser() -> argparse.ArgumentParser:
    from clel.trainer import TrainOptions

    p = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0],
        epilog="Presets: " + "; ".join(f"{k} (arch {v.arch}, {v.dataset})" for k, v in PRESETS.items())
        + ". Ablations: --beta 0 (baseline EBM, no encoder), --no-extra-negatives, --projection identity|linear.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named configuration (required unless --resume gives the config)")
    _add_dataclass_args(p.add_argument_group("run options"), TrainOptions, {}, show_defaults=True)
    helps = {**_field_comments(CLELConfig), **CONFIG_HELP}  # field comments cover fields added later
    _add_dataclass_args(p.add_argument_group("model and training hyper-parameters (override the preset)"),
                        CLELConfig, helps, show_defaults=False)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    from clel.checkpoints import DivergenceError, TrainError, resolve_auto, saved_config
    from clel.trainer import TrainOptions, train
    from clel.weights import WeightsError

    preset = args.pop("preset")
    opt_names = {f.name for f in dataclasses.fields(TrainOptions)}
    opt_values = {k: v for k, v in args.items() if k in opt_names}
    overrides = {k: v for k, v in args.items() if k not in opt_names}
    if isinstance(opt_values.get("inject_nan_at"), list):
        opt_values["inject_nan_at"] = tuple(opt_values["inject_nan_at"])
    try:
        resume = opt_values.get("resume")
        if preset is None and not resume:
            parser.error("choose a --preset (or --resume a run)")
        if resume == "auto":  # the config comes from what auto will continue: checkpoint, --init, or preset
            if "out" not in opt_values:
                if preset is None:
                    parser.error("--resume auto needs --out (or --preset, whose default run folder it uses)")
                opt_values["out"] = str(Path("runs") / preset)
            resume, _ = resolve_auto(opt_values["out"], opt_values.get("init"))
            if resume is None and preset is None:
                parser.error(f"--resume auto: {opt_values['out']} holds no checkpoint yet; pass --init EXPORT or "
                             f"--preset to start it")
        auto = opt_values.get("resume") == "auto"
        try:
            # --resume auto: a run's own config once it has one; the preset only starts it.
            base = saved_config(resume) if resume and (auto or not preset) else get_preset(preset)
            cfg = base.replace(**overrides)
        except (TypeError, ValueError) as e:
            if isinstance(e, (TrainError, WeightsError)):
                raise
            parser.error(str(e))
        if "out" not in opt_values:
            opt_values["out"] = str(default_out(resume) if resume else Path("runs") / preset)
        trainer = train(cfg, TrainOptions(**opt_values))
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (TrainError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted; the checkpoint is saved, continue with --resume", file=sys.stderr)
        return 130
    finally:
        from clel.distributed import shutdown

        shutdown()
    if trainer.is_main:
        print(f"done: iteration {trainer.it}; export and checkpoints in {trainer.out}", file=sys.stderr)
    return 0


def default_out(resume: str) -> Path:
    """Where a resumed run writes: its own run folder; next to an export (never over it) for an export."""
    from clel.checkpoints import resolve_resume

    kind, path = resolve_resume(resume)
    if kind == "export":
        return path.with_name(path.name + "-resumed")
    return path.parent.parent if path.parent.name == "checkpoints" else path


if __name__ == "__main__":
    sys.exit(main())
