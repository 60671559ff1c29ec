"""Error analysis: where the model fails, which errors cost the most score, calibration and likely label errors."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from core.analysis import (
    calibration,
    cell_slides,
    compare_versions,
    compute_metrics,
    confusion,
    coverage_curve,
    error_impact,
    metrics_by,
    per_class_table,
)
from core.analysis_io import predictions_path
from core.analysis_issues import rank_label_issues
from core.errors import SlideLensError
from core.models import versions_with_predictions
from ui import analysis_views as av
from ui.context import current_cohort

SOURCES = {"oof": "Out-of-fold", "final": "Final model"}
BASE_COLUMNS = {"image_id", "label", "pred", "ood_score", "confidence", "correct", "scored", "slide_kind", "is_tma",
                "image_width", "image_height"}
MAX_THUMBS = 12


def _select_cell() -> None:
    """Plotly selection on the confusion matrix -> the 'true'/'predicted' selectboxes (runs before the script)."""
    state = st.session_state.get("an_cm_chart")
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    for pt in points:
        cd = pt.get("customdata")
        if cd and len(cd) == 2:
            st.session_state["an_true"], st.session_state["an_pred"] = str(cd[0]), str(cd[1])
            return


def _load(cohort, version: str, source: str) -> tuple[pd.DataFrame, list[str]] | None:
    path = predictions_path(cohort.models, cohort.results, version, source)
    if not path.is_file():
        st.info(f"{version} has no {SOURCES[source].lower()} predictions yet ({path}).")
        return None
    return av.joined_predictions(path, cohort.labels, cohort.models / version)


def metric_cards(m: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("Balanced accuracy", f"{m['balanced_accuracy']:.3f}")
    cols[1].metric("Accuracy", f"{m['accuracy']:.3f}")
    cols[2].metric("Macro AUROC", f"{m['macro_auroc']:.3f}")
    cols[3].metric("Log loss", f"{m['log_loss']:.3f}")
    cols[4].metric("Slides scored", m["n"], help=f"{m['n_excluded']} excluded ('Other', outliers, excluded rows)")


def metrics_tab(df: pd.DataFrame, classes: list[str], m: dict) -> None:
    st.subheader("Per class")
    av.table_with_download(per_class_table(m), "per_class", "an_per_class")
    st.subheader("By slide kind")
    av.table_with_download(metrics_by(df, classes, "slide_kind"), "by_slide_kind", "an_by_kind")
    extra = [c for c in df.columns if c not in BASE_COLUMNS and not c.startswith("prob_")
             and 1 < df[c].nunique() <= 50]
    if extra:
        col = st.selectbox("Break down by column", extra, key="an_by")
        av.table_with_download(metrics_by(df, classes, col), f"by_{col}", "an_by_col")


def confusion_tab(df: pd.DataFrame, classes: list[str], version: str, cohort) -> None:
    mode = st.radio("Show", ["counts", "row-normalised"], horizontal=True, key="an_cm_mode")
    normalized = mode == "row-normalised"
    cm = confusion(df, classes, normalize=normalized)
    if st.session_state.get("an_true") not in classes or st.session_state.get("an_pred") not in classes:
        # start on the error that costs the most
        impact = error_impact(df, classes)
        first = (impact.loc[0, "true"], impact.loc[0, "pred"]) if len(impact) else (classes[0], classes[0])
        st.session_state["an_true"], st.session_state["an_pred"] = first
    selected = (st.session_state["an_true"], st.session_state["an_pred"])
    fig = av.confusion_figure(cm, normalized, selected if selected[0] in classes and selected[1] in classes else None)
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.plotly_chart(fig, key="an_cm_chart", on_select=_select_cell, selection_mode="points")
        st.caption("Export the figure")
        av.figure_downloads(av.confusion_figure(cm, normalized, interactive=False), f"confusion_{version}",
                            "an_cm_export")
        with st.expander("Confusion table"):
            av.table_with_download(cm.reset_index(), "confusion", "an_cm")
    with right:
        st.caption("Click a cell, or pick it here:")
        c1, c2 = st.columns(2)
        true = c1.selectbox("true", classes, key="an_true")
        pred = c2.selectbox("predicted", classes, key="an_pred")
        cell_list(cell_slides(df, true, pred), version, cohort, f"{true} predicted as {pred}")


def cell_list(sel: pd.DataFrame, version: str, cohort, title: str) -> None:
    st.markdown(f"**{len(sel)} slide(s): {title}**")
    if sel.empty:
        return
    shown = sel[["image_id", "label", "pred", "confidence", "slide_kind"]].assign(
        viewer=[av.viewer_link(i, version) for i in sel["image_id"]])
    av.table_with_download(shown, "cell_slides", "an_cell", column_config={
        "viewer": st.column_config.LinkColumn("viewer", display_text="open in viewer"),
        "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.2f")})
    paths = cohort.slide_paths
    cols = st.columns(3)
    for i, row in enumerate(sel.head(MAX_THUMBS).itertuples()):
        with cols[i % 3]:
            img = av.thumbnail_jpeg(paths.get(row.image_id), cache_dir=cohort.cache_dir)
            if img:
                st.image(img, width=140)
            else:
                st.caption("no thumbnail")
            # ids come from file names and labels files: escape them, this is the one HTML snippet of the page
            link, name = html.escape(av.viewer_link(row.image_id, version)), html.escape(str(row.image_id))
            st.markdown(f'<a href="{link}" target="_self" class="an-viewer-link">{name}</a> · {row.confidence:.2f}',
                        unsafe_allow_html=True)
    if len(sel) > MAX_THUMBS:
        st.caption(f"thumbnails for the first {MAX_THUMBS}; all {len(sel)} are in the table")


def impact_tab(df: pd.DataFrame, classes: list[str]) -> None:
    impact = error_impact(df, classes)
    if impact.empty:
        st.success("No errors: nothing to fix.")
        return
    st.plotly_chart(av.impact_figure(impact), key="an_impact_chart")
    av.table_with_download(impact, "impact", "an_impact")


def calibration_tab(df: pd.DataFrame, classes: list[str]) -> None:
    sc = df[df["scored"]]
    table, ece = calibration(df, classes)
    st.metric("Expected calibration error", f"{ece:.3f}")
    c1, c2 = st.columns(2)
    c1.plotly_chart(av.reliability_figure(table, ece), key="an_reliability")
    c2.plotly_chart(av.confidence_histogram(sc), key="an_conf_hist")
    t = st.slider("Confidence threshold", 0.0, 1.0, 0.0, 0.01, key="an_threshold")
    curve = coverage_curve(df, classes)
    at = coverage_curve(df, classes, [t]).iloc[0]
    k1, k2, k3 = st.columns(3)
    k1.metric("Coverage", f"{at['coverage']:.1%}", help=f"{int(at['n_kept'])} slides at or above the threshold")
    k2.metric("Balanced accuracy (kept)", "n/a" if pd.isna(at["balanced_accuracy"]) else f"{at['balanced_accuracy']:.3f}")
    k3.metric("Accuracy (kept)", "n/a" if pd.isna(at["accuracy"]) else f"{at['accuracy']:.3f}")
    st.plotly_chart(av.coverage_figure(curve, t), key="an_coverage_chart")
    with st.expander("Tables"):
        av.table_with_download(table, "calibration", "an_calib")
        av.table_with_download(curve, "coverage", "an_coverage")


def issues_tab(df: pd.DataFrame, classes: list[str], version: str, source: str) -> None:
    if source != "oof":
        st.warning("These are the final model's predictions, made on slides it was trained on: "
                   "out-of-fold predictions rank label issues far better.")
    issues = rank_label_issues(df, classes)
    top = st.number_input("Show top", 5, max(5, len(issues)), min(25, max(5, len(issues))), key="an_issues_top")
    shown = issues.head(int(top)).assign(viewer=[av.viewer_link(i, version) for i in issues["image_id"].head(int(top))])
    av.table_with_download(shown, "label_issues", "an_issues", column_config={
        "viewer": st.column_config.LinkColumn("viewer", display_text="open in viewer")})


def compare_tab(df: pd.DataFrame, classes: list[str], version: str, versions: list[str], source: str, cohort) -> None:
    others = [v for v in versions if v != version]
    if not others:
        st.info("Only one model version so far: train another to compare.")
        return
    other = st.selectbox("Compare with", others, index=len(others) - 1, key="an_compare")
    loaded = _load(cohort, other, source)
    if loaded is None:
        return
    metrics, changed = compare_versions(loaded[0], df, classes, names=(other, version))
    av.table_with_download(metrics, f"compare_{other}_{version}", "an_cmp_metrics")
    fixed, broken = int((changed["status"] == "fixed").sum()), int((changed["status"] == "broken").sum())
    st.markdown(f"**{len(changed)} slide(s) changed prediction**: {fixed} fixed, {broken} broken")
    av.table_with_download(changed.assign(viewer=[av.viewer_link(i, version) for i in changed["image_id"]]),
                           "changed_slides", "an_cmp_changed",
                           column_config={"viewer": st.column_config.LinkColumn("viewer", display_text="open")})


def main() -> None:
    st.title("Error analysis")
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(str(exc))
        return
    if cohort.labels is None or not cohort.labels.is_file():
        st.info("This cohort has no labels file yet: add labels.csv to analyse errors.")
        return
    versions = versions_with_predictions(cohort.models, cohort.results)
    if not versions:
        st.info("No model yet: train one (`python -m core train`) and its out-of-fold predictions appear here.")
        return
    c1, c2 = st.columns([2, 3])
    version = c1.selectbox("Model version", versions, index=len(versions) - 1, key="an_version")
    source = c2.radio("Predictions", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="an_source")
    try:
        loaded = _load(cohort, version, source)
        if loaded is None:
            return
        df, classes = loaded
        m = compute_metrics(df, classes)
        if m["n"] == 0:
            st.info(f"No prediction of {version} matches a labelled slide in {cohort.labels}.")
            return
        metric_cards(m)
        tabs = st.tabs(["Metrics", "Confusion", "Impact", "Calibration", "Label issues", "Compare"])
        with tabs[0]:
            metrics_tab(df, classes, m)
        with tabs[1]:
            confusion_tab(df, classes, version, cohort)
        with tabs[2]:
            impact_tab(df, classes)
        with tabs[3]:
            calibration_tab(df, classes)
        with tabs[4]:
            issues_tab(df, classes, version, source)
        with tabs[5]:
            compare_tab(df, classes, version, versions, source, cohort)
    except SlideLensError as exc:
        st.error(str(exc))


main()
