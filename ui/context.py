"""The app's shared, cached resource: the current cohort (slide handles are shared through core.viewer.tiles)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.cohort.cohort_file import Cohort, default_cohort_path, load_cohort

COHORT_KEY = "cohort_path"


def cohort_path() -> Path:
    """The cohort chosen in this session, else ``$SLIDELENS_COHORT``, else the demo cohort."""
    chosen = st.session_state.get(COHORT_KEY)
    return Path(chosen) if chosen else default_cohort_path()


@st.cache_resource(show_spinner=False, max_entries=4)
def _parse_cohort(path: str, mtime: float) -> Cohort:
    return load_cohort(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_cohort(path: str, mtime: float, stamp: tuple[float, ...] = ()) -> Cohort:
    return load_cohort(path)


def current_cohort() -> Cohort:
    """The current cohort (cached until its TOML file, its labels file or one of its slide folders changes: slides
    added while the app runs, e.g. by the demo's background build, show on the next rerun). Raises ``InputError`` if
    it cannot be read."""
    path = cohort_path()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    return _load_cohort(str(path), mtime, _stamp(_parse_cohort(str(path), mtime)))


def _stamp(cohort: Cohort) -> tuple[float, ...]:
    """Modification times of the cohort's slide folders and labels file (a few stats; adding or removing a slide
    in a folder changes the folder's mtime)."""
    out = []
    for p in (*cohort.slide_sources, cohort.labels):
        try:
            out.append(p.stat().st_mtime if p is not None else 0.0)
        except OSError:
            out.append(0.0)
    return tuple(out)
