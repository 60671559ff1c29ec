"""Presentation mode: one case per screen in plain words, a full-width viewer with the model's top regions outlined
and toured automatically, arrow keys between cases, no sidebar. The words come from ``core.review.decks``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

import streamlit as st

from core.cohort.cohort_file import Cohort
from core.errors import SlideLensError
from core.review.decks import GLOSSARY, TOUR_REGIONS, CaseView, deck_cases, region_line
from core.review.store import Store
from core.review.store_decks import Deck
from core.slides.slide import DZ_OVERLAP, DZ_TILE_SIZE

_FRONTEND = Path(__file__).parent / "frontend" / "present"
DECK_PARAM, CASE_PARAM = "deck", "case"

_STYLE = """<style>
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stHeader"],
[data-testid="stSidebarNav"] { display: none !important; }
.block-container { padding-top: 1.2rem !important; max-width: 100% !important; }
.slp-text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; }
.slp-count { font-size: 18px; color: #666; margin-bottom: 4px; }
.slp-reading p { font-size: 30px; line-height: 1.35; margin: 2px 0; }
.slp-reading p.warn { color: #9a3412; font-weight: 650; }
.slp-sub { font-size: 24px; margin: 8px 0 2px; }
.slp-regions { font-size: 22px; margin: 0 0 6px 1.2em; }
.slp-talk { font-size: 24px; border-left: 5px solid #ffd60a; padding: 4px 14px; margin: 10px 0; white-space: pre-wrap; }
.slp-none { font-size: 22px; color: #555; font-style: italic; }
.slp-glossary { font-size: 15px; color: #666; }
</style>"""


@st.cache_resource(show_spinner=False)
def _component() -> Any:
    return st.components.v2.component("slidelens.present", js=(_FRONTEND / "present.js").read_text(),
                                      css=(_FRONTEND / "present.css").read_text(), isolate_styles=False)


@st.cache_data(show_spinner=False, max_entries=16)
def _cases(cohort_name: str, deck_id: int, deck_version: int, audit_position: int, _cohort: Cohort, _store: Store,
           _deck: Deck) -> list[CaseView]:
    return deck_cases(_cohort, _store, _deck)


def cached_cases(cohort: Cohort, store: Store, deck: Deck) -> list[CaseView]:
    """The deck's cases, cached until the deck or any slide's review state changes."""
    return _cases(cohort.name, deck.id, deck.version, int(store.snapshot()[1]), cohort, store, deck)


def _viewer_data(cohort: Cohort, case: CaseView, height: int) -> dict[str, Any]:
    q = f"?cohort={quote(cohort.name)}"
    regions = [{"rank": r.rank, "box": r.box(pad=0.35), "box0": r.box(), "outline": r.outline(),
                "caption": f"{region_line(r)} (region {r.rank} of {min(len(case.regions), TOUR_REGIONS)})"}
               for r in case.regions]
    overlay = None
    if case.version and case.regions:
        base = f"/tiles/attention/{quote(case.version)}/{quote(case.image_id)}_files/"
        overlay = {"url": base, "query": f"?cls={int(case.extra.get('cls', 0))}&cohort={quote(cohort.name)}"}
    return {"key": f"{case.image_id}|{case.version}", "image_id": case.image_id, "width": case.width,
            "height": case.height, "tile_size": DZ_TILE_SIZE, "overlap": DZ_OVERLAP,
            "tiles_url": f"/tiles/{quote(case.image_id)}_files/", "query": q, "overlay": overlay,
            "regions": regions, "tour_regions": TOUR_REGIONS, "view_height": height}


def _leave() -> None:
    for p in (DECK_PARAM, CASE_PARAM):
        if p in st.query_params:
            del st.query_params[p]


def _go(index: int, total: int) -> None:
    st.query_params[CASE_PARAM] = str(max(1, min(total, index + 1)))


def _reading_html(case: CaseView, n: int, total: int, deck_name: str) -> str:
    e = html.escape
    lines = "".join(f"<p class='{'warn' if ('unsure' in ln or 'disagrees' in ln) else ''}'>{e(ln)}</p>"
                    for ln in case.lines)
    return (f"<div class='slp-text'><div class='slp-count'>{e(deck_name)} · case {n} of {total}</div>"
            f"<div class='slp-reading'>{lines}</div></div>")


def _details_html(case: CaseView) -> str:
    e = html.escape
    out = ["<div class='slp-text'>"]
    if case.regions:
        items = "".join(f"<li>{e(region_line(r))}</li>" for r in case.regions[:TOUR_REGIONS])
        out.append(f"<p class='slp-sub'>It looked most at these regions:</p><ol class='slp-regions'>{items}</ol>")
    if case.regions_note:
        out.append(f"<p class='slp-none'>{e(case.regions_note)}</p>")
    if case.talking_point:
        out.append(f"<div class='slp-talk'>{e(case.talking_point)}</div>")
    if case.regions:
        out.append(f"<p class='slp-glossary'>{e(GLOSSARY)} Heatmap: press H.</p>")
    out.append("</div>")
    return "".join(out)


def present_deck(cohort: Cohort, store: Store, deck: Deck, index: int, height: int = 560) -> None:
    """Show case ``index`` (0-based) of ``deck`` full width; the keyboard moves between cases."""
    st.html(_STYLE)
    try:
        cases = cached_cases(cohort, store, deck)
    except SlideLensError as exc:
        st.error(f"Deck {deck.name!r} cannot be shown: {exc}")
        return
    if not cases:
        st.info("This deck has no cases yet. Add cases from the viewer, the review queue or the error analysis.")
        if st.button("Leave presentation"):
            _leave()
            st.rerun()
        return
    index = max(0, min(len(cases) - 1, index))
    case = cases[index]
    st.html(_reading_html(case, index + 1, len(cases), deck.name))
    if case.width and case.height:
        result = _component()(data=_viewer_data(cohort, case, height), key="present_viewer",
                              on_nav_change=lambda: None)
        nav = getattr(result, "nav", None)
        if nav:
            if nav.get("leave"):
                _leave()
            else:
                _go(index + int(nav.get("step", 0)), len(cases))
            st.rerun()
    st.html(_details_html(case))
    cols = st.columns([1, 1, 1, 5])
    if cols[0].button("← Previous", disabled=index == 0, key="present_prev"):
        _go(index - 1, len(cases))
        st.rerun()
    if cols[1].button("Next →", disabled=index == len(cases) - 1, key="present_next"):
        _go(index + 1, len(cases))
        st.rerun()
    if cols[2].button("Leave", key="present_leave"):
        _leave()
        st.rerun()


def presenting() -> tuple[int, int] | None:
    """(deck id, 0-based case index) when the page's address asks to present a deck, else None."""
    raw = st.query_params.get(DECK_PARAM)
    if not raw:
        return None
    try:
        deck_id = int(raw)
        case = int(st.query_params.get(CASE_PARAM, "1") or 1)
    except ValueError:
        return None
    return deck_id, max(0, case - 1)


def start_presenting(deck_id: int) -> None:
    """Switch this page to presentation mode on the deck's first case."""
    st.query_params[DECK_PARAM] = str(int(deck_id))
    st.query_params[CASE_PARAM] = "1"
