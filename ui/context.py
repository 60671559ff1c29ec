"""The app's shared, cached resource: the current cohort (slide handles are shared through core.tiles)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.cohort import Cohort, default_cohort_path, load_cohort

COHORT_KEY = "cohort_path"


def cohort_path() -> Path:
    """The cohort chosen in this session, else ``$SLIDELENS_COHORT``, else the demo cohort."""
    chosen = st.session_state.get(COHORT_KEY)
    return Path(chosen) if chosen else default_cohort_path()


@st.cache_resource(show_spinner=False)
def _load_cohort(path: str, mtime: float) -> Cohort:
    return load_cohort(path)


def current_cohort() -> Cohort:
    """The current cohort (cached until its TOML file changes). Raises ``InputError`` if it cannot be read."""
    path = cohort_path()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _load_cohort(str(path), mtime)
