"""The relabel panel (shown on the review page and beside the viewer) and the shared review-database helpers.

Every action is a submit button of one form (label, reason, note), so whatever is typed travels with it: the reason
is saved with the action, unsaved text is kept for the slide (also across slides), never dropped. An action writes
one audited edit based on the version the panel showed; an unchanged value is not saved ("nothing changed"). Each
saved edit can be undone (a new audit row puts the old values back). All user text is shown as text (``ui.safe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cohort.cohort_file import Cohort
from core.errors import SlideLensError
from core.review.auth import cohort_admins
from core.review.queue import ensure_synced
from core.review.slide_table import FINAL, OOF
from core.review.store import OTHER, ConflictError, SlideState, Store, SyncReport, open_store
from ui.auth import signed_in_identity
from ui.safe import md

REVIEWER_KEY = "reviewer"
_KEEP = "_reviewer_name"
_CLEARED = "_reviewer_cleared"
_MEMORY = "_reviewer_memory"
_ROLES = "_auth_roles"  # database URL -> the signed-in user's role when this session first used it
FLASH = "_review_flash"
LAST = "_review_last"  # the session's last saved edit: what the Undo button reverts
DRAFTS = "_review_drafts"  # image_id -> {"reason", "note", "note_base"}: typed text kept across slides and actions
_FRONTEND = Path(__file__).parent / "frontend" / "review"


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
    store = _store(cohort.database)
    ident = signed_in_identity()
    if ident is None:
        return store  # local mode: a typed reviewer name
    roles = st.session_state.setdefault(_ROLES, {})
    if cohort.database not in roles:  # the first visit of this session: record the user, read their role
        roles[cohort.database] = store.sign_in(ident, cohort_admins(cohort.source))
    return store.as_user(ident)


def current_role(cohort: Cohort) -> str | None:
    """The signed-in user's role in this cohort's database (None in local mode)."""
    if signed_in_identity() is None:
        return None
    return cohort_store(cohort).role_of(signed_in_identity())  # type: ignore[arg-type]


# -- the reviewer's name ------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _memory_component() -> Any:
    return st.components.v2.component("slidelens.reviewer_memory",
                                      js=(_FRONTEND / "reviewer_memory.js").read_text())


def _name_typed() -> None:
    st.session_state[_CLEARED] = not str(st.session_state.get(REVIEWER_KEY) or "").strip()


def _name_remembered() -> None:
    """The browser sent the name it kept: fill the box if the reviewer has not typed one in this session."""
    mem = st.session_state.get(_MEMORY)
    stored = str((mem.get("stored") if hasattr(mem, "get") else getattr(mem, "stored", "")) or "").strip()[:255]
    if stored and not str(st.session_state.get(REVIEWER_KEY) or "").strip() and not st.session_state.get(_CLEARED):
        st.session_state[REVIEWER_KEY] = st.session_state[_KEEP] = stored


def reviewer_input(where: Any = st) -> str:
    """The 'Your name' box (key 'reviewer'): kept for the session across pages and in this browser's local storage,
    so a reload or a new tab starts with it (a reviewer who clears the box is forgotten there too). With sign-in on,
    the signed-in identity instead (never a typed name)."""
    ident = signed_in_identity()
    if ident is not None:
        where.caption(md(f"Reviewing as {ident.label}"))
        return ident.label
    if REVIEWER_KEY not in st.session_state and st.session_state.get(_KEEP):
        st.session_state[REVIEWER_KEY] = st.session_state[_KEEP]
    name = where.text_input("Your name (required to edit)", key=REVIEWER_KEY, placeholder="e.g. J. Smith",
                            on_change=_name_typed, max_chars=255,
                            help="Every change is saved with your name, the time and the reason. This browser "
                                 "remembers the name.")
    name = (name or "").strip()
    st.session_state[_KEEP] = name
    with where if where is not st else st.container():
        _memory_component()(data={"name": name, "forget": bool(st.session_state.get(_CLEARED))}, key=_MEMORY,
                            default={"stored": None}, on_stored_change=_name_remembered)
    return name


def current_reviewer() -> str:
    """The reviewer name of this session ('' when none was entered); the signed-in identity with sign-in on."""
    ident = signed_in_identity()
    if ident is not None:
        return ident.label
    return str(st.session_state.get(REVIEWER_KEY) or st.session_state.get(_KEEP) or "").strip()


# -- messages and undo --------------------------------------------------------------------------------------------
def _flash(kind: str, msg: str) -> None:
    st.session_state[FLASH] = (kind, msg)


def show_flash() -> None:
    """Show (once) the message left by the last action; every part of it is shown as text."""
    kind, msg = st.session_state.pop(FLASH, (None, None))
    show = {"error": st.error, "ok": st.success, "info": st.info}.get(kind or "")
    if show is not None:
        show(md(msg))


@dataclass(frozen=True)
class _Ctx:
    """What the panel's callbacks act on: one slide as the panel showed it."""

    store: Store
    db: str
    state: SlideState
    model_version: str | None
    prefix: str  # f"{key}_{image_id}": the slide's widget keys
    done: Callable[[], None] | None
    on_undo: Callable[[str], None] | None

    @property
    def image_id(self) -> str:
        return self.state.image_id

    def k(self, name: str) -> str:
        return f"{self.prefix}_{name}"


def _stash(ctx: _Ctx) -> None:
    """Keep the slide's typed reason and note (the form sent them) for when the panel shows this slide again."""
    d = st.session_state.setdefault(DRAFTS, {}).setdefault(ctx.image_id, {})
    for name in ("reason", "note"):
        if ctx.k(name) in st.session_state:
            d[name] = st.session_state[ctx.k(name)]


def _changes(before: SlideState, after: SlideState) -> str:
    fields = ("label", "outlier", "exclude", "second_opinion", "note")
    return ", ".join(f"{f} = {getattr(after, f)!r}" for f in fields if getattr(before, f) != getattr(after, f))


def _saved(ctx: _Ctx, new: SlideState, what: str, move_on: bool = True) -> None:
    """After a saved edit: clear the used reason, remember the edit for Undo, say so, move on (unless a note)."""
    st.session_state[ctx.k("reason")] = ""
    st.session_state.get(DRAFTS, {}).get(ctx.image_id, {}).pop("reason", None)
    st.session_state[LAST] = {"db": ctx.db, "image_id": ctx.image_id, "version": new.version, "what": what}
    _flash("ok", f"{ctx.image_id}: saved {what} (version {new.version}). Undo reverts it.")
    if ctx.done is not None and move_on:
        ctx.done()


def _reason(ctx: _Ctx, default: str) -> str:
    return str(st.session_state.get(ctx.k("reason")) or "").strip() or default


def _act(ctx: _Ctx, changes: dict[str, Any], default_reason: str, move_on: bool = True) -> SlideState | None:
    """Save ``changes`` with the typed reason (else ``default_reason``); the saved state, None if nothing was."""
    _stash(ctx)
    try:
        new = ctx.store.edit(ctx.image_id, changes, current_reviewer(), _reason(ctx, default_reason),
                             ctx.state.version, ctx.model_version)
    except SlideLensError as exc:
        _flash("error", str(exc))
        return None
    if new.version == ctx.state.version:
        shown = ", ".join(f"{k} is already {v!r}" for k, v in changes.items())
        _flash("info", f"{ctx.image_id}: nothing changed ({shown}); nothing was saved")
        return None
    _saved(ctx, new, _changes(ctx.state, new), move_on)
    return new


def _save_label(ctx: _Ctx) -> None:
    _act(ctx, {"label": st.session_state[ctx.k(f"{ctx.state.version}_new_label")]}, "relabel")


def _accept(ctx: _Ctx) -> None:
    _stash(ctx)
    try:
        new = ctx.store.accept_label(ctx.image_id, current_reviewer(), _reason(ctx, "accepted"), ctx.state.version,
                                     ctx.model_version)
    except SlideLensError as exc:
        _flash("error", str(exc))
        return
    _saved(ctx, new, f"label {new.label!r} accepted")


def _save_note(ctx: _Ctx) -> None:
    _stash(ctx)
    base = st.session_state.get(DRAFTS, {}).get(ctx.image_id, {}).get("note_base", ctx.state.note)
    if base != ctx.state.note:  # someone saved another note since this box was filled: do not overwrite it blindly
        st.session_state[DRAFTS][ctx.image_id]["note_base"] = ctx.state.note
        _flash("error", f"{ctx.image_id}: the saved note was changed by {ctx.state.updated_by} since you started "
                        "typing; your text is kept in the box. Merge it with the note shown and save again.")
        return
    if _act(ctx, {"note": st.session_state.get(ctx.k("note"), "")}, "note", move_on=False) is not None:
        st.session_state[DRAFTS][ctx.image_id]["note_base"] = st.session_state.get(ctx.k("note"), "")


def _skip(ctx: _Ctx) -> None:
    _stash(ctx)  # Alt+N while typing keeps the text for this slide
    if ctx.done is not None:
        ctx.done()


def _undo(store: Store, db: str, last: dict[str, Any], model_version: str | None,
          on_undo: Callable[[str], None] | None) -> None:
    image_id = last["image_id"]
    try:
        new, undone = store.undo(image_id, current_reviewer(), last["version"], model_version=model_version)
    except ConflictError as exc:
        st.session_state.pop(LAST, None)
        _flash("error", f"{exc} The last change can no longer be undone from here.")
        return
    except SlideLensError as exc:
        _flash("error", str(exc))
        return
    st.session_state.pop(LAST, None)
    rows = "; ".join(f"{r.field} back to {r.old_value!r}" for r in undone)
    _flash("ok", f"{image_id}: undone ({rows}; audit rows #{', #'.join(str(r.id) for r in undone)} reverted "
                 f"by new rows, version {new.version})")
    if on_undo is not None:
        on_undo(image_id)


def undo_bar(store: Store, db: str, model_version: str | None, key: str, shortcut: bool,
             on_undo: Callable[[str], None] | None = None) -> None:
    """The session's last saved edit with an Undo button (Alt+Z with ``shortcut``), while it can still be undone."""
    last = st.session_state.get(LAST)
    if not last or last.get("db") != db:
        return
    try:
        if store.state(last["image_id"]).version != last["version"]:
            return  # changed since (by anyone): undo would be refused
    except SlideLensError:
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.caption(md(f"Last change: {last['image_id']}: {last['what']}"))
    c2.button("Undo", key=f"{key}_undo", icon=":material/undo:", shortcut="Alt+Z" if shortcut else None,
              on_click=_undo, args=(store, db, last, model_version, on_undo), width="stretch",
              help="Puts the old values back (as new audit rows; the history keeps both).")


# -- the panel ----------------------------------------------------------------------------------------------------
def probs_figure(probs: dict[str, float]) -> go.Figure:
    """A small horizontal bar chart of class probabilities."""
    fig = go.Figure(go.Bar(x=list(probs.values()), y=list(probs.keys()), orientation="h",
                           text=[f"{v:.2f}" for v in probs.values()], textposition="auto",
                           marker_color="#8e2d6b"))
    fig.update_layout(height=40 + 28 * len(probs), margin=dict(l=0, r=0, t=4, b=0), xaxis=dict(range=[0, 1]))
    return fig


def history_table(store: Store, image_id: str) -> pd.DataFrame:
    """The slide's audit trail, newest first, every cell escaped to show as typed in ``st.table``."""
    rows = store.history(image_id)
    df = pd.DataFrame([{"row": str(r.id), "when (UTC)": r.at[:16].replace("T", " "), "reviewer": r.reviewer,
                        "field": r.field, "old": r.old_value, "new": r.new_value, "reason": r.reason,
                        "model": r.model_version} for r in rows])
    if df.empty:
        return df
    for c in df.columns[1:]:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else md(v))
    return df.iloc[::-1].reset_index(drop=True)


def _prediction(prediction: dict, mv: str | None, key: str) -> None:
    """The judged prediction (out-of-fold where there is one) and, apart, the final model's."""
    src = prediction.get("pred_source") or OOF
    probs = {k[5:]: float(v) for k, v in prediction.items() if str(k).startswith("prob_") and pd.notna(v)}
    judged = "judges errors" if src == OOF else "not judged: no out-of-fold prediction"
    st.text(f"Prediction ({src}, {judged}): {prediction.get('pred')}")
    if probs:
        st.plotly_chart(probs_figure(probs), key=f"{key}_probs", config={"displayModeBar": False})
    final = prediction.get("final_pred")
    if src == OOF and final is not None and pd.notna(final):
        st.text(f"Final model {mv or ''} (the viewer's overlay): {final}")
    st.caption("Out-of-fold = predicted by a model that did not train on this slide; the queue's label issues, "
               "confidence and errors use it." if src == OOF else f"From the {FINAL}, which trained on its slides.")


def _summary(cohort: Cohort, store: Store, state: SlideState, mv: str | None, prediction: dict | None,
             reasons: str, thumbnail: bool, key: str) -> None:
    image_id = state.image_id
    st.markdown(f"#### {md(image_id)}")
    if thumbnail:
        from ui.analysis_views import thumbnail_jpeg

        img = thumbnail_jpeg(cohort.slide_paths.get(image_id), 240, cohort.cache_dir)
        if img is not None:
            st.image(img, width=240)
    st.link_button("Open in viewer", f"/viewer?slide={quote(image_id)}" + (f"&model={quote(mv)}" if mv else ""))
    original = store.source_labels().get(image_id)
    c1, c2 = st.columns(2)
    c1.metric("Label", md(state.label or "none"),
              help=md(f"the reviewed label (imported as {original!r})") if original else "the reviewed label")
    flags = [n for n, on in (("outlier", state.outlier), ("excluded", state.exclude),
                             ("second opinion", state.second_opinion)) if on]
    c2.metric("Flags", ", ".join(flags) or "none")
    if original and original != state.label:
        st.text(f"Imported label: {original}")
    if prediction:
        _prediction(prediction, mv, key)
    if reasons:
        st.text("Why it is in the queue: " + reasons)
    if state.note:
        st.text("Note: " + state.note)  # plain text, never markdown or HTML


def _seed_drafts(ctx: _Ctx) -> None:
    """Fill the reason and note boxes with text kept for this slide (or its saved note) when they are new."""
    d = st.session_state.setdefault(DRAFTS, {}).setdefault(ctx.image_id, {})
    if ctx.k("reason") not in st.session_state:
        st.session_state[ctx.k("reason")] = d.get("reason", "")
    nkey, note = ctx.k("note"), ctx.state.note
    if nkey not in st.session_state:
        kept = d.get("note")
        edited = kept is not None and kept != d.get("note_base", note)
        st.session_state[nkey] = kept if edited else note
        d["note_base"] = d.get("note_base", note) if edited else note
    elif st.session_state[nkey] == d.get("note_base") and d.get("note_base") != note:
        st.session_state[nkey] = d["note_base"] = note  # untouched box: show the note saved since


def _actions(ctx: _Ctx, classes: list[str], shortcuts: bool, reviewer: str) -> None:
    s = ctx.state
    _seed_drafts(ctx)
    keys = dict(zip("aoxsn", ("Alt+A", "Alt+O", "Alt+X", "Alt+S", "Alt+N"), strict=True)) if shortcuts else {}
    options = classes + [OTHER] if classes else [OTHER]
    default = s.label if s.label in options else options[0]
    with st.form(ctx.k("form"), enter_to_submit=True, border=False):
        fc1, fc2 = st.columns([1, 2])
        fc1.selectbox("Label", options, index=options.index(default), key=ctx.k(f"{s.version}_new_label"))
        fc2.text_input("Reason (saved with any action below)", key=ctx.k("reason"), max_chars=500,
                       placeholder="why: e.g. tumour cells throughout")
        row = st.container(horizontal=True, gap="small")
        with row:
            st.form_submit_button("Save label", type="primary", on_click=_save_label, args=(ctx,),
                                  help="Saves the label chosen above (Enter in the reason does the same). "
                                       "An unchanged label is not saved.")
            st.form_submit_button("Accept label", on_click=_accept, args=(ctx,), shortcut=keys.get("a"),
                                  disabled=not s.label, help="The current label is right: recorded as reviewed.")
            st.form_submit_button("Unflag outlier" if s.outlier else "Flag outlier", on_click=_act,
                                  args=(ctx, {"outlier": not s.outlier}, "outlier (no reason given)"),
                                  shortcut=keys.get("o"))
            st.form_submit_button("Include" if s.exclude else "Exclude", on_click=_act,
                                  args=(ctx, {"exclude": not s.exclude}, "exclude (no reason given)"),
                                  shortcut=keys.get("x"))
            st.form_submit_button("Clear 2nd opinion" if s.second_opinion else "Second opinion", on_click=_act,
                                  args=(ctx, {"second_opinion": not s.second_opinion},
                                        "second opinion (no reason given)"), shortcut=keys.get("s"))
            if ctx.done is not None:
                st.form_submit_button("Skip", on_click=_skip, args=(ctx,), shortcut=keys.get("n"),
                                      help="Next slide without a change; what you typed is kept for this slide.")
        st.text_area("Note (plain text)", key=ctx.k("note"), height=80, max_chars=5000)
        st.form_submit_button("Save note", on_click=_save_note, args=(ctx,))
    if shortcuts:
        st.caption("Keys: Enter saves the label, Alt+A accept, Alt+O outlier, Alt+X exclude, Alt+S second opinion, "
                   "Alt+N skip, Alt+Z undo. Typed text is never lost.")
    if not reviewer:
        st.warning("Enter your name above to make changes.")


def relabel_panel(cohort: Cohort, image_id: str, *, model_version: str | None = None, prediction: dict | None = None,
                  reasons: str = "", on_done: Callable[[], None] | None = None, key: str = "rp",
                  thumbnail: bool = True, shortcuts: bool = False, ask_name: bool = True,
                  on_undo: Callable[[str], None] | None = None, wide: bool = False) -> None:
    """Review one slide: label, prediction, reasons, actions (save / accept label, outlier, exclude, second opinion,
    note, skip; one reason box for all), Undo of the last saved edit, and the slide's audit history.

    ``prediction``: the slide's row of ``core.review.slide_table`` (pred, pred_source, prob_*, final_pred). ``on_done``
    runs after each saved edit and on Skip (e.g. go to the next slide); ``on_undo(image_id)`` after an undo;
    ``shortcuts`` adds Alt+A/O/X/S/N/Z; ``ask_name`` shows the reviewer-name box (the review page shows its own);
    ``wide`` puts the slide summary and the actions side by side."""
    try:
        store = cohort_store(cohort)
        state = store.state(image_id)
        classes = list(store.classes())
    except SlideLensError as exc:
        st.error(md(exc))
        return
    if ask_name:
        reviewer_input()
    ctx = _Ctx(store, cohort.database, state, model_version, f"{key}_{image_id}", on_done, on_undo)
    left, right = st.columns([2, 3], gap="large") if wide else (st.container(), st.container())
    with left:
        _summary(cohort, store, state, model_version, prediction, reasons, thumbnail, ctx.k(str(state.version)))
    with right:
        show_flash()
        undo_bar(store, cohort.database, model_version, key, shortcuts, on_undo)
        if store.actor is not None and store.role_of(store.actor) == "viewer":  # the store refuses edits anyway
            st.info("You are signed in as a viewer: you can look, not change. An admin can make you a reviewer.")
        _actions(ctx, classes, shortcuts, current_reviewer())
    st.markdown("**History** (newest first; an undo is a new row that names the row it reverts)")
    hist = history_table(store, image_id)
    if hist.empty:
        st.caption("No changes yet.")
    else:
        st.table(hist, hide_index=True)  # static text, every cell escaped (also readable in the page's DOM)
