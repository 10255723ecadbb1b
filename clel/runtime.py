"""Process plumbing of a training run: seeding every generator, a lower CPU priority, SIGTERM as Ctrl-C."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
