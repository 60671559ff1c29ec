"""The handout: plain-words cases, regions on real (synthetic) slides, a self-contained HTML file and a PDF."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.review.decks import deck_cases
from core.review.handout import deck_html, export_deck
from tests._present_data import build_deck, build_present_cohort


@pytest.fixture(scope="module")
def deck_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("present")
    return build_deck(build_present_cohort(root))


def test_cases_read_in_plain_words_under_the_slide_table_rule(deck_setup: tuple) -> None:
    cohort, store, deck = deck_setup
    store.set_label("case_a", "benign", "bob", "recheck", store.state("case_a").version)  # reviewed label wins
    try:
        cases = deck_cases(cohort, store, deck)
    finally:
        store.set_label("case_a", "tumor", "bob", "back", store.state("case_a").version)
    assert [c.image_id for c in cases] == ["case_b", "case_a", "case_c"]
    b, a, c = cases
    assert a.lines[0] == "The model reads this slide as invasive carcinoma, 87% sure."
    assert a.lines[1] == "The pathologist's diagnosis: benign breast tissue."  # the reviewed label, not the file's
    assert a.disagrees and not a.unsure
    assert b.unsure and b.disagrees and "unsure" in b.lines[1]
    assert len(a.regions) >= 2 and not a.regions_note
    # the strongest region of case_a surrounds its first hot spot (1500, 300)
    r = a.regions[0]
    assert r.x <= 1500 <= r.x + r.w and r.y <= 300 <= r.y + r.h
    assert c.regions == () and "No attention map is stored" in c.regions_note  # says so instead of failing
    assert (c.width, c.height) == (1200, 900)


def test_html_is_self_contained_and_escapes_text(deck_setup: tuple) -> None:
    cohort, store, deck = deck_setup
    html, pdf = export_deck(cohort, store, deck)
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 3  # one page per case
    srcs = re.findall(r"src='([^']*)'", html)
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert len(srcs) == 7  # an overview per case, a close-up per region (two regions each in case_a, case_b)
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "&lt;look&gt;" in html and "<look>" not in html
    assert "No attention map is stored for this slide" in html
    assert not re.search(r"logit|auroc|\bood\b|out-of-fold", html, re.I)


def test_empty_deck_exports(deck_setup: tuple) -> None:
    html = deck_html("Nothing", [], [])
    assert "Nothing" in html and "0 case(s)" in html


@pytest.mark.browser
def test_exported_html_opens_offline_with_every_image(deck_setup: tuple, tmp_path: Path) -> None:
    from tests._browser import browser_page, save_screenshot

    cohort, store, deck = deck_setup
    html, _ = export_deck(cohort, store, deck)
    path = tmp_path / "handout.html"
    path.write_text(html)
    requests: list[str] = []
    with browser_page(1300, 900) as page:
        page.context.route("**/*", lambda route: (requests.append(route.request.url), route.abort()
                                                  if not route.request.url.startswith(("file:", "data:"))
                                                  else route.continue_()))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        n, loaded = page.evaluate("() => { const im = [...document.images]; "
                                  "return [im.length, im.filter(i => i.complete && i.naturalWidth > 0).length]; }")
        assert n == 7 and loaded == 7
        assert page.locator("section.case").count() == 3
        save_screenshot(page, "handout_offline", full_page=True)
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []


def test_unreadable_attention_is_said_in_words(deck_setup: tuple) -> None:
    cohort, store, deck = deck_setup
    bad = Path(cohort.results) / "v001-abmil" / "attention" / "case_c.h5"
    bad.write_bytes(b"not an hdf5 file")
    try:
        case = {c.image_id: c for c in deck_cases(cohort, store, deck)}["case_c"]
    finally:
        bad.unlink()
    assert case.regions == () and "cannot be read" in case.regions_note
