"""Run dashboard: read a training run folder (metrics.jsonl, samples/, probes/) and draw it as one self-contained
HTML page (plotly) and a static PNG (matplotlib).

    runs = [read_run("runs/cifar10")]
    write_html(runs, "/tmp/dash.html")   # figure(runs) plus the sample-grid strips, plotly.js inline
    write_png(runs, "/tmp/dash.png")
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["DashboardError", "Panel", "Run", "Segment", "figure", "markers", "panels", "pick_grids", "read_run",
           "summary", "write_html", "write_png"]

_GRID_RE = re.compile(r"^iter-(\d+)\.png$")
# Probe rows carry bookkeeping next to the metrics; these are not plotted.
_PROBE_SKIP = {"event", "iteration", "time", "seconds"}
# The Plotly default palette, reused by the PNG so one run has the same colour in both files.
COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff",
           "#fecb52")
_DASH = ("solid", "dash", "dot", "dashdot")
_MPL_DASH = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-."}
# fd_judge / kid_judge: the probe's distances in the judge's features, which no model trains with (clel.probe).
LABELS = {"e_pos": "E(x+)", "e_neg": "E(x-)", "hours": "hours", "fid": "FID", "fd_judge": "FD, judge features",
          "kid_judge": "KID, judge features"}


class DashboardError(Exception):
    """Bad input (not a run folder, bad arguments): the CLI prints the message and exits 2."""


@dataclass
class Segment:
    """One process's stretch of a run: from its ``start`` line to the next one."""

    start: int | None           # iteration it resumed at (None: the log has no start line)
    resume: str | None          # "checkpoint", "export" or None (fresh)
    seconds: float = 0.0        # its wall-clock length: the largest "time" it logged
    hours_before: float = 0.0   # wall-clock hours of all earlier segments
    ended: bool = False         # it wrote an "end" line (False: killed, or still running)


@dataclass
class Run:
    path: Path
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)    # training rows by "iter", plus "hours"
    probes: list[dict[str, Any]] = field(default_factory=list)  # probe rows by "iteration", plus "hours"
    segments: list[Segment] = field(default_factory=list)
    rollbacks: list[tuple[int, int]] = field(default_factory=list)  # (diverged at, rolled back to)
    grids: list[tuple[int, Path]] = field(default_factory=list)        # samples/iter-N.png, by N
    probe_grids: list[tuple[int, Path]] = field(default_factory=list)  # probes/iter-N.png, by N
    config: dict[str, Any] = field(default_factory=dict)  # of the latest start line
    skipped: int = 0      # lines that were not a JSON object (a truncated last line, a torn write)
    superseded: int = 0   # rows replaced by a later segment or dropped with an abandoned timeline

    @property
    def hours(self) -> float:
        return sum(s.seconds for s in self.segments) / 3600

    @property
    def iteration(self) -> int | None:
        """The latest iteration the run reached (in its current timeline)."""
        its = [r["iter"] for r in self.rows[-1:]] + [p["iteration"] for p in self.probes[-1:]]
        its += [s.start for s in self.segments[-1:] if s.start is not None]
        return max(its) if its else None

    def probe_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for p in self.probes:
            keys.update((k, None) for k in p if k not in _PROBE_SKIP and k != "hours")
        return list(keys)


def _number(v: Any) -> float | None:
    # bool is an int in Python but never a metric; NaN/inf (a diverged step) become gaps, not axis-wreckers.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else math.nan


def _iteration(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
        return None
    return int(v)


def _grids(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _GRID_RE.match(p.name)) and p.is_file()]
    return sorted(found)


def _records(metrics: Path, run: "Run"):
    """The JSON objects of metrics.jsonl; torn or foreign lines are counted in ``run.skipped``."""
    with open(metrics, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                run.skipped += 1
                continue
            if not isinstance(obj, dict):
                run.skipped += 1
                continue
            yield obj


def _add_point(obj: dict[str, Any], event: str | None, hours: float, run: "Run", rows: dict[int, dict[str, Any]],
               probes: dict[int, dict[str, Any]]) -> None:
    """A metrics row (no event) or a probe, keyed by its iteration; a later one for the same iteration wins."""
    it = _iteration(obj.get("iter" if event is None else "iteration"))
    if it is None:
        run.skipped += 1
        return
    if event is None:
        row = {k: v for k, v in ((k, _number(v)) for k, v in obj.items()) if v is not None}
        row["iter"], row["hours"] = it, hours
        run.superseded += it in rows
        rows[it] = row
    else:
        probe = {k: v for k, v in ((k, _number(v)) for k, v in obj.items()) if v is not None and k not in _PROBE_SKIP}
        probe["iteration"], probe["hours"] = it, hours
        probes[it] = probe


def read_run(path: str | os.PathLike[str]) -> Run:
    """Parse a run folder (or its metrics.jsonl) into the run's current timeline.

    A resume from an older checkpoint (or a divergence rollback) restarts the timeline at iteration N: rows and
    probes logged earlier for iterations after N belong to an abandoned branch and are dropped, and the later
    rows for the same iterations replace them. Wall-clock hours add up every segment, abandoned work included,
    since that is the compute the run has cost.
    """
    folder = _run_folder(Path(path))
    run = Run(path=folder, name=folder.resolve().name or str(folder))
    rows, probes = _read_timeline(folder / "metrics.jsonl", run)
    run.rows = [rows[k] for k in sorted(rows)]
    run.probes = [probes[k] for k in sorted(probes)]
    # Grid files past the current iteration were written by an abandoned branch (a resume from an older
    # checkpoint overwrites only the iterations it reaches again): showing them would misdate the samples.
    last = run.iteration
    run.grids = [g for g in _grids(folder / "samples") if last is None or g[0] <= last]
    run.probe_grids = [g for g in _grids(folder / "probes") if last is None or g[0] <= last]
    return run


def _run_folder(p: Path) -> Path:
    """The run folder of ``p`` (the folder itself or its metrics.jsonl); it must hold a metrics.jsonl."""
    folder = p.parent if p.is_file() and p.name == "metrics.jsonl" else p
    if not folder.is_dir():
        raise DashboardError(f"{p}: no such run folder")
    if not (folder / "metrics.jsonl").is_file():
        raise DashboardError(f"{folder}: no metrics.jsonl (not a run folder?)")
    return folder


def _read_timeline(metrics: Path, run: Run) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """The rows and probes of the current timeline by iteration; fills the run's segments, rollbacks, config."""
    rows: dict[int, dict[str, Any]] = {}
    probes: dict[int, dict[str, Any]] = {}
    for obj in _records(metrics, run):
        event = obj.get("event")
        t = _number(obj.get("time"))
        if event == "start":
            _restart(_start_segment(obj, run), run, rows, probes)
        seg = _segment(run)
        if t is not None and not math.isnan(t):
            seg.seconds = max(seg.seconds, t)
        hours = seg.hours_before + (t / 3600 if t is not None and not math.isnan(t) else 0.0)
        if event is None or event == "probe":
            _add_point(obj, event, hours, run, rows, probes)
        elif event == "rollback":
            to = _iteration(obj.get("to"))
            run.rollbacks.append((_iteration(obj.get("iteration")) or 0, to if to is not None else 0))
            _restart(to, run, rows, probes)
        elif event == "end":
            seg.ended = True
            secs = _number(obj.get("seconds"))
            if secs is not None and not math.isnan(secs):
                seg.seconds = max(seg.seconds, secs)
    return rows, probes


def _start_segment(obj: dict[str, Any], run: Run) -> int | None:
    """A ``start`` line opens a segment (and sets the run's config); returns the iteration it starts at."""
    before = run.segments[-1].hours_before + run.segments[-1].seconds / 3600 if run.segments else 0.0
    start = _iteration(obj.get("iteration"))
    run.segments.append(Segment(start=start, resume=obj.get("resume"), hours_before=before))
    if isinstance(obj.get("config"), dict):
        run.config = obj["config"]
    return start


def _segment(run: Run) -> Segment:
    if not run.segments:  # rows before any start line: an older log format, or the first line was torn
        run.segments.append(Segment(start=None, resume=None))
    return run.segments[-1]


def _restart(at: int | None, run: Run, *tables: dict[int, dict[str, Any]]) -> None:
    """The timeline goes on from iteration ``at``: what the tables hold after it is superseded."""
    if at is None:
        return
    for table in tables:
        for it in [it for it in table if it > at]:
            del table[it]
            run.superseded += 1


# -- what to draw -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]
    source: str = "rows"  # "rows" (x = iter) or "probes" (x = iteration)
    log_y: bool = False


TRAIN_PANELS = (
    Panel("loss and l_le (contrastive)", ("loss", "l_le")),
    Panel("l_ebm (energy term)", ("l_ebm",)),
    Panel("energies E(x+) and E(x-)", ("e_pos", "e_neg")),
    Panel("cosine term cos", ("cos",)),
    Panel("learning rates", ("lr", "lr_encoder"), log_y=True),
    Panel("wall-clock hours (sum of segments)", ("hours",)),
)


def panels(runs: Sequence[Run]) -> list[Panel]:
    """The training panels, then one panel per probe metric found in any run."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update((k, None) for k in r.probe_keys())
    return list(TRAIN_PANELS) + [Panel(f"probe: {LABELS.get(k, k)}", (k,), "probes") for k in keys]


def series(run: Run, panel: Panel, key: str) -> tuple[list[int], list[float], list[float]]:
    """(iterations, values, hours) of one key; rows that lack the key are left out."""
    table, x = (run.rows, "iter") if panel.source == "rows" else (run.probes, "iteration")
    pts = [(r[x], r[key], r.get("hours", math.nan)) for r in table if key in r]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def markers(run: Run) -> list[tuple[int, str, str]]:
    """(iteration, label, kind) of every resume, and of every divergence rollback."""
    out = []
    for i, s in enumerate(run.segments):
        # A fresh first segment is just the beginning of the run, not worth a line.
        if s.start is None or (i == 0 and not s.resume):
            continue
        out.append((s.start, f"resume ({s.resume})" if s.resume else "restart", "resume"))
    out += [(to, f"rollback {at}→{to}", "rollback") for at, to in run.rollbacks]
    return out


def _labels(runs: Sequence[Run]) -> list[str]:
    # Two runs can share a folder name (a/cifar10, b/cifar10): then the parent tells them apart.
    names = [r.name for r in runs]
    return [f"{r.path.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def pick_grids(grids: Sequence[tuple[int, Path]], k: int = 8) -> list[tuple[int, Path]]:
    """At most k grids evenly spaced in the list, always the first and the latest."""
    if k <= 0 or not grids:
        return []
    if len(grids) <= k:
        return list(grids)
    idx = sorted({round(i * (len(grids) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(grids) - 1]
    return [grids[i] for i in idx]


def summary(run: Run, with_name: bool = True) -> str:
    """One line: what the run is and how much of metrics.jsonl was used."""
    cfg = run.config
    its = f"iterations {run.rows[0]['iter']}–{run.rows[-1]['iter']}" if run.rows else "no training rows yet"
    resumes = [s.resume or "fresh" for s in run.segments if s.start is not None]
    parts = [" ".join(str(cfg[k]) for k in ("dataset", "arch") if k in cfg), its,
             f"{len(run.segments)} segment(s)" + (f" ({', '.join(resumes)})" if resumes else ""),
             f"{run.hours:.2f} h", f"{len(run.probes)} probe(s)", f"{len(run.grids)} sample grid(s)"]
    if run.rollbacks:
        parts.append(f"{len(run.rollbacks)} rollback(s)")
    if run.superseded:
        parts.append(f"{run.superseded} superseded row(s) dropped")
    if run.skipped:
        parts.append(f"skipped {run.skipped} unparsable line(s)")
    text = ", ".join(p for p in parts if p)
    return f"{run.name}: {text}" if with_name else text


# -- plotly -------------------------------------------------------------------------------------------------------


def _colour(i_run: int, i_key: int, n_runs: int) -> str:
    # One run: a colour per series is easiest to read. Several: a colour per run, series told apart by dash.
    return COLOURS[(i_run if n_runs > 1 else i_key) % len(COLOURS)]


def _gaps(values: Iterable[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def figure(runs: Sequence[Run]) -> Any:
    """A plotly Figure: every panel of ``panels(runs)`` in a two-column grid, one colour per run when overlaid."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not runs:
        raise DashboardError("no runs to draw")
    ps = panels(runs)
    n_rows = math.ceil(len(ps) / 2)
    height = 290 * n_rows
    fig = make_subplots(rows=n_rows, cols=2, subplot_titles=[p.title for p in ps],
                        vertical_spacing=min(70 / height, 1 / max(n_rows - 1, 1)), horizontal_spacing=0.07)
    names = _labels(runs)
    for i, (run, name) in enumerate(zip(runs, names)):
        for j, p in enumerate(ps):
            row, col = j // 2 + 1, j % 2 + 1
            for k, key in enumerate(p.keys):
                x, y, h = series(run, p, key)
                if not x:
                    continue
                label = LABELS.get(key, key)
                fig.add_trace(go.Scatter(
                    x=x, y=_gaps(y), customdata=_gaps(h), mode="lines+markers" if p.source == "probes" else "lines",
                    name=f"{label} · {name}" if len(runs) > 1 else label, legendgroup=name,
                    legendgrouptitle_text=name, meta={"run": name, "key": key, "panel": p.title},
                    line=dict(color=_colour(i, k, len(runs)), dash=_DASH[k % len(_DASH)], width=1.5),
                    hovertemplate=f"{label}: %{{y:.4g}} · %{{customdata:.2f}} h<extra>{html.escape(name)}</extra>",
                ), row=row, col=col)
        for it, text, kind in markers(run):
            colour = COLOURS[i % len(COLOURS)] if len(runs) > 1 else ("#555" if kind == "resume" else "#d62728")
            fig.add_vline(x=it, row="all", col="all", line=dict(color=colour, width=1,
                          dash="dot" if kind == "resume" else "dash"), exclude_empty_subplots=False)
            fig.add_annotation(x=it, y=1, xref="x", yref="y domain", text=text, showarrow=False, yanchor="bottom",
                               xanchor="left", textangle=-90, font=dict(size=9, color=colour))
    for j, p in enumerate(ps):
        if p.log_y:
            fig.update_yaxes(type="log", row=j // 2 + 1, col=j % 2 + 1)
    # Zooming one panel zooms them all: the panels share the iteration axis.
    fig.update_xaxes(matches="x", showticklabels=True, title_text=None)
    fig.update_layout(height=height + 120, template="plotly_white", hovermode="x unified",
                      title=dict(text="CLEL run: " + ", ".join(names), x=0.01),
                      margin=dict(l=60, r=20, t=90, b=40), legend=dict(groupclick="toggleitem"))
    return fig


# -- files ---------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    # A browser tab reloading the dashboard mid-write should see the old page, not half a new one.
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dashboard is meant to be read (served, copied)
        os.replace(tmp, path)
    except OSError as e:  # name the file the user asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _thumbnail(path: Path, max_side: int) -> Any | None:
    """The grid as a PIL image no larger than max_side, or None when the file is unreadable (a torn write)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (OSError, ValueError):
        return None
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    return im


def _data_uri(im: Any) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _strip_html(title: str, grids: Sequence[tuple[int, Path]], run: Run, max_side: int) -> str:
    cells = []
    for it, path in grids:
        im = _thumbnail(path, max_side)
        if im is None:
            cells.append(f'<figure class="bad">unreadable<br>{html.escape(path.name)}</figure>')
            continue
        cap = f"iter {it}" + _hours_at(run, it)
        cells.append(f'<figure><img alt="{html.escape(path.name)}" src="{_data_uri(im)}">'
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    return f"<h3>{html.escape(title)}</h3><div class=\"strip\">{''.join(cells)}</div>"


def _hours_at(run: Run, it: int) -> str:
    # The grid is written next to a training row of the same iteration (or shortly after the last one).
    before = [r for r in run.rows if r["iter"] <= it]
    return f" · {before[-1]['hours']:.2f} h" if before else ""


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}
.strip{display:flex;gap:8px;overflow-x:auto;padding-bottom:8px}
figure{margin:0;text-align:center;font-size:12px}figure img{height:192px;image-rendering:pixelated}
figure.bad{width:120px;color:#b00;border:1px dashed #b00;padding:8px}
"""


def write_html(runs: Sequence[Run], path: str | os.PathLike[str], fig: Any = None, max_grids: int = 8,
               thumb_px: int = 384) -> Path:
    """One self-contained page: the summary, ``figure(runs)`` with plotly.js inline, and the grid strips."""
    import plotly.io as pio

    path = Path(path)
    fig = figure(runs) if fig is None else fig
    names = _labels(runs)
    rows = "".join(
        f"<tr><td style=\"color:{COLOURS[i % len(COLOURS)]}\">■ {html.escape(n)}</td><td>{html.escape(str(r.path))}"
        f"</td><td>{html.escape(summary(r, with_name=False))}</td></tr>"
        for i, (r, n) in enumerate(zip(runs, names)))
    strips = []
    for r, n in zip(runs, names):
        if r.grids:
            strips.append(_strip_html(f"SGLD samples · {n} ({len(r.grids)} grids, {min(len(r.grids), max_grids)} "
                                      "shown)", pick_grids(r.grids, max_grids), r, thumb_px))
        if r.probe_grids:
            strips.append(_strip_html(f"probe images · {n}", pick_grids(r.probe_grids, max_grids), r, thumb_px))
    # include_plotlyjs=True inlines plotly.js (about 4.5 MB): the page must work offline and from a copied file.
    plot = pio.to_html(fig, full_html=False, include_plotlyjs=True, include_mathjax=False,
                       config={"displaylogo": False, "responsive": True})
    title = "CLEL run: " + ", ".join(names)
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><table><tr><th>run</th><th>folder</th><th>summary</th></tr>{rows}"
            f"</table>{plot}{''.join(strips) or '<p>no sample grids (samples/iter-N.png) yet</p>'}</body></html>")
    _atomic_write(path, page.encode("utf-8"))
    return path


def write_png(runs: Sequence[Run], path: str | os.PathLike[str], max_grids: int = 8, dpi: int = 100) -> Path:
    """The same panels drawn with matplotlib (no browser needed), and one sample-grid strip per run below them."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # the HTML does not need it; say how to get the PNG
        raise DashboardError("the PNG needs matplotlib (pip install matplotlib), or pass --no-png") from e

    path = Path(path)
    ps, names = panels(runs), _labels(runs)
    strips = []
    for r, n in zip(runs, names):
        ims = [(it, im) for it, p in pick_grids(r.grids, max_grids) if (im := _thumbnail(p, 160)) is not None]
        if ims:
            strips.append((n, ims))
    n_rows = math.ceil(len(ps) / 2)
    fig = Figure(figsize=(15, 2.7 * n_rows + 2.2 * len(strips) + 0.6), dpi=dpi)
    gs = fig.add_gridspec(n_rows + len(strips), 2, height_ratios=[2.7] * n_rows + [2.2] * len(strips))
    fig.suptitle("CLEL run: " + ", ".join(names), x=0.01, ha="left")
    axes = []
    for j, p in enumerate(ps):
        ax = fig.add_subplot(gs[j // 2, j % 2], sharex=axes[0] if axes else None)
        axes.append(ax)
        _draw_panel(ax, p, runs, names)
    for s, (name, ims) in enumerate(strips):
        _draw_strip(fig.add_subplot(gs[n_rows + s, :]), name, ims)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write(path, buf.getvalue())
    return path


def _draw_panel(ax: Any, p: Panel, runs: Sequence[Run], names: Sequence[str]) -> None:
    """One panel on matplotlib axes: every run's series of its keys, and the runs' resume / rollback lines."""
    ax.set_title(p.title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    drawn = False
    for i, (run, name) in enumerate(zip(runs, names)):
        for k, key in enumerate(p.keys):
            x, y, _ = series(run, p, key)
            if not x:
                continue
            label = LABELS.get(key, key) + (f" · {name}" if len(runs) > 1 else "")
            if p.log_y and not any(v > 0 for v in y):
                continue  # a log axis with nothing positive cannot be drawn
            ax.plot(x, y, _MPL_DASH[_DASH[k % len(_DASH)]], color=_colour(i, k, len(runs)), lw=1.2,
                    label=label, marker="o" if p.source == "probes" else None, ms=3)
            drawn = True
        for it, _text, kind in markers(run):
            ax.axvline(it, color=COLOURS[i % len(COLOURS)] if len(runs) > 1 else
                       ("#555" if kind == "resume" else "#d62728"), lw=0.8, ls=":" if kind == "resume" else "--")
    if drawn:
        if p.log_y:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")


def _draw_strip(ax: Any, name: str, ims: Sequence[tuple[int, Any]]) -> None:
    """A run's sample grids side by side in one image, captioned by iteration."""
    from PIL import Image

    h = max(im.height for _, im in ims)
    pad = 6
    canvas = Image.new("RGB", (sum(im.width for _, im in ims) + pad * (len(ims) - 1), h), "white")
    x0, centres = 0, []
    for _, im in ims:
        canvas.paste(im, (x0, 0))
        centres.append(x0 + im.width / 2)
        x0 += im.width + pad
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks(centres, [f"iter {it}" for it, _ in ims], fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"SGLD samples · {name}", fontsize=10, loc="left")
    for side in ax.spines.values():
        side.set_visible(False)
