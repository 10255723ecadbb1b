"""Process plumbing: the device, seeding every generator, a lower CPU priority, SIGTERM as Ctrl-C, and the
command-line options the commands share (``--device``, ``--seed``, ``--threads``; options from a dataclass)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu; anything else as torch reads it (cpu, cuda, cuda:1)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live, so where its inputs go."""
    return next(model.parameters()).device


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def lower_priority(n: int, say: Any) -> None:
    """os.nice for the whole process: on Linux it changes only the calling thread, and torch has started others."""
    try:
        prio = os.nice(n)
        tasks = Path("/proc/self/task")
        for tid in (tasks.iterdir() if tasks.is_dir() else ()):
            os.setpriority(os.PRIO_PROCESS, int(tid.name), prio)
    except (AttributeError, OSError) as e:
        say(f"warning: --nice {n} not fully applied ({e})")


def raise_on_sigterm() -> Any:
    """SIGTERM (``kill``, a scheduler's stop) ends training like Ctrl-C: checkpoint, then exit."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def restore_sigterm(old: Any) -> None:
    import signal

    if old is not None:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------------------------------------------
# Command-line options
# ----------------------------------------------------------------------------------------------------------------

RUN_OPTION_HELP = {"device": "torch device (default: cuda when available)",
                   "seed": "random seed (default 0)",
                   "threads": "torch CPU threads (default: torch's choice)"}


def _device_arg(text: str) -> str:
    try:
        return str(pick_device(text))
    except RuntimeError as e:  # torch.device's complaint about an unknown name
        raise argparse.ArgumentTypeError(str(e)) from None


def add_run_options(parser: Any, device: bool | str = False, seed: bool | str = False,
                    threads: bool | str = False, device_default: str = "auto") -> None:
    """``--device`` (a device string; ``auto`` and the default resolve to cuda when available), ``--seed`` (int,
    0) and ``--threads`` (int, none: torch's choice), as every command spells them. Each argument: False leaves
    the option out, True adds it with the common help, a string adds it with that help."""
    def text(value: bool | str, name: str) -> str:
        return RUN_OPTION_HELP[name] if value is True else str(value)

    if device:
        parser.add_argument("--device", default=device_default, type=_device_arg, help=text(device, "device"))
    if seed:
        parser.add_argument("--seed", type=int, default=0, help=text(seed, "seed"))
    if threads:
        parser.add_argument("--threads", type=int, default=None, help=text(threads, "threads"))


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads, when given."""
    if threads:
        torch.set_num_threads(threads)


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field that is also a command-line option: ``kw`` go to ``add_argument`` (``group``: the
    argument group's title). No default: a required option."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` per field of ``cls`` (made with :func:`option`), in field order, in argument groups by
    their ``group`` title; bool fields are ``--x/--no-x``, int and float fields typed; ``device``, ``seed`` and
    ``threads`` come from :func:`add_run_options`."""
    hints = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {}
    for f in dataclasses.fields(cls):
        kw = dict(f.metadata)
        title = kw.pop("group", None)
        if title not in groups:
            groups[title] = parser.add_argument_group(title) if title else parser
        group = groups[title]
        if "flags" in kw:  # a dict of another dataclass's fields, each its own option (see settings_from_args)
            from .sampling import ChainSettings

            add_field_options(group, ChainSettings, kw["flags"], dest_prefix=f"{f.name}.")
            continue
        if f.name in RUN_OPTION_HELP:
            extra = {"device_default": f.default} if f.name == "device" else {}
            add_run_options(group, **{f.name: kw["help"] or True}, **extra)
            continue
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        base = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        if base is bool:
            kw.setdefault("action", argparse.BooleanOptionalAction)
        elif base in (int, float):
            kw.setdefault("type", base)
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def add_field_options(parser: Any, cls: type, flags: dict[str, str], dest_prefix: str = "") -> None:
    """``flags`` (field name → option, e.g. ``{"step_size": "--step-size"}``) as options whose help and choices
    are the field's metadata and whose type is its annotation's; each defaults to None, so what is not given is
    left to the constructor that reads them (e.g. ``ChainSettings.measured``). ``dest_prefix``: see
    :func:`options_from_args`."""
    hints = typing.get_type_hints(cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for name, flag in flags.items():
        base = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        kw = {"type": base} if base in (int, float) else {}
        if "choices" in meta[name]:
            kw["choices"] = meta[name]["choices"]
        parser.add_argument(flag, dest=dest_prefix + name, default=None, help=meta[name]["help"], metavar=name.upper(),
                            **kw)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` (made by :func:`add_dataclass_options`) from parsed arguments: options named ``field.name`` go into
    the dict field ``field``, by name."""
    kw: dict[str, Any] = {}
    for dest, value in vars(args).items():
        outer, dot, name = dest.partition(".")
        if dot:
            kw.setdefault(outer, {})[name] = value
        else:
            kw[dest] = value
    return cls(**kw)
