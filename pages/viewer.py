"""Viewer: one slide in OpenSeadragon with the model's attention laid over it, and what the model said about it.

URL: ``/viewer?slide=<image_id>[&model=<version>]``; the URL follows the user's choice. An id or version that is not
in the cohort is named on the page (as text) with the list to choose from; nothing else is opened in its place.
Labels, predictions and errors follow core.review.slide_table, like every other page.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cohort.cohort_file import Cohort
from core.cohort.convert import ensure_slide
from core.errors import SlideLensError
from core.model.versions import default_version, version_label, versions_with_predictions
from core.review import viewer_data as vd
from core.review.queue import uncertainty_text
from core.review.slide_table import OOF
from core.slides.slide import needs_conversion
from core.viewer.tiles import attention_path, load_attention_layer, open_cohort_slide, register_cohort
from ui import viewer_component as vc
from ui.annotations_view import annotations_panel, viewer_annotations
from ui.context import current_cohort
from ui.deck_views import add_to_deck
from ui.safe import md

GALLERY_K = 6
PICK = "viewer_pick"  # the chooser's selection state
_SEEN = "_viewer_pick_seen"  # (selected rows, listed ids) as the chooser showed them last run
PAGE, _PAGE_ANCHOR, _MATCHES = "viewer_page", "_viewer_page_anchor", "_viewer_matches"
PAGE_ROWS = 50  # slides listed at once


def model_meta(cohort: Cohort, version: str | None) -> dict[str, Any]:
    """model.json of a version, or {} when there is none or it cannot be read."""
    if not version:
        return {}
    try:
        from core.model.versions import read_model_meta

        return read_model_meta(cohort.models / version)
    except (ImportError, SlideLensError):
        return {}


@st.cache_data(show_spinner=False, max_entries=256)
def _crop(image_id: str, cohort_name: str, x: int, y: int, size: int, out: int = 160) -> Any:
    import numpy as np

    slide = open_cohort_slide(current_cohort(), image_id)
    level = slide.best_level_for_downsample(size / out)
    ds = slide.level_downsamples[level]
    img = slide.read_region((x, y), level, (max(1, round(size / ds)),) * 2)
    return np.asarray(img.resize((out, out)))


# --- model version and slide choice (the URL is the truth) ----------------------------------------------
def _to_url(name: str, key: str) -> None:
    if st.session_state.get(key):
        st.query_params[name] = st.session_state[key]


def choose_version(cohort: Cohort) -> tuple[str | None, bool]:
    """The model version from ?model= (or the default); (None, False) when the URL names an unknown one."""
    versions = versions_with_predictions(cohort.models, cohort.results)
    wanted = st.query_params.get("model")
    if wanted is not None and wanted not in versions:
        choices = ", ".join(f"'{md(v)}'" for v in versions) or "none yet"
        st.error(f"No model version '{md(wanted)}' in cohort '{md(cohort.name)}'. Choose one in the sidebar: "
                 f"{choices}.")
        st.session_state["viewer_version"] = None
        st.sidebar.selectbox("Model version", versions, index=None, placeholder="choose a model version",
                             key="viewer_version", on_change=_to_url, args=("model", "viewer_version"))
        return None, False
    if not versions:
        return None, True
    if wanted is not None:
        st.session_state["viewer_version"] = wanted
    elif st.session_state.get("viewer_version") not in versions:
        st.session_state["viewer_version"] = default_version(cohort.models, cohort.results, among=versions)
    version = st.sidebar.selectbox("Model version", versions, index=None, key="viewer_version",
                                   on_change=_to_url, args=("model", "viewer_version"),
                                   format_func=lambda v: version_label(cohort.models, v))  # "v004-dsmil ⚠": unhealthy
    return version, True


def _picked() -> str | None:
    """The slide the user just picked in the chooser (a selection that differs from the one it was shown with)."""
    state = st.session_state.get(PICK)
    rows = list(state["selection"]["rows"]) if state else []
    seen_rows, seen_ids = st.session_state.get(_SEEN, ([], []))
    if rows and rows != seen_rows and rows[0] < len(seen_ids):
        return seen_ids[rows[0]]
    return None


def _page(rows: pd.DataFrame, open_id: str | None) -> tuple[pd.DataFrame, list[str]]:
    """One page of the matching slides (thumbnails are made for the shown page only, so a cohort of thousands of
    slides lists as fast as a small one); the pager follows the open slide until the user moves it."""
    ids = list(rows["image_id"])
    st.session_state[_MATCHES] = len(ids)
    n_pages = max(1, -(-len(ids) // PAGE_ROWS))
    if n_pages == 1:
        return rows, ids
    anchor = (open_id, len(ids), ids[0])
    if st.session_state.get(_PAGE_ANCHOR) != anchor or not 1 <= st.session_state.get(PAGE, 1) <= n_pages:
        st.session_state[PAGE] = ids.index(open_id) // PAGE_ROWS + 1 if open_id in ids else 1
        st.session_state[_PAGE_ANCHOR] = anchor
    page = int(st.sidebar.number_input(f"Page (of {n_pages})", 1, n_pages, key=PAGE, step=1))
    lo = (page - 1) * PAGE_ROWS
    return rows.iloc[lo:lo + PAGE_ROWS], ids[lo:lo + PAGE_ROWS]


def choose_slide(table: pd.DataFrame, cohort: Cohort) -> tuple[str | None, Callable[[], None]]:
    """Sidebar filters and the slide list (thumbnail, label, prediction, outcome); the chosen id is ?slide=.

    Returns the open slide and a function that draws the list into its place in the sidebar: the page calls it once
    the viewer is on its way, so the new slide's tiles do not wait for the list's thumbnails.
    """
    sb = st.sidebar
    f = vd.SlideFilter(
        text=sb.text_input("Search slides", key="viewer_f_text", placeholder="slide id, label or prediction"),
        labels=tuple(sb.multiselect("Label (reviewed)", sorted(table["label"].dropna().unique()),
                                    key="viewer_f_label")),
        preds=tuple(sb.multiselect("Prediction (out-of-fold)", sorted(table["pred"].dropna().unique()),
                                   key="viewer_f_pred")),
        outcome=sb.radio("Outcome", vd.OUTCOMES, horizontal=True, key="viewer_f_correct",
                         help="Out-of-fold prediction against the reviewed label (as on the analysis page). "
                              "Slides without an out-of-fold prediction are not judged."))
    rows = vd.filter_slides(table, f)
    known = set(table["image_id"])
    wanted = _picked()
    if wanted is not None:
        st.query_params["slide"] = wanted
    else:
        wanted = st.query_params.get("slide")
    if wanted is None:  # a plain /viewer: this session's last slide, else the first listed
        last = st.session_state.get("viewer_open")
        wanted = last if last in known else (rows["image_id"].iloc[0] if len(rows) else table["image_id"].iloc[0])
        st.query_params["slide"] = wanted
    open_id = wanted if wanted in known else None
    if open_id is None:
        st.error(f"No slide '{md(wanted)}' in cohort '{md(cohort.name)}'. Choose one from the list in the sidebar.")
    st.session_state["viewer_open"] = open_id
    rows, ids = _page(rows, open_id)
    sel = [ids.index(open_id)] if open_id in ids else []
    state = st.session_state.get(PICK)
    if not state or list(state["selection"]["rows"]) != sel:
        st.session_state[PICK] = {"selection": {"rows": sel, "columns": [], "cells": []}}
    st.session_state[_SEEN] = (sel, ids)
    n_match = st.session_state.get(_MATCHES, len(rows))
    sb.caption(f"{n_match} of {len(table)} slides · ✓ ✗ out-of-fold outcome, – not judged"
               + ("" if open_id is None or open_id in ids or n_match > len(rows)
                  else f" · the open slide '{md(open_id)}' is filtered out"))
    slot = sb.empty()

    def draw_list() -> None:
        if not len(rows):
            slot.info("No slide matches these filters.")
            return
        cfg = st.column_config
        slot.dataframe(vd.chooser_rows(rows, vc.slide_thumbnails(cohort, ids)), key=PICK, on_select="rerun",
                       selection_mode="single-row", hide_index=True, row_height=44, width="stretch", placeholder="",
                       height=min(480, 40 + 44 * len(rows)),
                       column_config={"thumb": cfg.ImageColumn("", width=40),
                                      "slide": cfg.TextColumn("slide", width=88),
                                      "label": cfg.TextColumn("label", width=50, help="reviewed label"),
                                      "prediction": cfg.TextColumn("pred.", width=50, help="out-of-fold prediction"),
                                      "ok": cfg.TextColumn("", width=24, help="out-of-fold outcome")})

    return open_id, draw_list


# --- what the page says about the slide -----------------------------------------------------------------
def class_selector(classes: list[str], n_heads: int) -> int:
    """The attention column shown (models with per-class attention); the other overlay controls are the viewer's
    own, so changing them redraws the overlay without a rerun of the page."""
    if n_heads <= 1:
        return 0
    names = classes if len(classes) == n_heads else [str(i) for i in range(n_heads)]
    return int(st.columns([1, 2])[0].selectbox("Attention for class", range(n_heads), format_func=lambda i: names[i],
                                               key="viewer_cls"))


def _probs_chart(row: pd.Series, prefix: str, pred: str) -> None:
    probs = {c[len(prefix):]: float(row[c]) for c in row.index if c.startswith(prefix) and pd.notna(row[c])}
    if probs:
        fig = go.Figure(go.Bar(x=list(probs.values()), y=list(probs), orientation="h",
                               marker_color=["#8e2d6b" if k == pred else "#bbb" for k in probs]))
        fig.update_layout(height=60 + 28 * len(probs), margin=dict(l=0, r=0, t=10, b=0),
                          xaxis=dict(range=[0, 1], title="probability"))
        st.plotly_chart(fig, key=f"viewer_probs_{prefix}", config={"displayModeBar": False})


def slide_facts(row: pd.Series, meta: dict[str, Any], slide: Any | None, version: str | None) -> None:
    """Reviewed label (and the labels file's, if different), the out-of-fold prediction that judges errors, the
    final model's prediction (whose attention is drawn), outlier score, mpp and size."""
    def val(col: str) -> Any:
        v = row.get(col)
        return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v

    label, given = val("label"), val("given_label")
    st.metric("Label (reviewed)", label or "none",
              help="The review database's label: the labels file's until a reviewer changes it.")
    flags = [n for n, c in (("outlier", "is_outlier"), ("excluded", "exclude")) if bool(row.get(c))]
    if (given or None) != label or flags:
        st.caption(" · ".join(([f"labels file: {md(given or 'none')}"] if (given or None) != label else [])
                              + [f"flagged {f}" for f in flags]))
    pred, final = val("pred"), val("final_pred")
    other = False
    ood = val("ood_score")
    if ood is not None:
        from core.model.outliers import is_outlier

        other = is_outlier(float(ood), meta)
    if pred is not None and row.get("pred_source") == OOF:
        correct = val("correct")
        verdict = "" if correct is None else (" ✓" if correct else " ✗")
        st.metric("Prediction (out-of-fold)", f"{pred}{verdict}",
                  help="From the fold model that did not train on this slide; errors are judged on it, against the "
                       "reviewed label, as on the analysis page.")
        _probs_chart(row, "prob_", pred)
    if final is not None:
        n_trained = (meta.get("metrics") or {}).get("n_slides")
        trained_on = f"trained on {int(n_trained)} slides" if n_trained else "trained on every labelled slide"
        st.metric("Final model (attention shown)", ("Other? " if other else "") + str(final),
                  help=f"The model {trained_on}: the overlay and the gallery show its attention.")
        st.caption(f"Model {md(version or '')}, {trained_on}; the overlay and the gallery show its attention.")
        spread = val("uncertainty")
        if spread is not None:
            st.caption(uncertainty_text(float(spread)))
        if row.get("pred_source") != OOF:
            st.caption("No out-of-fold prediction for this slide: not judged.")
            _probs_chart(row, "final_prob_", final)
    elif pred is None:
        st.caption("No prediction for this slide yet.")
    if ood is not None:
        thr = (meta.get("ood") or {}).get("threshold")
        st.caption(f"Outlier score {float(ood):.3g}" + (f" (threshold {float(thr):.3g})" if thr else "")
                   + (" — over the threshold: **Other?**" if other else ""))
    if slide is not None:
        w, h = slide.dimensions
        mpp = f"{slide.mpp:.4g} µm/px" if slide.mpp else "unknown (no scale bar)"
        st.caption(f"Size {w:,} × {h:,} px · {slide.level_count} levels · mpp {mpp}"
                   + (f" · {slide.objective_power:g}× objective" if slide.objective_power else ""))


def gallery(image_id: str, cohort: Cohort, layer: Any, cls: int) -> None:
    """The most attended patches with tissue (near-empty ones are left out and named) and the least attended; a
    click pans and zooms the viewer to the patch."""
    raw = layer.column(cls)
    size = layer.patch_size_level0
    top, bottom, left_out = vd.gallery_patches(raw, layer.coords, size, GALLERY_K,
                                               vc.tissue_fractions(cohort, image_id, size))
    n = len(raw)
    st.caption(f"Rank among {n:,} patches · share of the slide's attention (final model). Patches with less than "
               f"{vd.GALLERY_MIN_TISSUE:.0%} tissue are left out of the most attended.")
    if left_out:
        st.caption("Left out as mostly glass: " + ", ".join(
            f"#{p.rank} ({p.tissue:.0%} tissue" + (f", {vd.format_share(p.share)}" if p.share is not None else "")
            + ")" for p in left_out))
    for title, picks in (("Most attended", top), ("Least attended", bottom)):
        st.markdown(f"**{title}**")
        cols = st.columns(GALLERY_K)
        for j, p in enumerate(picks):
            with cols[j]:
                try:
                    st.image(_crop(image_id, cohort.name, p.x, p.y, size), width="stretch")
                except SlideLensError as exc:
                    st.caption(str(exc))
                tissue = "" if p.tissue is None else f", {p.tissue:.0%} tissue"
                st.button(f"#{p.rank:,}" + ("" if p.share is None else f" · {vd.format_share(p.share)}"),
                          key=f"viewer_goto_{title[:4]}_{j}", width="stretch", on_click=_set_goto,
                          args=(image_id, p.x, p.y, size),
                          help=f"{p.caption(n)} (raw {p.raw:.3g}{tissue}); patch at ({p.x}, {p.y}). Click to go there.")


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
        from core.model.backbones import create_backbone
        from core.model.features import extract_slide
        from core.model.infer import ensure_results

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
    version, ok = choose_version(cohort)
    if not ok:
        return
    try:
        table, note = vc.viewer_table(cohort, version)
    except SlideLensError as exc:
        st.error(str(exc))
        return
    if note:
        st.caption(md(note))
    if table.empty:
        st.info(f"Cohort '{md(cohort.name)}' has no slides.")
        return
    image_id, draw_list = choose_slide(table, cohort)
    try:
        if image_id is not None:
            show_slide(cohort, version, table, image_id)
    finally:
        draw_list()


def show_slide(cohort: Cohort, version: str | None, table: pd.DataFrame, image_id: str) -> None:
    """The viewer with its overlay and gallery, the slide's facts and the relabel panel."""
    row = table.loc[table["image_id"] == image_id].iloc[0]
    slide, layer = None, None
    try:
        path = cohort.slide_path(image_id)
        if needs_conversion(path, cohort.cache_dir):  # first view of a PNG/JPEG/other TIFF: build its pyramid
            bar = st.progress(0.0, f"Converting '{md(image_id)}' to a pyramid (first view only)")
            ensure_slide(path, cohort.cache_dir, cohort.mpp_for(image_id), lambda f, m: bar.progress(f, md(m)))
            bar.empty()
        slide = open_cohort_slide(cohort, image_id)
    except SlideLensError as exc:
        st.error(str(exc))
    if slide is not None and version and attention_path(cohort, version, image_id).is_file():
        try:
            layer = load_attention_layer(cohort, version, image_id, slide.dimensions)
        except SlideLensError as exc:
            st.warning(str(exc))
    left, right = st.columns([3, 1], gap="medium")
    cls = 0
    with left:
        if slide is not None:
            ov = None
            if layer is not None:
                cls = class_selector(layer.classes, layer.n_heads)
                stamp = attention_path(cohort, version, image_id).stat().st_mtime_ns
                ov = vc.overlay_data(version, image_id, cohort.name, cls, stamp)
            goto = st.session_state.get("viewer_goto")
            goto = goto if goto and goto.get("image_id") == image_id else None
            anns, on_ops = viewer_annotations(cohort, image_id, slide.dimensions)
            viewport = vc.slide_viewer(vc.slide_data(slide, image_id, cohort.name), ov, goto, key="viewer_osd",
                                       annotations=anns, on_annotation_ops=on_ops)
            if viewport and viewport.get("image_id") == image_id:
                st.caption(f"View centre ({viewport['x']:.0f}, {viewport['y']:.0f}) px, "
                           f"zoom {viewport['zoom']:.3g} screen px per slide px")
            annotations_panel(cohort, image_id, layer, slide.dimensions)
            if layer is None:
                compute_attention(cohort, version, image_id)
            else:
                gallery(image_id, cohort, layer, cls)
    with right:
        slide_facts(row, model_meta(cohort, version), slide, version)
        # --- relabel panel (owned by the review page's module; shown here when it exists) ---
        if importlib.util.find_spec("ui.review_panel") is not None:
            from ui.review_panel import relabel_panel

            relabel_panel(cohort, image_id, model_version=version)
        add_to_deck(cohort, [image_id], key="viewer_deck", model_version=version)


main()
