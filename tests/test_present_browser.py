"""End to end in headless Chromium: present a 3-case deck with the keyboard; the tour moves the viewport to each
region; the case without attention says so; no sidebar, no jargon. Screenshots in tests/artifacts/present_*.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._browser import browser_page, choose_option, running_app, save_screenshot
from tests._present_data import build_deck, build_present_cohort

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEW = "() => { const v = window.__slidelensPresent; if (!v || !v.world.getItemAt(0)) return null; " \
       "const r = v.world.getItemAt(0).viewportToImageRectangle(v.viewport.getBounds(true)); " \
       "return [r.x, r.y, r.width, r.height]; }"


def _root(page, attr: str) -> str | None:
    return page.evaluate(f"() => {{ const r = document.querySelector('.slp-root'); return r && r.dataset.{attr}; }}")


def _wait_case(page, image_id: str) -> None:
    page.wait_for_function(f"() => {{ const r = document.querySelector('.slp-root'); "
                           f"return r && r.dataset.imageId === '{image_id}'; }}", timeout=60_000)


def _wait_step(page, step: str) -> list[float]:
    page.wait_for_function(f"() => {{ const r = document.querySelector('.slp-root'); "
                           f"return r && r.dataset.tourStep === '{step}'; }}", timeout=30_000)
    page.wait_for_timeout(1800)  # the pan/zoom animation (1.4 s) ends
    return page.evaluate(VIEW)


def _inside(view: list[float], box: tuple[int, int, int, int]) -> bool:
    x, y, w, h = view
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return x <= cx <= x + w and y <= cy <= y + h


def test_present_a_deck_with_the_keyboard(tmp_path: Path) -> None:
    from core.review.decks import deck_cases

    toml = build_present_cohort(tmp_path)
    cohort, store, deck = build_deck(toml)
    cases = {c.image_id: c for c in deck_cases(cohort, store, deck)}
    errors: list[str] = []
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp_path / "streamlit.log") as url, \
            browser_page(1500, 1000) as page:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/present?deck={deck.id}&case=1")
        _wait_case(page, "case_b")
        assert page.get_by_text("The model reads this slide as invasive carcinoma, 55% sure.").is_visible()
        assert page.get_by_text("The model is unsure about this slide.", exact=False).is_visible()
        assert page.get_by_text("The model hesitates here: <look> at the glands.").is_visible()  # shown as text
        assert not page.locator('[data-testid="stSidebar"]').is_visible()
        b = cases["case_b"]
        seen = []
        for i, region in enumerate(b.regions[:3], start=1):
            view = _wait_step(page, str(i))
            box = (region.x, region.y, region.w, region.h)
            assert min(view[2] / b.width, view[3] / b.height) < 0.8, view  # zoomed in, not the whole slide
            assert _inside(view, box), (i, view, box)
            seen.append(view)
            save_screenshot(page, f"present_case1_region{i}")
            if i == 1:
                save_screenshot(page, "present", doc=True)  # the README's tour
        assert len(seen) >= 2 and seen[0] != seen[1]  # the viewport moved from one region to the next
        page.keyboard.press("ArrowRight")
        _wait_case(page, "case_a")
        assert page.get_by_text("The model reads this slide as invasive carcinoma, 87% sure.").is_visible()
        assert page.get_by_text("The pathologist's diagnosis: invasive carcinoma.").is_visible()
        a = cases["case_a"]
        view = _wait_step(page, "1")
        assert _inside(view, (a.regions[0].x, a.regions[0].y, a.regions[0].w, a.regions[0].h))
        page.keyboard.press("h")
        assert _root(page, "heatmap") == "on"
        page.wait_for_timeout(1000)
        save_screenshot(page, "present_case2_heatmap")
        page.keyboard.press("h")
        assert _root(page, "heatmap") == "off"
        assert "case=2" in page.url
        page.keyboard.press("ArrowRight")
        _wait_case(page, "case_c")
        assert page.get_by_text("No attention map is stored for this slide", exact=False).is_visible()
        page.wait_for_function("() => document.querySelector('.slp-root').dataset.tourStep === 'none'")
        page.wait_for_timeout(1200)
        save_screenshot(page, "present_case3_no_attention")
        page.keyboard.press("ArrowRight")  # past the last case: stays there
        page.wait_for_timeout(1500)
        assert _root(page, "imageId") == "case_c"
        page.keyboard.press("ArrowLeft")
        _wait_case(page, "case_a")
        body = page.inner_text("body")
        assert not re.search(r"logit|auroc|\bood\b|out-of-fold", body, re.I), body
        page.keyboard.press("Escape")
        page.get_by_role("heading", name="Presentations").wait_for(timeout=30_000)
        page.wait_for_function("() => !document.querySelector('.slp-root')", timeout=30_000)  # the viewer is gone
        save_screenshot(page, "present_editor")
    assert errors == []


def test_build_a_deck_from_the_error_analysis(tmp_path: Path) -> None:
    from core.cohort.cohort_file import load_cohort
    from core.review.store import open_store

    toml = build_present_cohort(tmp_path)
    build_deck(toml)
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp_path / "streamlit.log") as url, \
            browser_page(1500, 1000) as page:
        page.goto(f"{url}/present")
        name = page.get_by_role("textbox", name=re.compile("Your name"))
        name.fill("dana")
        name.press("Enter")
        page.wait_for_timeout(1500)
        page.get_by_role("link", name="Error analysis").click()
        page.get_by_role("tab", name="Confusion").click()
        add = page.get_by_role("button", name=re.compile(r"Add these 1 to a deck"))
        add.wait_for(timeout=60_000)
        add.click()
        choose_option(page, page.get_by_label("Deck", exact=True), "New deck…")
        page.get_by_label("New deck's name").fill("Errors for the board")
        page.get_by_role("button", name="Add", exact=True).click()
        page.get_by_text("Added 1 slide(s) to 'Errors for the board'", exact=False).wait_for(timeout=30_000)
        save_screenshot(page, "present_add_from_analysis")
    store = open_store(load_cohort(toml).database)
    deck = next(d for d in store.decks() if d.name == "Errors for the board")
    assert deck.image_ids == ["case_b"] and deck.model_version == "v001-abmil"
    assert [h.reviewer for h in store.deck_history(deck.id)] == ["dana", "dana"]
