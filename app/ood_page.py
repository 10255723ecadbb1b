"""CLEL out-of-distribution page (Streamlit): drop images, see how CIFAR-10-like the model finds them.

    streamlit run app/ood_page.py      # from the repository root: .streamlit/config.toml applies there

``.streamlit/config.toml`` turns usage statistics off and caps uploads at 25 MB; from another folder pass
``--server.maxUploadSize 25 --browser.gatherUsageStats false``.

Weights: ``CLEL_WEIGHTS_CIFAR10`` (export folder or Hugging Face repo id), default the bundled
``weights/cifar10``. Reference scores are read from ``ood_reference.safetensors`` in the weights folder (make it
with ``python -m clel.eval.ood --weights weights/cifar10 --data ../shared/data``); without it uploads are still scored.
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from clel.eval.ood import REFERENCE_NAME, load_reference, model_fingerprint, score_images
from clel.images import fit_square, images_to_tensor, png_bytes, upscale
from clel_app.limits import Limits
from clel_app.messages import DemoError, redact_paths, shown_path
from clel_app.models import ModelStore, default_weights
from clel_app.ood_report import ood_histogram, scores_csv
from clel_app.uploads import ImageError, decode_image


REPO = Path(__file__).resolve().parents[1]
EXPLAIN = r"""
An energy-based model gives low energy to images like its training data. CLEL's OOD score (eq. 5 of the paper)
adds the agreement between the energy network and the contrastive encoder:
$s(x) = \tfrac12\|f(x)\|^2 - \beta \cos\big(g(f(x)),\, h(x)/\|h(x)\|\big)$; **higher means more
out-of-distribution**. Each upload is centre-cropped to a square and resized to the model's 32x32 input (the
thumbnail shows exactly what the model sees). An image is flagged when its score is above the threshold that
keeps the chosen share (TPR) of CIFAR-10 test images in-distribution.
"""


ROW_HEIGHT = 72  # pixels: the thumbnails are the model's 32x32 input, enlarged


@st.cache_resource(show_spinner="Loading the CIFAR-10 weights…")
def get_store(spec: str) -> ModelStore:
    return ModelStore({"cifar10": spec})


@st.cache_resource(show_spinner=False)
def get_reference(path: str, mtime: float):  # mtime: a new file is read again
    try:
        return load_reference(path), None
    except ValueError as e:
        return None, str(e)


def thumbnail_url(arr: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(upscale(arr, target=64))).decode()


def load_model(spec: str):
    """The CIFAR-10 weights, or a message and a stop: a model without h cannot compute s(x)."""
    try:
        lm = get_store(spec).get("cifar10")
    except DemoError as e:
        st.error(str(e))
        st.stop()
    st.caption(f"Weights: {lm.describe()}")
    if not lm.has_encoder:  # s(x) needs h(x): say so instead of failing on the first upload
        st.error(f"These CIFAR-10 weights ({shown_path(lm.path)}) were exported without their encoder h; the OOD "
                 f"score s(x) needs it. Point CLEL_WEIGHTS_CIFAR10 at an export that includes h.")
        st.stop()
    return lm


def reference_and_settings(lm, spec: str):
    """(reference or None, β, TPR): the sidebar, and what is wrong with the reference scores if anything."""
    ref_path = lm.path / REFERENCE_NAME
    ref, ref_error = get_reference(str(ref_path), ref_path.stat().st_mtime if ref_path.is_file() else 0.0)
    beta = float(lm.cfg.ood_beta)
    with st.sidebar:
        st.header("Settings")
        tpr = st.slider("In-distribution kept (TPR)", 0.80, 0.99, 0.95, 0.01, format="%.2f",
                        help="The threshold keeps this share of CIFAR-10 test images below it.")
        if ref is not None:
            beta = ref.beta
            st.markdown(f"β = {beta:g} (the reference's)  \nReference AUROC (OOD sets vs CIFAR-10 test):")
            st.table(pd.DataFrame({"set": [ref.label(k) for k in ref.aurocs()],
                                   "AUROC": [round(v, 4) for v in ref.aurocs().values()]}))
    if ref_error:
        st.error(f"The reference scores cannot be read: {redact_paths(ref_error)}. Uploads are still scored.")
    elif ref is None:
        st.info(f"No reference scores next to the weights ({shown_path(ref_path)} is missing), so there is no "
                f"threshold or reference histogram; uploads are still scored. Make them with `python -m clel.eval.ood "
                f"--weights {shown_path(spec) if Path(spec).exists() else spec} --data ../shared/data`.")
    elif ref.fingerprint and ref.fingerprint != model_fingerprint(lm.model):
        st.warning("The reference scores were computed with different weights than the ones loaded; the histogram "
                   "and threshold may not match these scores. Recompute them with `python -m clel.eval.ood`.")
    return ref, beta, tpr


def uploads(limits) -> tuple[list, list[tuple[str, str]]]:
    """The decoded uploads (at most the server's limit) and (file, message) for each that cannot be read."""
    files = st.file_uploader("Drop images here (PNG, JPEG, WebP, …), as many as you like", accept_multiple_files=True,
                             key="uploads")
    files = list(files or [])
    if len(files) > limits.max_ood_files:
        st.warning(f"{len(files)} files uploaded; only the first {limits.max_ood_files} are scored (server limit).")
        files = files[:limits.max_ood_files]
    decoded, errors = [], []
    for f in files:
        try:
            decoded.append(decode_image(f.getvalue(), f.name, limits))
        except ImageError as e:
            errors.append((f.name, str(e)))
    for _, msg in errors:
        st.error(msg)
    return decoded, errors


def score_table(lm, decoded: list, ref, beta: float, tpr: float, spec: str) -> list[dict]:
    """Score the uploads (cached per set of images) and show them as a table with the verdict per file."""
    size = lm.cfg.image_size
    x = images_to_tensor([d.image for d in decoded], size)
    key = hashlib.sha256(x.numpy().tobytes()).hexdigest() + f"{beta!r}{spec}"
    cache = st.session_state.setdefault("_scores", {})
    if key not in cache:
        with st.spinner(f"Scoring {len(decoded)} images…"):
            cache.clear()
            cache[key] = score_images(lm.model, x, beta)
    scores, energies = cache[key]
    threshold = ref.threshold(tpr) if ref is not None else None
    rows = []
    for d, s, e in zip(decoded, scores, energies):
        verdict = "no reference" if threshold is None else (
            "out-of-distribution" if s > threshold else "in-distribution")
        rows.append({"image": thumbnail_url(fit_square(d.image, size)), "file": d.name, "s(x)": float(s),
                     "E(x)": float(e),
                     "CIFAR-10 test percentile": ref.percentile(float(s)) if ref is not None else None,
                     "verdict": verdict, "note": d.note})
    st.subheader(f"Scores ({len(rows)} images)")
    # height="content": every row shows (no inner scroll bar after the fifth 72-pixel row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height="content", row_height=ROW_HEIGHT,
                 column_config={
                     "image": st.column_config.ImageColumn("image", help="what the model sees (its input size, "
                                                                         "enlarged)"),
                     "s(x)": st.column_config.NumberColumn(format="%.5g", help="OOD score, higher = more OOD"),
                     "E(x)": st.column_config.NumberColumn(format="%.5g", help="marginal energy ½‖f(x)‖²"),
                     "CIFAR-10 test percentile": st.column_config.NumberColumn(format="%.1f"),
                 })
    if threshold is not None:
        flagged = sum(r["verdict"] == "out-of-distribution" for r in rows)
        st.markdown(f"Threshold at {tpr:.0%} TPR: **{threshold:.5g}**; {flagged} of {len(rows)} uploads are "
                    f"flagged out-of-distribution.")
    return rows


def main() -> None:
    st.set_page_config(page_title="CLEL · is it CIFAR-10?", layout="wide")
    st.title("Is it CIFAR-10? Energy-based OOD scores")
    st.markdown(EXPLAIN)
    limits = Limits.from_env()
    spec = default_weights("cifar10")
    lm = load_model(spec)
    ref, beta, tpr = reference_and_settings(lm, spec)
    decoded, errors = uploads(limits)
    rows = score_table(lm, decoded, ref, beta, tpr, spec) if decoded else []
    if not decoded and not errors:
        st.caption("Upload images to score them; the histogram below shows the reference sets.")

    fig = ood_histogram(ref, {r["file"]: r["s(x)"] for r in rows}, tpr=tpr)
    st.plotly_chart(fig, width="stretch", key="histogram", theme=None)

    if rows or errors:
        table = [{k: v for k, v in r.items() if k != "image"} | {"error": ""} for r in rows]
        table += [{"file": name, "error": msg} for name, msg in errors]
        st.session_state["csv_rows"] = table
        st.download_button("Download CSV", scores_csv(table), file_name="clel_ood_scores.csv", mime="text/csv")


main()
