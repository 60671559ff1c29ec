"""End to end in headless Chromium: relabel a slide on the review page, reload, see the new label and its audit row."""

from __future__ import annotations

from pathlib import Path

import pytest
from _browser import CHROMIUM_ARGS, running_app, save_screenshot
from _review_data import make_review_cohort

from core.cohort import load_cohort
from core.review import open_cohort_store

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rv_browser")
    toml = make_review_cohort(tmp / "cohort")
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp / "streamlit.log") as url:
        yield url, toml


def test_relabel_reload_shows_label_and_audit_row(server: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, toml = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        page.goto(f"{url}/review?slide=s01", wait_until="domcontentloaded")
        name = page.locator(".st-key-reviewer input")
        expect(name).to_be_visible(timeout=60_000)
        name.fill("ann")
        name.press("Enter")
        expect(page.get_by_text("Enter your name above")).to_have_count(0, timeout=30_000)
        page.locator(".st-key-rv_s01_1_new_label").click()
        page.get_by_role("option", name="tumor", exact=True).click()
        reason = page.locator(".st-key-rv_s01_1_reason input")
        reason.fill("tumour cells throughout")
        reason.press("Enter")  # the form submits on Enter
        expect(page.get_by_text("s01: saved label = 'tumor'")).to_be_visible(timeout=30_000)
        # a reload is a new session: the label and its audit row come from the database
        page.goto(f"{url}/review?slide=s01", wait_until="domcontentloaded")
        metric = page.locator("[data-testid='stMetricValue']").first
        expect(metric).to_have_text("tumor", timeout=60_000)
        table = page.locator("[data-testid='stTable']").first
        expect(table).to_contain_text("ann", timeout=30_000)
        expect(table).to_contain_text("tumour cells throughout")
        expect(table).to_contain_text("v001-abmil")
        name = page.locator(".st-key-reviewer input")
        name.fill("ann")
        name.press("Enter")
        page.set_viewport_size({"width": 1500, "height": 2000})  # the whole panel, history included
        page.wait_for_timeout(1500)  # let the thumbnail and the chart paint
        save_screenshot(page, "review", doc=True)
        browser.close()
    store = open_cohort_store(load_cohort(toml), sync=False)
    edits = [r for r in store.history("s01") if r.reason != "import"]
    assert [(r.new_value, r.reviewer) for r in edits] == [("tumor", "ann")]
