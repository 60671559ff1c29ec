"""The sidebar's cohort chooser: every known cohort one click away, or any cohort file by path."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.cohort.cohort_file import checked_cohort_file, default_cohort_path, demo_dir
from core.errors import SlideLensError
from ui.context import COHORT_KEY, cohort_path
from ui.safe import md

RECENT_KEY = "recent_cohorts"


def known_cohorts() -> list[Path]:
    """The default cohort, cohorts under data/, and those opened in this session (no duplicates, in that order)."""
    found = [default_cohort_path(), demo_dir() / "cohort.toml"]
    data = demo_dir().parent
    if data.is_dir():
        found += sorted(data.glob("*/cohort.toml"))
    found += [Path(p) for p in st.session_state.get(RECENT_KEY, [])]
    out: list[Path] = []
    for p in found:
        if p.resolve() not in {q.resolve() for q in out} and (p.is_file() or p == default_cohort_path()):
            out.append(p)
    return out


def _label(p: Path) -> str:
    return f"{p.parent.name}  ({p})"


def _switch() -> None:
    # a callback runs before the next script run, so the whole app already sees the new cohort
    choice = st.session_state.get("cohort_select")
    if choice is not None:
        st.session_state[COHORT_KEY] = str(choice)
        for key in [k for k in st.session_state if str(k).startswith(("viewer_", "an_", "rv_"))]:
            del st.session_state[key]  # page state (chosen slide, filters) belongs to the old cohort


def cohort_switcher() -> None:
    """Render the chooser in the sidebar; switching sets the session's cohort and reruns."""
    current = cohort_path()
    options = known_cohorts()
    if current.resolve() not in {p.resolve() for p in options}:
        options.insert(0, current)
    index = next(i for i, p in enumerate(options) if p.resolve() == current.resolve())
    with st.sidebar:
        st.selectbox("Cohort", options, index=index, format_func=_label, key="cohort_select",
                     on_change=_switch, help="Each cohort has its own slides, models and review database.")
        with st.expander("Open another cohort"), st.form("open_cohort", border=False):
            typed = st.text_input("cohort.toml path", key="cohort_path_input",
                                  placeholder="/path/to/study/cohort.toml")
            if st.form_submit_button("Open") and typed.strip():
                try:
                    p = checked_cohort_file(typed)
                except SlideLensError as exc:  # the current cohort stays open
                    st.error(md(exc))
                else:
                    st.session_state[COHORT_KEY] = str(p)
                    st.session_state.setdefault(RECENT_KEY, []).append(str(p))
                    st.rerun()
