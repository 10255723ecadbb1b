"""Figures (PNG drawn with PIL, no browser needed; HTML with plotly) and the markdown report of eval.json."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.ood import OOD_COLUMNS



PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def histogram_png(series: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "",
                  xlabel: str = "score", bins: int = 50, size: tuple[int, int] = (720, 440)) -> Path:
    """Overlaid density histograms (shared bins) of several score sets, as a PNG drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    vals = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in series.items() if len(v)}
    allv = np.concatenate(list(vals.values())) if vals else np.zeros(1)
    lo, hi = np.percentile(allv, [0.5, 99.5]) if allv.size > 1 else (allv.min() - 1, allv.max() + 1)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    dens = {k: np.histogram(np.clip(v, lo, hi), edges, density=True)[0] for k, v in vals.items()}
    ymax = max((d.max() for d in dens.values()), default=1.0) * 1.08 or 1.0
    W, H = size
    L, R, T, B = 70, 20, 40, 60
    img = Image.new("RGB", (W, H), "white")
    over = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d, od = ImageDraw.Draw(img), ImageDraw.Draw(over)
    font = ImageFont.load_default()

    def px(x: float) -> float:
        return L + (x - lo) / (hi - lo) * (W - L - R)

    def py(y: float) -> float:
        return H - B - y / ymax * (H - T - B)

    for i, (k, dv) in enumerate(dens.items()):
        c = PALETTE[i % len(PALETTE)]
        for j, h in enumerate(dv):
            if h > 0:
                od.rectangle([px(edges[j]), py(h), px(edges[j + 1]), py(0)], fill=c + (90,), outline=c + (200,))
    img.paste(over, (0, 0), over)
    d.rectangle([L, T, W - R, H - B], outline="black")
    for t in _nice_ticks(lo, hi):
        x = px(t)
        d.line([x, H - B, x, H - B + 5], fill="black")
        d.text((x - 12, H - B + 8), _fmt(t), fill="black", font=font)
    for t in _nice_ticks(0, ymax):
        y = py(t)
        d.line([L - 5, y, L, y], fill="black")
        d.text((5, y - 6), _fmt(t), fill="black", font=font)
    d.text((W // 2 - 3 * len(xlabel), H - 22), xlabel, fill="black", font=font)
    d.text((5, T - 30), "density", fill="black", font=font)
    d.text((L, 8), title, fill="black", font=font)
    for i, k in enumerate(dens):
        c = PALETTE[i % len(PALETTE)]
        y = T + 8 + 16 * i
        d.rectangle([W - R - 190, y, W - R - 178, y + 10], fill=c)
        d.text((W - R - 172, y - 1), f"{k} (n={len(vals[k])})", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def confusion_png(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
                  title: str = "", cell: int = 44) -> Path:
    """Row-normalised confusion matrix (rows: conditioned class, columns: judged class) as a PNG heat map."""
    from PIL import Image, ImageDraw, ImageFont

    m = np.asarray(matrix, dtype=np.float64)
    k = len(labels)
    L, T = 90, 90
    W, H = L + k * cell + 20, T + k * cell + 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 8), title, fill="black", font=font)
    d.text((L, H - 24), "judged class (columns) / conditioned class (rows)", fill="black", font=font)
    for i in range(k):
        d.text((5, T + i * cell + cell // 2 - 6), labels[i][:13], fill="black", font=font)
        label = labels[i][:7]
        d.text((L + i * cell + 2, T - 16 - 12 * (i % 2)), label, fill="black", font=font)
        for j in range(k):
            v = float(m[i, j])
            shade = int(255 * (1 - v))
            d.rectangle([L + j * cell, T + i * cell, L + (j + 1) * cell, T + (i + 1) * cell],
                        fill=(shade, shade, 255), outline=(200, 200, 200))
            d.text((L + j * cell + 8, T + i * cell + cell // 2 - 6), f"{v:.2f}",
                   fill="white" if v > 0.5 else "black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plotly_histograms_html(panels: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                           title: str = "", xlabel: str = "s(x)") -> Path:
    """One interactive page: a histogram panel per OOD set (in-distribution vs that set).

    plotly.js is written once next to the HTML (``include_plotlyjs="directory"``), so the page works offline.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = list(panels)
    cols = 2 if len(keys) > 1 else 1
    rows = max(1, math.ceil(len(keys) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys)
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        for j, (name, v) in enumerate(panels[key].items()):
            fig.add_trace(go.Histogram(x=np.asarray(v, dtype=np.float64), name=name, histnorm="probability density",
                                       opacity=0.55, nbinsx=60, legendgroup=name, showlegend=i == 0 or j > 0,
                                       marker_color=f"rgb{PALETTE[j % len(PALETTE)]}"), row=r, col=c)
        fig.update_xaxes(title_text=xlabel, row=r, col=c)
    fig.update_layout(barmode="overlay", title=title, height=320 * rows, width=1000)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def plotly_confusion_html(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> Path:
    import plotly.graph_objects as go

    m = np.asarray(matrix, dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=m, x=list(labels), y=list(labels), colorscale="Blues", zmin=0, zmax=1,
                               text=np.round(m, 2), texttemplate="%{text}"))
    fig.update_layout(title=title, xaxis_title="judged class", yaxis_title="conditioned class",
                      yaxis_autorange="reversed", width=700, height=650)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


def ood_figures(raw: Mapping[str, Mapping[str, np.ndarray]], out_dir: str | os.PathLike,
                in_key: str = "cifar10_test") -> dict[str, Any]:
    """Per-dataset histogram PNGs of s(x) and E(x) (in-distribution vs the set) and one plotly HTML page."""
    out = Path(out_dir)
    files: dict[str, Any] = {"png": {}, "html": None}
    panels_s: dict[str, dict[str, np.ndarray]] = {}
    for key, r in raw.items():
        if key == in_key:
            continue
        label = OOD_COLUMNS.get(key, key)
        pair_e = {"CIFAR-10 test": raw[in_key]["energy"], label: r["energy"]}
        files["png"][key] = {
            "energy": str(histogram_png(pair_e, out / "figures" / f"ood_{key}_energy.png",
                                        f"marginal energy: CIFAR-10 test vs {label}", "1/2 |f(x)|^2").name),
        }
        if "score" in r:
            pair_s = {"CIFAR-10 test": raw[in_key]["score"], label: r["score"]}
            files["png"][key]["score"] = str(histogram_png(
                pair_s, out / "figures" / f"ood_{key}_score.png", f"s(x): CIFAR-10 test vs {label}",
                "s(x) (higher = more OOD)").name)
            panels_s[f"s(x): {label}"] = pair_s
        panels_s[f"E(x): {label}"] = pair_e
    if panels_s:
        files["html"] = str(plotly_histograms_html(panels_s, out / "figures" / "ood_histograms.html",
                                                   "OOD scores, CIFAR-10 test vs each set", "score").name)
    return files


# ----------------------------------------------------------------------------------------------------------------
# Markdown report
# ----------------------------------------------------------------------------------------------------------------

def chain_words(chain: Mapping[str, Any]) -> str:
    """A judged chain as a report says it: one plain chain from noise, or augmented sweeps (the demo's 5 x 20)."""
    from ..sampling import DEMO_STEPS, DEMO_SWEEPS

    sweeps, steps = chain.get("sweeps") or 1, chain.get("steps")
    if sweeps <= 1:
        return f"one chain of {steps} SGLD steps from noise"
    demo = " (the demo's chain)" if (sweeps, steps) == (DEMO_SWEEPS, DEMO_STEPS) else ""
    return f"{sweeps} augmented sweeps of {steps} SGLD steps{demo}"


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _section_md(title: str, section: Mapping[str, Any], body) -> list[str]:
    """A report section: its heading, then the reason it was skipped or its ``body`` lines."""
    head = [f"## {title}", ""]
    return head + ([f"_{section['status']}_", ""] if "status" in section else body(section))


def _fid_md(fid: Mapping[str, Any]) -> list[str]:
    """FID / KID table."""
    lines: list[str] = []
    ref = fid.get("reference", {})
    lines += [f"Reference: {ref.get('set', '?')}, {ref.get('n', '?')} images. The CIFAR-10 copy here is "
              f"JPEG-compressed, so numbers are not comparable with FIDs against the published "
              f"statistics. Sampling: {fid.get('protocol', '?')} protocol, "
              f"{fid.get('settings', {}).get('sweeps', '?')} x {fid.get('settings', {}).get('steps', '?')} "
              f"SGLD steps.", "",
              "| samples | FID-1k | FID-10k | FID-50k | KID (x 1e3) |", "|---|---|---|---|---|"]
    kid = fid.get("kid") or {}
    kid_s = f"{kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f}" if kid else "–"
    lines += [f"| {fid.get('samples')} | {_num(fid.get('fid_1k'), 2)} | {_num(fid.get('fid_10k'), 2)} | "
              f"{_num(fid.get('fid_50k'), 2)} | {kid_s} |", ""]
    return lines + _judge_distances_md(fid)


def _buffer_md(buf: Mapping[str, Any]) -> list[str]:
    """FID / KID of the replay buffer shipped with the weights, in the FID table's layout."""
    ref = buf.get("reference", {})
    kid = buf.get("kid") or {}
    kid_s = f"{kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f}" if kid else "–"
    fids = {k: v for k, v in buf.items() if k.startswith("fid_")}
    it = f", saved at iteration {buf['iteration']}" if buf.get("iteration") is not None else ""
    lines = [f"The model's own long-run chains: the {buf.get('images', '?')} images of the replay buffer shipped "
             f"with the weights{it} (grid: `{buf.get('grid', '?')}`), against the FID section's reference "
             f"({ref.get('set', '?')}, {ref.get('n', '?')} images): its FID-1k compares with the reference "
             "sampler's FID-1k there.", "",
             "| images | " + " | ".join(k.replace("fid_", "FID-") for k in fids) + " | KID (x 1e3) |",
             "|---" * (len(fids) + 2) + "|",
             f"| {buf.get('images')} | " + " | ".join(_num(v, 2) for v in fids.values()) + f" | {kid_s} |", ""]
    return lines + _judge_distances_md(buf)


def _judge_distances_md(section: Mapping[str, Any]) -> list[str]:
    """The independent FD / KID in a judge's features (clel.eval.fid.judge_report), or why they are missing."""
    if section.get("fd_judge_status"):
        return [f"Judge-feature FD / KID: _{section['fd_judge_status']}_", ""]
    fds = {k: v for k, v in section.items() if k.startswith("fd_judge_")}
    if not fds:
        return []
    kid = section.get("kid_judge") or {}
    kid_s = f"{kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f}" if kid else "–"
    return [f"In the pooled features of the judge `{section.get('feature_judge')}` (no model is trained with them, "
            f"so the encoder cannot flatter these), against {section.get('judge_reference')} real images:", "",
            "| " + " | ".join(k.replace("fd_judge_", "FD-") for k in fds) + " | KID (x 1e3) |",
            "|---" * (len(fds) + 1) + "|",
            "| " + " | ".join(_num(v, 2) for v in fds.values()) + f" | {kid_s} |", ""]


def _ood_md(ood: Mapping[str, Any]) -> list[str]:
    """Table 1c layout: AUROC per OOD set."""
    lines: list[str] = []
    sets = ood["sets"]
    cols = list(sets)
    lines += ["| score | " + " | ".join(sets[c]["label"] for c in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for key, name in (("auroc_score", f"CLEL s(x), β = {ood['beta']:g}"),
                      ("auroc_energy", "marginal ½‖f(x)‖² only")):
        cells = [_num(sets[c].get(key)) if sets[c].get("status") == "ok" else "not installed"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| images | " + " | ".join(str(sets[c].get("n", "–")) for c in cols) + " |")
    if ood.get("score_status"):
        lines += ["", f"_{ood['score_status']}._"]
    lines += ["", "Published CLEL-Base: SVHN 0.9848, Textures 0.9437, CIFAR10 Interp. 0.7248, "
              "CIFAR100 0.7161, CelebA 0.7717.", ""]
    return lines


def _conditional_md(cond: Mapping[str, Any]) -> list[str]:
    """Confusion matrix of the judged class-conditional samples."""
    lines: list[str] = []
    cls = cond["classes"]
    judge = cond.get("judge", {})
    lines += [f"Judge: `{judge.get('path', '?')}` (test accuracy {_num(judge.get('test_accuracy'))}). "
              f"{cond['n_per_class']} samples per class, guidance {cond['guidance']:g}, "
              f"{chain_words(cond['chain'])}. Rows: conditioned class; columns: judged class. "
              f"Mean diagonal: **{cond['accuracy']:.3f}**.", "",
              "| | " + " | ".join(c[:5] for c in cls) + " |", "|---|" + "---|" * len(cls)]
    for c, row in zip(cls, cond["confusion"]):
        lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines.append("")
    return lines


def _compositional_md(comp: Mapping[str, Any]) -> list[str]:
    """Judged attribute rates per composition."""
    lines: list[str] = []
    attrs = list(comp["rows"][0]["rate"]) if comp["rows"] else []
    judge = comp.get("judge", {})
    accs = judge.get("test_accuracy")
    accs = ", ".join(f"{k} {_num(v, 3)}" for k, v in accs.items()) if isinstance(accs, dict) else _num(accs)
    lines += [f"Judge: `{judge.get('path', '?')}` (held-out accuracy {accs}). "
              f"{comp['n_per_condition']} samples per condition, guidance {comp['guidance']:g}, "
              f"{chain_words(comp.get('chain') or {})}. Cells: "
              f"fraction judged to have the attribute; accuracy: agreement with the asked-for terms.", "",
              "| condition | " + " | ".join(attrs) + " | accuracy | all terms | diversity |",
              "|---|" + "---|" * (len(attrs) + 3)]
    for r in comp["rows"]:
        lines.append(f"| {r['condition']} | " + " | ".join(f"{r['rate'][a]:.2f}" for a in attrs)
                     + f" | {_num(r.get('accuracy'), 3)} | {_num(r.get('all_correct'), 3)} "
                     f"| {_num(r.get('diversity'), 3)} |")
    if comp.get("diversity_ratio") is not None:
        lines += ["", "Diversity of the conditioned samples over the unconditional ones: "
                      f"{comp['diversity_ratio']:.3f}."]
    lines.append("")
    if comp.get("unconditional"):
        lines += ["Unconditional samples:", ""] + _judge_distances_md(comp["unconditional"])
    if comp.get("buffer"):
        lines += [f"The model's replay buffer ({comp['buffer'].get('images')} images of its own long-run chains):",
                  ""] + _judge_distances_md(comp["buffer"])
    return lines


def _lookalikes_md(look: Mapping[str, Any]) -> list[str]:
    """Judged agreement of look-alikes with their uploads, and their distances in the judge's features."""
    judge, chain = look.get("judge", {}), look["chain"]
    chance = f" (chance {look['chance']:.2f})" if look.get("chance") else ""
    return [f"Judge: `{judge.get('path', '?')}`. {look['uploads']} held-out uploads, {look['per_upload']} "
            f"look-alikes each, guidance {look['guidance']:g}, {chain['sweeps']} sweeps of {chain['steps']} SGLD "
            "steps (the demo's chain). Agreement: the judge gives a look-alike the upload's class (faces: the share "
            "of attributes it judges the same as the upload's).", "",
            "| agreement | distance to its upload | to the other uploads | clamped |", "|---|---|---|---|",
            f"| **{look['agreement']:.3f}**{chance} | {look['dist_own']:.3f} | {look['dist_other']:.3f} "
            f"| {_num(look.get('clamped'))} |", ""]


def _encoder_md(enc: Mapping[str, Any]) -> list[str]:
    """kNN accuracy of h."""
    lines: list[str] = []
    lines += ["| kNN accuracy | k | train | test | nearest-prototype accuracy |", "|---|---|---|---|---|",
              f"| {enc['knn_accuracy']:.4f} | {enc['k']} | {enc['train']} | {enc['test']} | "
              f"{_num(enc.get('prototype_accuracy'))} |", ""]
    return lines


def markdown_report(ev: Mapping[str, Any]) -> str:
    """eval.json as markdown tables (FID/KID, the replay buffer's, Table 1c layout, confusion matrix, attributes,
    look-alikes, encoder)."""
    lines = ["# CLEL evaluation", ""]
    w = ev.get("weights", {})
    lines += [f"Weights: `{w.get('path', '?')}` ({w.get('dataset', '?')}, arch {w.get('arch', '?')}"
              + (f", iteration {w['iteration']}" if w.get("iteration") is not None else "") + f"). "
              f"Device: {ev.get('device', '?')}.", ""]
    for key, title, body in (
            ("fid", 'FID (TF-Inception 2015-12-05 pool features)', _fid_md),
            ("buffer", "Replay buffer", _buffer_md),
            ("ood", 'OOD detection, AUROC (CIFAR-10 test → OOD set; layout of Table 1c)', _ood_md),
            ("conditional", "Class-conditional samples judged by the CIFAR-10 classifier (Fig. 3c)",
             _conditional_md),
            ("compositional", "Compositional samples judged by the CelebA attribute classifier (Fig. 4b)",
             _compositional_md),
            ("lookalikes", "Look-alikes of held-out uploads, judged", _lookalikes_md),
            ("encoder", 'Encoder h', _encoder_md),
    ):
        if ev.get(key):
            lines += _section_md(title, ev[key], body)
    t = ev.get("timings_s")
    if t:
        lines += ["## Timings", "", "| section | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
        lines.append("")
    return "\n".join(lines)
