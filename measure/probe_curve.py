#!/usr/bin/env python
"""The probes of each bundled model's line of runs over its iterations: a markdown table and a picture.

    python measure/probe_curve.py --history docs/training-log/probes.json \\
        --run cifar10=~/.cache/clel/runs/cifar10 --run celeba32=~/.cache/clel/runs/celeba32-inception \\
        --update --png docs/training-log/probes.png

``--history`` is the record that outlives run folders: a JSON list of probe rows (``model``, ``iteration``,
``weights``, ``what``, and the probe's numbers: ``fid``, ``fd_judge``, ``kid_judge``, ``judged_accuracy`` or
``judged_agreement`` / ``judged_not_agreement``, ``clamped_fraction``; ``branch``: true for a row off the
bundle's line, e.g. the losing arm of an A/B, which the table lists and the picture leaves out). ``--run MODEL=RUN`` adds the probe events
of a run's ``metrics.jsonl`` (read by ``clel.dashboard.read_run``, which drops abandoned branches), and
``--update`` writes them into the history. The table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clel.dashboard import DashboardError, read_run

# probe key -> the table's and the picture's name for it
COLUMNS = {"fid": "FID-500", "fd_judge": "FD-500 (judge)", "kid_judge": "KID (judge)",
           "judged_accuracy": "judged accuracy", "judged_agreement": "AND agreement",
           "judged_not_agreement": "NOT agreement", "clamped_fraction": "clamped"}
PANELS = (("fid", "FID-500 (encoder-biased for the frozen encoder)"), ("fd_judge", "FD-500 in a judge's features"),
          ("judged", "judged: class accuracy / AND and NOT agreement"))


def run_rows(model: str, folder: str) -> list[dict]:
    """The probe events of a run folder as history rows."""
    folder = Path(folder).expanduser()
    run = read_run(folder)
    weights = {}  # which weights each probe scored (the dashboard keeps numbers only)
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if '"probe"' in line:
            e = json.loads(line)
            weights[e.get("iteration")] = e.get("weights", "")
    return [{"model": model, "iteration": int(p["iteration"]), "weights": weights.get(int(p["iteration"]), ""),
             "what": f"--probe-every of run {run.name}", **{k: p[k] for k in COLUMNS if k in p}} for p in run.probes]


def merge(history: list[dict], new: list[dict]) -> list[dict]:
    """History plus new rows; a new row replaces a recorded one of the same model, iteration and source."""
    key = lambda r: (r["model"], r["iteration"], r.get("what"))  # noqa: E731
    rows = {key(r): r for r in history}
    rows.update({key(r): {**rows.get(key(r), {}), **r} for r in new})
    return sorted(rows.values(), key=lambda r: (r["model"], r["iteration"], str(r.get("what"))))


def table(rows: list[dict]) -> str:
    cols = [k for k in COLUMNS if any(k in r for r in rows)]
    out = ["| model | iteration | weights | what | " + " | ".join(COLUMNS[k] for k in cols) + " |",
           "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k in cols]
        out.append(f"| {r['model']} | {r['iteration']:,} | {r.get('weights', '')} | {r.get('what', '')} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def picture(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4), dpi=100)
    models = sorted({r["model"] for r in rows})
    for i, (key, title) in enumerate(PANELS):
        ax = fig.add_subplot(1, len(PANELS), i + 1)
        for m in models:
            mine = [r for r in rows if r["model"] == m and not r.get("branch")]  # a branch left the line
            for k, style in ((("judged_accuracy", "o-"), ("judged_agreement", "o-"), ("judged_not_agreement", "s--"))
                             if key == "judged" else ((key, "o-"),)):
                pts = [(r["iteration"], r[k]) for r in mine if isinstance(r.get(k), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{m}" + ("" if key != "judged" else f": {COLUMNS[k]}"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", type=Path, required=True, help="JSON list of recorded probe rows")
    ap.add_argument("--run", action="append", default=[], metavar="MODEL=RUN",
                    help="add the probes of a run folder's metrics.jsonl under MODEL (repeat)")
    ap.add_argument("--update", action="store_true", help="write the runs' probes into --history")
    ap.add_argument("--png", type=Path, help="draw the curves into this PNG")
    args = ap.parse_args(argv)
    try:
        history = json.loads(args.history.read_text()) if args.history.is_file() else []
        new = []
        for spec in args.run:
            model, sep, folder = spec.partition("=")
            if not sep:
                raise DashboardError(f"--run {spec!r}: expected MODEL=RUN")
            new += run_rows(model, folder)
    except (DashboardError, json.JSONDecodeError, OSError) as e:
        print(f"probe_curve: {e}", file=sys.stderr)
        return 2
    rows = merge(history, new)
    if args.update:
        args.history.write_text(json.dumps(rows, indent=1) + "\n")
    if args.png:
        picture(rows, args.png)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
