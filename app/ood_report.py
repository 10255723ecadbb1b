"""What the OOD page reports besides its table: the histogram of the uploads' scores over the reference scores of
:mod:`clel.eval.ood` (with the threshold), and the CSV of the table. Plain Python, tested without Streamlit."""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

UPLOADED_TRACE = "uploaded images"
_REFERENCE_COLORS = ["rgb(255, 127, 14)", "rgb(148, 103, 189)", "rgb(31, 119, 180)", "rgb(140, 86, 75)",
                     "rgb(227, 119, 194)"]


def ood_histogram(reference: Any | None, uploaded: Mapping[str, float], tpr: float = 0.95, nbins: int = 60):
    """Plotly histogram: each reference set's s(x) as a density (left axis), the uploads as counts (right axis),
    and the threshold at ``tpr`` of the in-distribution scores as a vertical line (its own legend entry).

    ``reference`` is a :class:`clel.eval.ood.OODReference` or None (then only the uploads are drawn).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    values = list(uploaded.values())
    lo_hi: list[float] = list(values)
    if reference is not None:
        for key, s in reference.scores.items():
            lo_hi += [float(np.min(s)), float(np.max(s))]
    if lo_hi:
        lo, hi = min(lo_hi), max(lo_hi)
        pad = (hi - lo) * 0.02 or abs(lo) * 0.05 or 1e-3
        bins = {"start": lo - pad, "end": hi + pad, "size": (hi - lo + 2 * pad) / nbins}
    else:
        bins = None
    if reference is not None:
        for i, (key, s) in enumerate(reference.scores.items()):
            ind = key == reference.in_distribution
            color = "rgb(44, 160, 44)" if ind else _REFERENCE_COLORS[i % len(_REFERENCE_COLORS)]
            fig.add_trace(go.Histogram(x=np.asarray(s, dtype=float), name=f"{reference.label(key)} (n={len(s)})",
                                       histnorm="probability density", opacity=0.7 if ind else 0.45,
                                       xbins=bins, marker={"color": color}))
    top = 1
    if values:
        if bins is not None:
            edges = np.arange(bins["start"], bins["end"] + bins["size"], bins["size"])
            top = max(1, int(np.histogram(values, bins=edges)[0].max()))
        fig.add_trace(go.Histogram(x=values, name=f"{UPLOADED_TRACE} (n={len(values)})", yaxis="y2", xbins=bins,
                                   marker={"color": "rgb(214, 39, 40)", "line": {"color": "black", "width": 1}},
                                   hovertext=list(uploaded), opacity=0.9))
        if bins is not None:
            for a in upload_labels(uploaded, edges):
                fig.add_annotation(a)
    if reference is not None and reference.in_distribution in reference.scores:
        t = reference.threshold(tpr)
        fig.add_trace(go.Scatter(x=[t, t], y=[0, 1], yaxis="y3", mode="lines", line={"color": "black", "dash": "dash"},
                                 name=f"threshold at {tpr:.0%} TPR ({t:.4g})", hoverinfo="name"))
    fig.update_layout(
        barmode="overlay", template="plotly_white", height=420, margin={"l": 50, "r": 50, "t": 40, "b": 40},
        title={"text": "OOD score s(x): uploads over the reference sets (higher = more out-of-distribution)",
               "x": 0.01},
        xaxis={"title": "s(x) = ½‖f(x)‖² − β cos(g(f(x)), h(x)/‖h(x)‖)"},
        yaxis={"title": "reference density"},
        # uploads on their own count axis, scaled so their tallest bar reaches a third of the height
        yaxis2={"title": "uploaded images (count)", "overlaying": "y", "side": "right", "range": [0, 3 * top],
                "tickformat": "d", "dtick": max(1, math.ceil(top / 2)), "showgrid": False},
        yaxis3={"overlaying": "y", "range": [0, 1], "visible": False},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def upload_labels(uploaded: Mapping[str, float], edges: np.ndarray, per_bin: int = 3,
                  max_chars: int = 26) -> list[dict[str, Any]]:
    """Plotly annotations naming the files in each bar of the uploads' histogram (on its count axis ``y2``).

    Written upright above the bar so neighbouring bars' labels do not run into each other; a bar with more than
    ``per_bin`` files names the first ones and counts the rest, and a label is cut at ``max_chars`` so it fits
    above the tallest bar (a third of the height) without reaching the title; hovering lists every file.
    """
    names = list(uploaded)
    idx = np.clip(np.searchsorted(edges, list(uploaded.values()), side="right") - 1, 0, len(edges) - 2)
    labels = []
    for b in sorted(set(idx.tolist())):
        files = [names[i] for i in np.flatnonzero(idx == b)]
        text = ", ".join(files[:per_bin]) + (f" +{len(files) - per_bin} more" if len(files) > per_bin else "")
        if len(text) > max_chars:
            text = text[:max_chars - 1] + "…"
        labels.append({"x": float((edges[b] + edges[b + 1]) / 2), "y": len(files), "xref": "x", "yref": "y2",
                       "text": text, "showarrow": False, "textangle": -90, "yanchor": "bottom", "yshift": 4,
                       "font": {"size": 11, "color": "rgb(150, 20, 20)"}, "bgcolor": "rgba(255, 255, 255, 0.7)",
                       "hovertext": "<br>".join(files),
                       "name": "upload label"})
    return labels


def round_sig(value: Any, digits: int = 7) -> Any:
    """Floats to ``digits`` significant digits (float32 scores carry about 7); anything else unchanged."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value != 0:
        return float(f"{float(value):.{digits}g}")
    return value


def scores_csv(rows: Sequence[Mapping[str, Any]], digits: int = 7) -> bytes:
    """CSV of the OOD page's table: one row per file, with its scores or its error.

    Floats are written with ``digits`` significant digits: binary noise such as 57.599999999999994 says
    nothing the scores (float32) or percentiles (counts) know.
    """
    import csv

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else round_sig(r.get(k), digits)) for k in columns})
    return buf.getvalue().encode()
