"""Home: what the cohort is, what needs attention, and the way into each page."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.errors import SlideLensError
from core.summary import cohort_summary
from ui.context import current_cohort


@st.cache_data(ttl=10, show_spinner=False)
def _summary(cohort_key: str, _cohort):
    return cohort_summary(_cohort)


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:.1%}" if pct else f"{v}"


def main() -> None:
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(str(exc))
        return
    s = _summary(f"{cohort.source}|{cohort.database}", cohort)
    st.title(f"SlideLens · {s.name}")
    st.caption(f"Cohort file: {cohort.source}")
    for p in s.problems:
        st.warning(p)

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
    c[2].metric("Balanced accuracy (out-of-fold)", _fmt(s.balanced_accuracy, pct=True),
                help="Out-of-fold predictions scored against the current, reviewed labels.")
    if len(s.versions) > 1:
        st.caption(f"{len(s.versions)} versions: {', '.join(s.versions)} — compare them on the Analysis page.")

    st.subheader("Needs attention")
    c = st.columns(4)
    c[0].metric("Review queue", _fmt(s.queue_size))
    c[1].metric("Likely outliers ('Other?')", _fmt(s.likely_outliers))
    c[2].metric("Label ≠ model", _fmt(s.disagreements),
                help="Slides whose current label differs from the model's prediction.")
    c[3].metric("Slides reviewed", _fmt(s.reviewed))

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
