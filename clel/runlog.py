"""What a run says while it trains: messages, metrics.jsonl, TensorBoard and the progress bar.

:class:`RunLog` is mixed into :class:`clel.trainer.Trainer`; it uses the trainer's ``opts``, ``out``, ``it``,
``is_main``, ``world`` and ``device``.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from .distributed import mean_over_ranks


class RunLog:
    def _say(self, msg: str) -> None:
        self._messages.append(msg)
        if self.is_main:
            try:
                from tqdm import tqdm

                tqdm.write(f"clel: {msg}", file=sys.stderr)
            except ImportError:
                print(f"clel: {msg}", file=sys.stderr)
            if getattr(self, "_metrics_file", None) is not None:
                self._log_event("message", text=msg)

    def _progress(self, total: int) -> Any:
        if not (self.is_main and self.opts.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.it, desc="clel", unit="it", dynamic_ncols=True, file=sys.stderr)

    def _open_logs(self) -> None:
        self._metrics_file = open(self.out / "metrics.jsonl", "a")
        if self.opts.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return
            self._tb = SummaryWriter(str(self.out / "tb"), purge_step=self.it or None)

    def _close_logs(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _mean_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        return mean_over_ranks(stats, self.world, self.device)

    def _log_metrics(self, stats: dict[str, float]) -> None:
        if not self.is_main or self._metrics_file is None:
            return
        row = {"iter": self.it, "time": round(time.time() - self._t_start, 3), **stats}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for k, v in stats.items():
                self._tb.add_scalar(f"train/{k}", v, self.it)

    def _log_event(self, event: str, **fields: Any) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps({"event": event, "time": round(time.time() - self._t_start, 3),
                                                 **fields}, default=str) + "\n")
            self._metrics_file.flush()
