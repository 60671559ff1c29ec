"""The sidebar's cohort chooser: every known cohort one click away, or any cohort file by path."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.cohort import DEFAULT_DEMO_DIR, default_cohort_path
from ui.context import COHORT_KEY, cohort_path

RECENT_KEY = "recent_cohorts"


def known_cohorts() -> list[Path]:
    """The default cohort, cohorts under data/, and those opened in this session (no duplicates, in that order)."""
    found = [default_cohort_path(), DEFAULT_DEMO_DIR / "cohort.toml"]
    data = DEFAULT_DEMO_DIR.parent
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


def cohort_switcher() -> None:
    """Render the chooser in the sidebar; switching sets the session's cohort and reruns."""
    current = cohort_path()
    options = known_cohorts()
    if current.resolve() not in {p.resolve() for p in options}:
        options.insert(0, current)
    index = next(i for i, p in enumerate(options) if p.resolve() == current.resolve())
    with st.sidebar:
        choice = st.selectbox("Cohort", options, index=index, format_func=_label, key="cohort_select")
        if choice is not None and Path(choice).resolve() != current.resolve():
            st.session_state[COHORT_KEY] = str(choice)
            st.rerun()
        with st.expander("Open another cohort"), st.form("open_cohort", border=False):
            typed = st.text_input("cohort.toml path", key="cohort_path_input",
                                  placeholder="/path/to/study/cohort.toml")
            if st.form_submit_button("Open") and typed.strip():
                p = Path(typed.strip()).expanduser()
                p = p / "cohort.toml" if p.is_dir() else p
                if not p.is_file():
                    st.error(f"{p}: cohort file not found")
                else:
                    st.session_state[COHORT_KEY] = str(p)
                    st.session_state.setdefault(RECENT_KEY, []).append(str(p))
                    st.rerun()
