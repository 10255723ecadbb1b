#!/usr/bin/env python
"""Dashboard of one or more training runs: a self-contained HTML page (plotly.js inline, works offline) and a PNG.

    python scripts/plot_run.py runs/cifar10                                  # runs/cifar10/dashboard.{html,png}
    python scripts/plot_run.py runs/cifar10 runs/cifar10-b --out /tmp/cmp.html   # overlaid, one colour per run

Exit codes: 0 done, 2 bad input (message printed), 1 could not write the output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from clel.dashboard import DashboardError, figure, read_run, summary, write_html, write_png
except ImportError as e:  # the project is meant to be installed (pip install -e .), not path-hacked
    sys.exit(f"plot_run: cannot import clel ({e}); install the checkout first: pip install -e .")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) holding metrics.jsonl (and samples/)")
    ap.add_argument("--out", type=Path, help="the HTML file; the PNG goes beside it with .png "
                    "(default: RUN/dashboard.html of the first run)")
    ap.add_argument("--grids", type=int, default=8, help="at most this many sample grids per run (default 8)")
    ap.add_argument("--no-png", action="store_true", help="write only the HTML")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out if args.out is not None else Path(args.runs[0]) / "dashboard.html"
    try:
        if out.suffix.lower() not in (".html", ".htm"):
            raise DashboardError(f"--out {out}: expected a .html file (the PNG is written beside it)")
        if args.grids < 0:
            raise DashboardError("--grids must be >= 0")
        runs = [read_run(r) for r in args.runs]
        for r in runs:
            print(summary(r))
        fig = figure(runs)
        written = [write_html(runs, out, fig=fig, max_grids=args.grids)]
        if not args.no_png:
            written.append(write_png(runs, out.with_suffix(".png"), max_grids=args.grids))
    except DashboardError as e:
        print(f"plot_run: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"plot_run: cannot write {e.filename or out}: {e.strerror or e}", file=sys.stderr)
        return 1
    for p in written:
        print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
