"""The relabel panel (shown on the review page and beside the viewer) and the shared review-database helpers.

Every action is a widget callback: it writes one audited edit based on the version the panel showed, keeps a
one-line message for the next run, and (on the review page) moves on to the next slide in the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cohort import Cohort
from core.errors import SlideLensError
from core.review import ensure_synced
from core.store import OTHER, Store, SyncReport, open_store

REVIEWER_KEY = "reviewer"
_KEEP = "_reviewer_name"
FLASH = "_review_flash"


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store:
    return open_store(url)


@st.cache_resource(show_spinner=False, max_entries=8)
def _synced(url: str, labels_stamp: float, n_slides: int, _cohort: Cohort) -> SyncReport:
    return ensure_synced(_cohort, _store(url))


def cohort_store(cohort: Cohort) -> Store:
    """The cohort's review database (one engine per URL), with slides and labels imported. Raises SlideLensError."""
    stamp = cohort.labels.stat().st_mtime if cohort.labels is not None and cohort.labels.is_file() else 0.0
    _synced(cohort.database, stamp, len(cohort.slide_paths), cohort)
    return _store(cohort.database)


def reviewer_input(where: Any = st) -> str:
    """The 'Your name' box (key 'reviewer'); the name is kept for the whole session, across pages."""
    if REVIEWER_KEY not in st.session_state and st.session_state.get(_KEEP):
        st.session_state[REVIEWER_KEY] = st.session_state[_KEEP]
    name = where.text_input("Your name (required to edit)", key=REVIEWER_KEY, placeholder="e.g. J. Smith",
                            help="Every change is saved with your name, the time and the reason.")
    st.session_state[_KEEP] = (name or "").strip()
    return (name or "").strip()


def current_reviewer() -> str:
    """The reviewer name of this session ('' when none was entered)."""
    return str(st.session_state.get(REVIEWER_KEY) or st.session_state.get(_KEEP) or "").strip()


def _flash(kind: str, msg: str) -> None:
    st.session_state[FLASH] = (kind, msg)


def show_flash() -> None:
    """Show (once) the message left by the last action."""
    kind, msg = st.session_state.pop(FLASH, (None, None))
    if kind == "error":
        st.error(msg)
    elif kind == "ok":
        st.success(msg)


def _act(store: Store, image_id: str, version: int, changes: dict[str, Any], reason: str,
         model_version: str | None, done: Callable[[], None] | None) -> None:
    try:
        st_ = store.edit(image_id, changes, current_reviewer(), reason, version, model_version)
    except SlideLensError as exc:
        _flash("error", str(exc))
        return
    what = ", ".join(f"{k} = {v!r}" for k, v in changes.items())
    _flash("ok", f"{image_id}: saved {what} (version {st_.version})")
    if done is not None:
        done()


def _label_submit(store: Store, image_id: str, version: int, p: str, mv: str | None,
                  done: Callable[[], None] | None) -> None:
    reason = st.session_state.get(f"{p}_reason", "") or "relabel"
    _act(store, image_id, version, {"label": st.session_state[f"{p}_new_label"]}, reason, mv, done)


def _note_submit(store: Store, image_id: str, version: int, p: str, mv: str | None) -> None:
    _act(store, image_id, version, {"note": st.session_state.get(f"{p}_note", "")}, "note", mv, None)


def probs_figure(probs: dict[str, float]) -> go.Figure:
    """A small horizontal bar chart of class probabilities."""
    fig = go.Figure(go.Bar(x=list(probs.values()), y=list(probs.keys()), orientation="h",
                           text=[f"{v:.2f}" for v in probs.values()], textposition="auto",
                           marker_color="#8e2d6b"))
    fig.update_layout(height=40 + 28 * len(probs), margin=dict(l=0, r=0, t=4, b=0), xaxis=dict(range=[0, 1]))
    return fig


def history_table(store: Store, image_id: str) -> pd.DataFrame:
    """The slide's audit trail, newest first, as plain text columns."""
    rows = store.history(image_id)
    df = pd.DataFrame([{"#": r.id, "when (UTC)": r.at[:19].replace("T", " "), "reviewer": r.reviewer,
                        "field": r.field, "old": r.old_value, "new": r.new_value, "reason": r.reason,
                        "model": r.model_version} for r in rows])
    return df.iloc[::-1].reset_index(drop=True) if len(df) else df


def relabel_panel(cohort: Cohort, image_id: str, *, model_version: str | None = None, prediction: dict | None = None,
                  reasons: str = "", on_done: Callable[[], None] | None = None, key: str = "rp",
                  thumbnail: bool = True, shortcuts: bool = False, ask_name: bool = True) -> None:
    """Review one slide: label, prediction, reasons, actions (accept, change, outlier, exclude, second opinion,
    note, skip) and its audit history. ``on_done`` runs after each successful action (e.g. go to the next slide);
    ``shortcuts`` adds Alt+A/O/X/S/N keys to the action buttons; ``ask_name`` shows the reviewer-name box
    (leave it on beside the viewer; the review page shows its own)."""
    try:
        store = cohort_store(cohort)
        state = store.state(image_id)
        classes = list(store.classes())
    except SlideLensError as exc:
        st.error(str(exc))
        return
    if ask_name:
        reviewer_input()
    reviewer = current_reviewer()
    p = f"{key}_{image_id}_{state.version}"  # fresh widgets whenever the slide's version changes
    v, mv = state.version, model_version
    st.markdown(f"#### {image_id}")
    if thumbnail:
        from ui.analysis_views import thumbnail_jpeg

        img = thumbnail_jpeg(cohort.slide_paths.get(image_id), 240, cohort.cache_dir)
        if img is not None:
            st.image(img, width=240)
    st.link_button("Open in viewer", f"/viewer?slide={quote(image_id)}" + (f"&model={quote(mv)}" if mv else ""))
    original = store.source_labels().get(image_id)
    c1, c2 = st.columns(2)
    c1.metric("Label", state.label or "none", help=f"imported as {original!r}" if original else None)
    flags = [n for n, on in (("outlier", state.outlier), ("excluded", state.exclude),
                             ("second opinion", state.second_opinion)) if on]
    c2.metric("Flags", ", ".join(flags) or "none")
    if original and original != state.label:
        st.caption(f"Imported label: {original}")
    if prediction:
        probs = {k[5:]: float(v) for k, v in prediction.items() if str(k).startswith("prob_") and pd.notna(v)}
        st.text(f"Model {mv or ''} predicts: {prediction.get('pred')}")
        if probs:
            st.plotly_chart(probs_figure(probs), key=f"{p}_probs", config={"displayModeBar": False})
    if reasons:
        st.text("Why it is in the queue: " + reasons)
    if state.note:
        st.text("Note: " + state.note)  # plain text, never markdown or HTML
    if not reviewer:
        st.warning("Enter your name above to make changes.")
    show_flash()

    options = classes + [OTHER] if classes else [OTHER]
    default = state.label if state.label in options else options[0]
    with st.form(f"{p}_label_form", enter_to_submit=True, border=False):
        fc1, fc2 = st.columns([1, 2])
        fc1.selectbox("Label", options, index=options.index(default), key=f"{p}_new_label")
        fc2.text_input("Reason", key=f"{p}_reason", placeholder="why (Enter saves)")
        st.form_submit_button("Save label", type="primary", on_click=_label_submit,
                              args=(store, image_id, v, p, mv, on_done))
    keys = dict(zip("aoxsn", ("Alt+A", "Alt+O", "Alt+X", "Alt+S", "Alt+N"), strict=True)) if shortcuts else {}
    b = st.columns(3) + st.columns(3)  # two rows, always in this order
    b[0].button("Accept label", key=f"{p}_accept", on_click=_act, shortcut=keys.get("a"), disabled=not state.label,
                args=(store, image_id, v, {"label": state.label}, "accepted", mv, on_done))
    b[1].button("Unflag outlier" if state.outlier else "Flag outlier", key=f"{p}_outlier", on_click=_act,
                shortcut=keys.get("o"),
                args=(store, image_id, v, {"outlier": not state.outlier}, "outlier", mv, on_done))
    b[2].button("Include" if state.exclude else "Exclude", key=f"{p}_exclude", on_click=_act,
                shortcut=keys.get("x"),
                args=(store, image_id, v, {"exclude": not state.exclude}, "exclude", mv, on_done))
    b[3].button("Clear 2nd opinion" if state.second_opinion else "Second opinion", key=f"{p}_second",
                shortcut=keys.get("s"), on_click=_act, args=(store, image_id, v, {"second_opinion": not state.second_opinion},
                                     "second opinion", mv, on_done))
    if on_done is not None:
        b[4].button("Skip", key=f"{p}_skip", on_click=on_done, shortcut=keys.get("n"))
    with st.form(f"{p}_note_form", border=False):
        st.text_area("Note (plain text)", value=state.note, key=f"{p}_note", height=80)
        st.form_submit_button("Save note", on_click=_note_submit, args=(store, image_id, v, p, mv))
    st.markdown("**History**")
    hist = history_table(store, image_id)
    if hist.empty:
        st.caption("No changes yet.")
    else:
        st.table(hist.fillna("").set_index("#"))  # static, escaped text (also readable in the page's DOM)
