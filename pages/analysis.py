"""Error analysis: where the model fails, which errors cost the most score, calibration and likely label errors.

Every number is scored against the reviewed labels (the review database's current state, as on every page), on
out-of-fold predictions unless the final model is chosen (clearly marked as optimistic). The view lives in the URL,
so Back from the viewer and shared links restore it:
``/analysis?model=<version>&tab=<tab>&cell=<true>,<predicted>[&preds=final]``.
"""

from __future__ import annotations

import html
from functools import partial

import pandas as pd
import streamlit as st

from core.analysis.files import SOURCE_NAMES, n_errors, predictions_path, reviewed_join, score_caption
from core.analysis.label_issues import rank_label_issues
from core.analysis.metrics import (
    calibration,
    cell_slides,
    compare_versions,
    compute_metrics,
    confusion,
    coverage_curve,
    error_impact,
    format_cell,
    metrics_by,
    parse_cell,
    per_class_table,
)
from core.errors import SlideLensError
from core.model.versions import default_version, version_label, versions_with_predictions
from core.review.slide_table import reviewed_labels
from ui import analysis_views as av
from ui.context import current_cohort
from ui.deck_views import add_to_deck
from ui.review_panel import cohort_store
from ui.safe import md

SOURCES = {"oof": "Out-of-fold", "final": "Final model (trained on these slides - optimistic)"}
TABS = ["Metrics", "Confusion", "Impact", "Calibration", "Label issues", "Compare", "Annotations"]
BASE_COLUMNS = {"image_id", "label", "given_label", "pred", "ood_score", "confidence", "correct", "scored",
                "slide_kind", "is_tma", "is_outlier", "exclude", "reviewed", "image_width", "image_height"}
MAX_THUMBS = 12
KEEP = "page"  # widgets inside a tab keep their value while another tab is open


# --- the view in the URL ----------------------------------------------------------------------------------
def _url_from(param: str, key: str) -> None:
    """on_change: the widget's new value goes to the URL before the script reads it."""
    st.query_params[param] = st.session_state[key]


def _cell_to_url() -> None:
    st.query_params["cell"] = format_cell(st.session_state["an_true"], st.session_state["an_pred"])


def _select_cell() -> None:
    """Plotly selection on the confusion matrix -> the 'true'/'predicted' selectboxes and the URL."""
    state = st.session_state.get("an_cm_chart")
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    for pt in points:
        cd = pt.get("customdata")
        if cd and len(cd) == 2:
            st.session_state["an_true"], st.session_state["an_pred"] = str(cd[0]), str(cd[1])
            _cell_to_url()
            return


def choose_version(where, versions: list[str], default: str, label=str) -> str | None:
    """The version from ``?model=`` (Back, shared links) or the selectbox; an unknown one is said, never replaced.
    ``label`` names an option (``core.model.versions.version_label`` marks an unhealthy model)."""
    wanted = st.query_params.get("model")
    if wanted is not None and wanted not in versions:
        st.error(md(f"no model version '{wanted}' in this cohort; its versions: {', '.join(versions)}"))
        st.selectbox("Open one of them", versions, index=None, placeholder="choose a version", key="an_pick",
                     on_change=_url_from, args=("model", "an_pick"))
        return None
    if wanted is not None:
        st.session_state["an_version"] = wanted
    elif st.session_state.get("an_version") not in versions:
        st.session_state["an_version"] = default
    version = where.selectbox("Model version", versions, key="an_version", on_change=_url_from,
                              args=("model", "an_version"), format_func=label)
    st.query_params["model"] = version
    return version


def choose_source(where) -> str:
    """Out-of-fold (default) or the final model, from ``?preds=`` or the radio."""
    wanted = st.query_params.get("preds")
    if wanted is not None and wanted not in SOURCES:
        st.warning(md(f"no predictions '{wanted}' (use oof or final): showing out-of-fold"))
        wanted = "oof"
    st.session_state["an_source"] = wanted or st.session_state.get("an_source", "oof")
    source = where.radio("Predictions", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="an_source",
                         on_change=_url_from, args=("preds", "an_source"))
    if source == "oof":
        st.query_params.pop("preds", None)
    else:
        st.query_params["preds"] = source
    return source


# --- the tabs ----------------------------------------------------------------------------------------------
def metric_cards(m: dict, errors: int, source: str) -> None:
    cols = st.columns(6)
    cols[0].metric("Balanced accuracy", f"{m['balanced_accuracy']:.3f}")
    cols[1].metric("Accuracy", f"{m['accuracy']:.3f}")
    cols[2].metric("Macro AUROC", f"{m['macro_auroc']:.3f}")
    cols[3].metric("Log loss", f"{m['log_loss']:.3f}")
    cols[4].metric("Slides scored", m["n"],
                   help=f"{m['n_excluded']} not scored (unlabelled, 'Other', flagged outlier or excluded)")
    cols[5].metric("Errors", errors, help="Scored slides whose prediction differs from the reviewed label")
    st.caption(md(score_caption(source, m["n"])))
    if source == "final":
        st.warning("Final model's predictions, made on the slides it was trained on: optimistic. "
                   "Judge errors on the out-of-fold predictions.")


def metrics_tab(df: pd.DataFrame, classes: list[str], m: dict) -> None:
    st.subheader("Per class")
    av.table_with_download(per_class_table(m), "per_class", "an_per_class")
    st.subheader("By slide kind")
    av.table_with_download(metrics_by(df, classes, "slide_kind"), "by_slide_kind", "an_by_kind")
    extra = [c for c in df.columns if c not in BASE_COLUMNS and not c.startswith("prob_")
             and 1 < df[c].nunique() <= 50]
    if extra:
        col = st.selectbox("Break down by column", extra, key="an_by", persist_state=KEEP,
                           help="columns of the labels file")
        av.table_with_download(metrics_by(df, classes, col), f"by_{col}", "an_by_col")


def _current_cell(df: pd.DataFrame, classes: list[str]) -> None:
    """``?cell=`` into the two selectboxes; without one (or a cell of other classes), the costliest error."""
    raw = st.query_params.get("cell")
    cell = parse_cell(raw, classes)
    if raw and cell is None:
        st.warning(md(f"no confusion cell '{raw}' for the classes {', '.join(classes)}: showing the costliest error"))
    if cell is None and (st.session_state.get("an_true") in classes and st.session_state.get("an_pred") in classes):
        cell = (st.session_state["an_true"], st.session_state["an_pred"])
    if cell is None:
        impact = error_impact(df, classes)
        cell = (impact.loc[0, "true"], impact.loc[0, "pred"]) if len(impact) else (classes[0], classes[0])
    st.session_state["an_true"], st.session_state["an_pred"] = cell


def confusion_tab(df: pd.DataFrame, classes: list[str], version: str, cohort) -> None:
    mode = st.radio("Show", ["counts", "row-normalised"], horizontal=True, key="an_cm_mode", persist_state=KEEP)
    normalized = mode == "row-normalised"
    cm = confusion(df, classes, normalize=normalized)
    _current_cell(df, classes)
    selected = (st.session_state["an_true"], st.session_state["an_pred"])
    fig = av.confusion_figure(cm, normalized, selected)
    left, right = st.columns([1, 1], gap="large")
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
        true = c1.selectbox("true", classes, key="an_true", on_change=_cell_to_url)
        pred = c2.selectbox("predicted", classes, key="an_pred", on_change=_cell_to_url)
        st.query_params["cell"] = format_cell(true, pred)
        cell_list(cell_slides(df, true, pred), version, cohort, f"{true} predicted as {pred}")


def cell_list(sel: pd.DataFrame, version: str, cohort, title: str) -> None:
    st.markdown(f"**{len(sel)} slide(s): {md(title)}**")
    if sel.empty:
        return
    cols = ["image_id", "label", "pred", "confidence", "slide_kind"]
    if "given_label" in sel.columns and (sel["given_label"].fillna("") != sel["label"]).any():
        cols.insert(2, "given_label")  # some were relabelled: show what the labels file said
    av.table_with_download(av.with_viewer_links(sel[cols], version), "cell_slides", "an_cell", width="stretch",
                           column_config={**av.VIEWER_COLUMN,
                                          "given_label": st.column_config.TextColumn("labels file"),
                                          "confidence": st.column_config.NumberColumn("confidence", format="%.2f",
                                                                                      width="small"),
                                          "slide_kind": st.column_config.TextColumn("kind", width="small")})
    add_to_deck(cohort, list(sel["image_id"]), key="an_cell_deck", label=f"Add these {len(sel)} to a deck",
                model_version=version)
    paths = cohort.slide_paths
    grid = st.columns(3)
    for i, row in enumerate(sel.head(MAX_THUMBS).itertuples()):
        with grid[i % 3]:
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
    t = st.slider("Confidence threshold", 0.0, 1.0, 0.0, 0.01, key="an_threshold", persist_state=KEEP)
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
    issues = rank_label_issues(df, classes).rename(columns={"given_label": "label"})  # the reviewed label
    top = st.number_input("Show top", 5, max(5, len(issues)), min(25, max(5, len(issues))), key="an_issues_top",
                          persist_state=KEEP)
    av.table_with_download(av.with_viewer_links(issues.head(int(top)), version), "label_issues", "an_issues",
                           column_config=av.VIEWER_COLUMN)


def compare_tab(df: pd.DataFrame, classes: list[str], version: str, versions: list[str], source: str,
                cohort, labels: pd.DataFrame) -> None:
    others = [v for v in versions if v != version]
    if not others:
        st.info("Only one model version so far: train another to compare.")
        return
    other = st.selectbox("Compare with", others, index=len(others) - 1, key="an_compare", persist_state=KEEP)
    path = predictions_path(cohort.models, cohort.results, other, source)
    if not path.is_file():
        st.info(md(f"{other} has no {SOURCE_NAMES[source]} predictions ({path})."))
        return
    other_df = reviewed_join(av.predictions(path), labels, classes)
    metrics, changed = compare_versions(other_df, df, classes, names=(other, version))
    st.caption(md(f"Both versions {SOURCE_NAMES[source]}, against the reviewed labels: fixed and broken follow the "
                  "corrections."))
    av.table_with_download(metrics, f"compare_{other}_{version}", "an_cmp_metrics")
    fixed, broken = int((changed["status"] == "fixed").sum()), int((changed["status"] == "broken").sum())
    st.markdown(f"**{len(changed)} slide(s) changed prediction**: {fixed} fixed, {broken} broken")
    av.table_with_download(av.with_viewer_links(changed, version), "changed_slides", "an_cmp_changed",
                           column_config=av.VIEWER_COLUMN)


# --- the page ----------------------------------------------------------------------------------------------
def _check_tab() -> None:
    wanted = st.query_params.get("tab")
    if wanted is not None and wanted not in TABS:
        st.warning(md(f"no tab '{wanted}' (tabs: {', '.join(TABS)}): showing {TABS[0]}"))


def main() -> None:
    st.title("Error analysis")
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(md(exc))
        return
    if cohort.labels is None or not cohort.labels.is_file():
        st.info("This cohort has no labels file yet: add labels.csv to analyse errors.")
        return
    versions = versions_with_predictions(cohort.models, cohort.results)
    if not versions:
        st.info("No model yet: train one (`python -m core train`) and its out-of-fold predictions appear here.")
        return
    c1, c2 = st.columns([2, 3])
    version = choose_version(c1, versions, default_version(cohort.models, cohort.results, among=versions),
                             label=partial(version_label, cohort.models))
    if version is None:
        return
    source = choose_source(c2)
    try:
        path = predictions_path(cohort.models, cohort.results, version, source)
        if not path.is_file():
            st.info(md(f"{version} has no {SOURCE_NAMES[source]} predictions yet ({path})."))
            return
        preds = av.predictions(path)
        classes = av.classes_for(preds, cohort.models / version)
        labels = reviewed_labels(cohort_store(cohort), av.given_labels(cohort.labels))
        df = reviewed_join(preds, labels, classes)
        m = compute_metrics(df, classes)
        if m["n"] == 0:
            st.info(md(f"No prediction of {version} matches a labelled, unflagged slide of this cohort."))
            return
        metric_cards(m, n_errors(df), source)
        _check_tab()
        tabs = st.tabs(TABS, key="tab", bind="query-params")
        show = {
            "Metrics": lambda: metrics_tab(df, classes, m),
            "Confusion": lambda: confusion_tab(df, classes, version, cohort),
            "Impact": lambda: impact_tab(df, classes),
            "Calibration": lambda: calibration_tab(df, classes),
            "Label issues": lambda: issues_tab(df, classes, version, source),
            "Compare": lambda: compare_tab(df, classes, version, versions, source, cohort, labels),
            "Annotations": lambda: av.annotations_tab(cohort, cohort_store(cohort), version),
        }
        for name, tab in zip(TABS, tabs, strict=True):
            if tab.open:  # only the open tab is computed; switching tabs reruns the page
                with tab:
                    show[name]()
    except SlideLensError as exc:
        st.error(md(exc))


main()
