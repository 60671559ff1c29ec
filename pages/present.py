"""Presentations: decks of cases shown to clinicians in plain words (``?deck=<id>&case=<n>`` presents one)."""

from __future__ import annotations

import streamlit as st

from core.errors import SlideLensError
from ui.context import current_cohort
from ui.deck_views import deck_editor
from ui.present_view import present_deck, presenting
from ui.review_panel import cohort_store
from ui.safe import md


def main() -> None:
    try:
        cohort = current_cohort()
    except SlideLensError as exc:
        st.error(md(str(exc)))
        return
    where = presenting()
    if where is None:
        deck_editor(cohort)
        return
    try:
        store = cohort_store(cohort)
        deck = store.deck(where[0])
    except SlideLensError as exc:
        st.error(md(str(exc)))
        return
    present_deck(cohort, store, deck, where[1])


main()
