"""Home: what the cohort is, what needs attention, and the way into each page."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.analysis.files import score_caption
from core.errors import SlideLensError
from core.review.summary import cohort_summary
from ui.assignments_view import team_summary
from ui.context import current_cohort
from ui.review_panel import cohort_store
from ui.safe import md


def _summary(cohort):
    """The figures, read fresh on every run: a relabel on another page shows here at once (no stale cache)."""
    try:
        store = cohort_store(cohort)  # one engine per database for the whole app
    except SlideLensError:
        store = None  # cohort_summary opens it again and reports the problem in one line
    return cohort_summary(cohort, store)


def _store_or_none(cohort):
    try:
        return cohort_store(cohort)
    except SlideLensError:
        return None


def _fmt(v) -> str:
    return "–" if v is None else f"{v}"


def _score(v) -> str:
    """Balanced accuracy as the analysis page writes it (three decimals), so the two read the same."""
    return "–" if v is None else f"{v:.3f}"


def main() -> None:
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(str(exc))
        return
    s = _summary(cohort)
    st.title(f"SlideLens · {md(s.name)}")
    st.caption(f"Cohort file: {md(cohort.source)}")
    for p in s.problems:
        st.warning(md(p))

    st.subheader("The cohort")
    c = st.columns(5)
    c[0].metric("Slides", s.n_slides)
    c[1].metric("Labelled", s.n_labelled)
    c[2].metric("Whole slides", _fmt(s.n_wsi))
    c[3].metric("TMA cores", _fmt(s.n_tma))
    c[4].metric("Classes", len(s.classes))
    if s.class_counts:
        fig = px.bar(x=list(s.class_counts), y=list(s.class_counts.values()), labels={"x": "label", "y": "slides"},
                     height=220)
        fig.update_layout(margin=dict(l=0, r=0, t=10, b=0))
        st.plotly_chart(fig, key="home_classes")

    st.subheader("The model")
    c = st.columns(3)
    c[0].metric("Model version", s.version or "none yet")
    c[1].metric("Architecture", s.model or "–")
    c[2].metric("Balanced accuracy", _score(s.balanced_accuracy),
                help="Each slide predicted by a model that did not train on it, scored against the labels as "
                     "reviewed now (the analysis page shows the same number for this version).")
    if s.n_scored is not None:
        c[2].caption(md(score_caption("oof", s.n_scored)))
    if len(s.versions) > 1:
        st.caption(md(f"{len(s.versions)} versions with predictions: {', '.join(s.versions)}") +
                   " — compare them on the Error analysis page.")

    st.subheader("Needs attention")
    c = st.columns(4)
    c[0].metric("Review queue", _fmt(s.queue_size))
    c[1].metric("Likely outliers ('Other?')", _fmt(s.likely_outliers))
    c[2].metric("Errors (out-of-fold)", _fmt(s.disagreements),
                help="Slides whose reviewed label differs from the out-of-fold prediction (as the analysis page "
                     "and the viewer's 'Incorrect' filter count them).")
    c[3].metric("Slides reviewed", _fmt(s.reviewed))

    team_summary(_store_or_none(cohort))  # sign-in mode: per-reviewer progress and agreement (kappa)

    st.subheader("Go to")
    c = st.columns(3)
    with c[0]:
        st.page_link("pages/viewer.py", label="Viewer", icon=":material/biotech:")
        st.caption("Deep-zoom slides with the attention overlay and the top patches.")
    with c[1]:
        st.page_link("pages/analysis.py", label="Error analysis", icon=":material/analytics:")
        st.caption("Confusion matrix, per-class metrics, costly errors, calibration, label issues.")
    with c[2]:
        st.page_link("pages/review.py", label="Review queue", icon=":material/rule:")
        st.caption("Relabel, flag outliers, audit trail, export and retrain.")


main()
