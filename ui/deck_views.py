"""Building decks: the 'Add to deck' control for the viewer, the review queue and the error analysis, and the
presentation page's deck editor (order, talking points, handout downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from core.cohort.cohort_file import Cohort
from core.errors import SlideLensError
from core.review.store import Store
from core.review.store_decks import Deck
from ui.present_view import start_presenting
from ui.safe import md

NEW_DECK = "New deck…"


def _store(cohort: Cohort) -> Store | None:
    from ui.review_panel import cohort_store

    try:
        return cohort_store(cohort)
    except SlideLensError as exc:
        st.error(f"The review database cannot be opened: {md(str(exc))}")
        return None


def _reviewer() -> str:
    from ui.review_panel import current_reviewer

    return current_reviewer()


def add_to_deck(cohort: Cohort, image_ids: Sequence[str], key: str, where: Any = st,
                label: str = "Add to deck", model_version: str | None = None) -> None:
    """A small 'Add to deck' popover: pick a deck (or name a new one), an optional talking point, add the slides
    (those already in the deck are skipped). A new deck shows ``model_version`` (None: the latest). The viewer page
    calls ``add_to_deck(cohort, [image_id], key="viewer_deck", model_version=version)``."""
    ids = [str(i) for i in image_ids]
    if not ids:
        return
    with where.popover(label, icon=":material/slideshow:"):
        store = _store(cohort)
        if store is None:
            return
        decks = store.decks()
        names = [d.name for d in decks] + [NEW_DECK]
        choice = st.selectbox("Deck", names, key=f"{key}_deck")
        new_name = st.text_input("New deck's name", key=f"{key}_name") if choice == NEW_DECK else ""
        point = st.text_area("Talking point (optional)", key=f"{key}_point", height=80) if len(ids) == 1 else ""
        if st.button(f"Add {len(ids)} slide(s)" if len(ids) > 1 else "Add", key=f"{key}_add", type="primary"):
            who = _reviewer()
            if not who:
                st.warning("Enter your name first (the 'Your name' box): deck edits are signed.")
                return
            try:
                deck = store.create_deck(new_name, who, model_version) if choice == NEW_DECK else decks[names.index(choice)]
                added = 0
                for image_id in ids:
                    if image_id in deck.image_ids:
                        continue
                    deck = store.add_to_deck(deck.id, image_id, who, deck.version, talking_point=point)
                    added += 1
            except SlideLensError as exc:
                st.error(md(str(exc)))
                return
            st.success(md(f"Added {added} slide(s) to {deck.name!r} ({len(deck.cases)} in all)."))


def _case_row(store: Store, deck: Deck, i: int, who: str) -> Deck | None:
    case = deck.cases[i]
    c = st.columns([0.5, 3, 6, 0.6, 0.6, 0.8])
    c[0].markdown(f"**{i + 1}**")
    c[1].text(case.image_id)
    point = c[2].text_area("Talking point", case.talking_point, key=f"tp_{deck.id}_{case.image_id}",
                           label_visibility="collapsed", height=68, placeholder="Talking point for this case")
    try:
        if point.strip() != case.talking_point and c[2].button("Save point", key=f"tps_{deck.id}_{case.image_id}"):
            return store.set_talking_point(deck.id, case.image_id, point, who, deck.version)
        if c[3].button("↑", key=f"up_{deck.id}_{case.image_id}", disabled=i == 0, help="Earlier"):
            return store.move_in_deck(deck.id, case.image_id, i - 1, who, deck.version)
        if c[4].button("↓", key=f"dn_{deck.id}_{case.image_id}", disabled=i == len(deck.cases) - 1, help="Later"):
            return store.move_in_deck(deck.id, case.image_id, i + 1, who, deck.version)
        if c[5].button("Remove", key=f"rm_{deck.id}_{case.image_id}"):
            return store.remove_from_deck(deck.id, case.image_id, who, deck.version)
    except SlideLensError as exc:
        st.error(md(str(exc)))
    return None


def _handout(cohort: Cohort, store: Store, deck: Deck) -> None:
    from core.review.handout import export_deck

    stamp = (deck.id, deck.version, int(store.snapshot()[1]))
    if st.button("Prepare handout (HTML and PDF)", key=f"handout_{deck.id}"):
        with st.spinner("Drawing the handout…"):
            try:
                st.session_state["_handout"] = (stamp, *export_deck(cohort, store, deck))
            except SlideLensError as exc:
                st.error(md(str(exc)))
    ready = st.session_state.get("_handout")
    if ready and ready[0] == stamp:
        base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in deck.name) or "deck"
        c = st.columns(2)
        c[0].download_button("Download HTML (opens offline)", ready[1], f"{base}.html", "text/html")
        c[1].download_button("Download PDF", ready[2], f"{base}.pdf", "application/pdf")


def deck_editor(cohort: Cohort) -> None:
    """The presentation page without a deck in its address: choose or create a deck, order it, present it."""
    from ui.review_panel import reviewer_input

    st.title("Presentations")
    st.caption("Collect cases into a deck ('Add to deck' in the viewer, the review queue and the error analysis), "
               "order them, write a talking point each, then present full screen with the arrow keys or hand out "
               "the HTML file.")
    store = _store(cohort)
    if store is None:
        return
    reviewer_input()
    who = _reviewer()
    decks = store.decks()
    with st.expander("New deck", expanded=not decks):
        name = st.text_input("Name", key="new_deck_name", placeholder="Tumour board, 3 May")
        if st.button("Create deck", key="create_deck"):
            try:
                store.create_deck(name, who)
                st.rerun()
            except SlideLensError as exc:
                st.error(md(str(exc)))
    if not decks:
        st.info("No decks yet.")
        return
    names = [d.name for d in decks]
    deck = decks[names.index(st.selectbox("Deck", names, key="deck_choice"))]
    st.caption(md(f"{len(deck.cases)} case(s) · created by {deck.created_by}"
                  + (f" · last change by {deck.updated_by}" if deck.updated_by else "")))
    if st.button("Present", type="primary", icon=":material/slideshow:", disabled=not deck.cases):
        start_presenting(deck.id)
        st.rerun()
    for i in range(len(deck.cases)):
        if not who:
            st.text(f"{i + 1}. {deck.cases[i].image_id}: {deck.cases[i].talking_point}")
            continue
        if _case_row(store, deck, i, who) is not None:
            st.rerun()
    if not who and deck.cases:
        st.caption("Enter your name to reorder cases or write talking points.")
    if deck.cases:
        _handout(cohort, store, deck)
