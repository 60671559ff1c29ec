"""Viewer: one slide in OpenSeadragon with the model's attention laid over it, and what the model said about it.

URL: ``/viewer?slide=<image_id>[&model=<version>]``; the slide id in the URL follows the user's choice.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cohort import Cohort
from core.errors import SlideLensError
from core.models import versions_with_predictions
from core.tiles import OverlayStyle, attention_path, load_attention_layer, open_cohort_slide, register_cohort
from ui.context import current_cohort
from ui.viewer_component import overlay_data, slide_data, slide_viewer

GALLERY_K = 6
ALL = "All"


# --- data (cached by file modification times) ------------------------------------------------------------
def _mtime(path: Path | None) -> float:
    return path.stat().st_mtime if path is not None and path.is_file() else 0.0


@st.cache_data(show_spinner=False, max_entries=32)
def _slide_table(cohort_src: str, ids: tuple[str, ...], labels: str | None, preds: str | None,
                 _m: tuple[float, float]) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": list(ids)})
    if labels and Path(labels).is_file():
        lab = pd.read_csv(labels, dtype={"image_id": str})
        if {"image_id", "label"} <= set(lab.columns):
            df = df.merge(lab[["image_id", "label"]].drop_duplicates("image_id"), on="image_id", how="left")
    if preds and Path(preds).is_file():
        pr = pd.read_csv(preds, dtype={"image_id": str, "pred": str})
        df = df.merge(pr.drop_duplicates("image_id"), on="image_id", how="left")
    for col in ("label", "pred"):
        if col not in df:
            df[col] = None
    df["correct"] = np.where(df["label"].notna() & df["pred"].notna(), df["label"] == df["pred"], None)
    return df


def slide_table(cohort: Cohort, version: str | None) -> pd.DataFrame:
    """One row per slide: image_id, label, pred, correct, prob_<class>..., ood_score (where known)."""
    preds = cohort.results / version / "predictions.csv" if version else None
    return _slide_table(str(cohort.source or cohort.root), tuple(cohort.slide_paths),
                        str(cohort.labels) if cohort.labels else None, str(preds) if preds else None,
                        (_mtime(cohort.labels), _mtime(preds)))


def model_meta(cohort: Cohort, version: str | None) -> dict[str, Any]:
    """model.json of a version, or {} when there is none or it cannot be read."""
    if not version:
        return {}
    try:
        from core.models import read_model_meta

        return read_model_meta(cohort.models / version)
    except (ImportError, SlideLensError):
        return {}


@st.cache_data(show_spinner=False, max_entries=256)
def _crop(image_id: str, cohort_name: str, x: int, y: int, size: int, out: int = 160) -> np.ndarray:
    cohort = current_cohort()
    slide = open_cohort_slide(cohort, image_id)
    level = slide.best_level_for_downsample(size / out)
    ds = slide.level_downsamples[level]
    img = slide.read_region((x, y), level, (max(1, round(size / ds)),) * 2)
    return np.asarray(img.resize((out, out)))


# --- widgets --------------------------------------------------------------------------------------------
def choose_slide(table: pd.DataFrame) -> str | None:
    """Sidebar filters and the slide list; the chosen id is mirrored in the URL (?slide=)."""
    sb = st.sidebar
    labels = sorted(table["label"].dropna().unique())
    preds = sorted(table["pred"].dropna().unique())
    rows = table
    if labels:
        pick = sb.multiselect("Given label", labels, key="viewer_f_label")
        rows = rows[rows["label"].isin(pick)] if pick else rows
    if preds:
        pick = sb.multiselect("Prediction", preds, key="viewer_f_pred")
        rows = rows[rows["pred"].isin(pick)] if pick else rows
    if table["correct"].notna().any():
        which = sb.radio("Outcome", [ALL, "Correct", "Incorrect"], horizontal=True, key="viewer_f_correct")
        if which != ALL:
            rows = rows[rows["correct"] == (which == "Correct")]
    ids = list(rows["image_id"])
    wanted = st.query_params.get("slide")
    if wanted and wanted not in set(table["image_id"]):
        st.warning(f"Slide {wanted!r} (from the link) is not in this cohort.")
    if wanted in set(table["image_id"]) and st.session_state.get("viewer_slide") != wanted:
        st.session_state["viewer_slide"] = wanted  # a shared link or the browser's back button
    current = st.session_state.get("viewer_slide")
    if current and current not in ids and current in set(table["image_id"]):
        ids = [current, *ids]  # keep the open slide listed even when the filters exclude it
    if not ids:
        sb.info("No slide matches these filters.")
        return None
    sb.caption(f"{len(rows)} of {len(table)} slides")
    chosen = sb.selectbox("Slide", ids, key="viewer_slide", on_change=_slide_to_url)
    if st.query_params.get("slide") != chosen:
        st.query_params["slide"] = chosen
    return chosen


def _slide_to_url() -> None:
    # runs before the script: the URL already names the new slide when choose_slide reads it
    st.query_params["slide"] = st.session_state["viewer_slide"]


def class_selector(classes: list[str], n_heads: int) -> int:
    """The attention column shown (models with per-class attention); colour map, rescaling and top fraction are
    controls of the viewer itself, so changing them redraws the overlay without a rerun of the page."""
    if n_heads <= 1:
        return 0
    names = classes if len(classes) == n_heads else [str(i) for i in range(n_heads)]
    return int(st.columns([1, 2])[0].selectbox("Attention for class", range(n_heads), format_func=lambda i: names[i],
                                               key="viewer_cls"))


def slide_facts(cohort: Cohort, row: pd.Series | None, meta: dict[str, Any], slide: Any | None) -> None:
    """Label, prediction, probabilities, outlier score, mpp and size."""
    label = row["label"] if row is not None and pd.notna(row.get("label")) else None
    pred = row["pred"] if row is not None and pd.notna(row.get("pred")) else None
    st.metric("Given label", label or "none")
    if pred is not None:
        ood = row.get("ood_score")
        other = False
        if ood is not None and pd.notna(ood):
            from core.outliers import is_outlier

            other = is_outlier(float(ood), meta)
        verdict = "" if label is None else (" ✓" if pred == label else " ✗")
        st.metric("Prediction", ("Other? " if other else "") + f"{pred}{verdict}")
        probs = {c[5:]: float(row[c]) for c in row.index if c.startswith("prob_") and pd.notna(row[c])}
        if probs:
            fig = go.Figure(go.Bar(x=list(probs.values()), y=list(probs), orientation="h",
                                   marker_color=["#8e2d6b" if k == pred else "#bbb" for k in probs]))
            fig.update_layout(height=60 + 28 * len(probs), margin=dict(l=0, r=0, t=10, b=0),
                              xaxis=dict(range=[0, 1], title="probability"))
            st.plotly_chart(fig, key="viewer_probs", config={"displayModeBar": False})
        if ood is not None and pd.notna(ood):
            thr = (meta.get("ood") or {}).get("threshold")
            st.caption(f"Outlier score {float(ood):.3g}" + (f" (threshold {float(thr):.3g})" if thr else "")
                       + (" — over the threshold: **Other?**" if other else ""))
    else:
        st.caption("No prediction for this slide yet.")
    if slide is not None:
        w, h = slide.dimensions
        mpp = f"{slide.mpp:.4g} µm/px" if slide.mpp else "unknown (no scale bar)"
        st.caption(f"Size {w:,} × {h:,} px · {slide.level_count} levels · mpp {mpp}"
                   + (f" · {slide.objective_power:g}× objective" if slide.objective_power else ""))


def gallery(image_id: str, cohort: Cohort, layer: Any, style: OverlayStyle) -> None:
    """Top-k and bottom-k attended patches; a click pans and zooms the viewer to the patch."""
    raw = layer.column(style.cls)
    order = np.argsort(-raw, kind="stable")
    k = min(GALLERY_K, len(order))
    for title, picks in (("Most attended", order[:k]), ("Least attended", order[::-1][:k])):
        st.markdown(f"**{title}**")
        cols = st.columns(k or 1)
        for j, i in enumerate(picks):
            x, y = (int(v) for v in layer.coords[i])
            size = layer.patch_size_level0
            with cols[j]:
                try:
                    st.image(_crop(image_id, cohort.name, x, y, size), width="stretch")
                except SlideLensError as exc:
                    st.caption(str(exc))
                st.button(f"{raw[i]:.3g}", key=f"viewer_goto_{title[:4]}_{j}", help=f"patch at ({x}, {y})",
                          on_click=_set_goto, args=(image_id, x, y, size), width="stretch")


def _set_goto(image_id: str, x: int, y: int, size: int) -> None:
    st.session_state["viewer_goto"] = {"image_id": image_id, "x": x, "y": y, "w": size, "h": size,
                                       "nonce": time.time_ns()}


def compute_attention(cohort: Cohort, version: str | None, image_id: str) -> None:
    """Extract features (if missing) and run the model on one slide, with a progress bar."""
    if not version or not (cohort.models / version / "model.json").is_file():
        st.info("No trained model yet: train one (`python -m core train`) to see attention.")
        return
    if not st.button("Compute attention", key="viewer_compute", type="primary"):
        return
    bar = st.progress(0.0, "starting")
    try:
        from core.backbones import create_backbone
        from core.features import extract_slide
        from core.infer import ensure_results

        feats = cohort.features / f"{image_id}.h5"
        if not feats.is_file():
            meta = model_meta(cohort, version)
            backbone = create_backbone(meta.get("backbone") or "efficientnet_lite0", device="auto")
            extract_slide(cohort.slide_path(image_id), feats, backbone, patch_size=cohort.patch_size,
                          target_mpp=cohort.target_mpp, min_tissue=cohort.min_tissue, mpp=cohort.mpp_for(image_id),
                          default_mpp=cohort.default_mpp, cache_dir=cohort.cache_dir, num_workers=0,
                          progress=lambda f, m: bar.progress(min(0.9 * f, 0.9), m))
        ensure_results(cohort, version, [image_id], progress=lambda f, m: bar.progress(0.9 + 0.1 * min(f, 1), m))
        bar.progress(1.0, "done")
        st.rerun()
    except SlideLensError as exc:
        st.error(str(exc))


def main() -> None:
    st.title("Slide viewer")
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(str(exc))
        st.info("Open a cohort: set SLIDELENS_COHORT=/path/to/cohort.toml, or build the demo (`make demo`).")
        return
    register_cohort(cohort)
    versions = versions_with_predictions(cohort.models, cohort.results)
    version = None
    if versions:
        wanted = st.query_params.get("model")
        if wanted in versions and "viewer_version" not in st.session_state:
            st.session_state["viewer_version"] = wanted
        version = st.sidebar.selectbox("Model version", versions, index=len(versions) - 1, key="viewer_version")
    table = slide_table(cohort, version)
    if table.empty:
        st.info(f"Cohort {cohort.name!r} has no slides.")
        return
    image_id = choose_slide(table)
    if image_id is None:
        return
    row = table.loc[table["image_id"] == image_id].iloc[0]
    slide, layer = None, None
    try:
        slide = open_cohort_slide(cohort, image_id)
    except SlideLensError as exc:
        st.error(str(exc))
    if slide is not None and version and attention_path(cohort, version, image_id).is_file():
        try:
            layer = load_attention_layer(cohort, version, image_id, slide.dimensions)
        except SlideLensError as exc:
            st.warning(str(exc))
    left, right = st.columns([3, 1], gap="medium")
    style = OverlayStyle()
    with left:
        if slide is not None:
            ov = None
            if layer is not None:
                style = OverlayStyle(cls=class_selector(layer.classes, layer.n_heads))
                stamp = attention_path(cohort, version, image_id).stat().st_mtime_ns
                ov = overlay_data(version, image_id, cohort.name, style.cls, stamp)
            goto = st.session_state.get("viewer_goto")
            goto = goto if goto and goto.get("image_id") == image_id else None
            viewport = slide_viewer(slide_data(slide, image_id, cohort.name), ov, goto, key="viewer_osd")
            if viewport and viewport.get("image_id") == image_id:
                st.caption(f"View centre ({viewport['x']:.0f}, {viewport['y']:.0f}) px, "
                           f"zoom {viewport['zoom']:.3g} screen px per slide px")
            if layer is None:
                compute_attention(cohort, version, image_id)
    with right:
        slide_facts(cohort, row, model_meta(cohort, version), slide)
        # --- relabel panel (owned by the review page's module; shown here when it exists) ---
        if importlib.util.find_spec("ui.review_panel") is not None:
            from ui.review_panel import relabel_panel

            relabel_panel(cohort, image_id)
    if layer is not None:
        gallery(image_id, cohort, layer, style)


main()
