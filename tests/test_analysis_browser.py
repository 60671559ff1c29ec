"""End to end in headless Chromium: confusion-matrix cell on the analysis page -> slide list -> the viewer -> Back
to the same tab and cell (the view lives in the URL)."""

from __future__ import annotations

import re

import pytest
from _browser import CHROMIUM_ARGS, browser_page, running_app, save_screenshot
from test_analysis_page import build_cohort

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("an_browser")
    toml = build_cohort(tmp / "cohort")
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp / "streamlit.log") as url:
        yield url


def test_confusion_cell_to_viewer_and_back(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        page.goto(f"{server}/analysis", wait_until="domcontentloaded")
        expect(page.get_by_text("Balanced accuracy").first).to_be_visible(timeout=60_000)
        page.get_by_role("tab", name="Confusion").click()
        chart = page.locator(".st-key-an_cm_chart, [data-testid='stPlotlyChart']").first
        expect(chart).to_be_visible(timeout=30_000)
        # click the (true HGSC, predicted CC) cell: the third row, first column of the heatmap's cell markers
        points = chart.locator(".scatterlayer .point")
        expect(points).to_have_count(9, timeout=30_000)
        points.nth(2 * 3 + 0).click(force=True)
        links = page.locator("a.an-viewer-link")
        expect(links).to_have_count(1, timeout=30_000)
        expect(links.first).to_have_text("s08")
        expect(page).to_have_url(re.compile(r"tab=Confusion.*cell=HGSC(%2C|,)CC|cell=HGSC(%2C|,)CC.*tab=Confusion"),
                                 timeout=30_000)
        assert "model=v002-abmil" in page.url
        page.wait_for_timeout(1500)  # let thumbnails and the highlighted cell paint
        save_screenshot(page, "analysis", doc=True)
        links.first.click()
        page.wait_for_url("**/viewer?*", timeout=30_000)
        assert "slide=s08" in page.url and "model=v002-abmil" in page.url
        expect(page.get_by_text("s08").first).to_be_visible(timeout=60_000)
        # Back: the same tab and the same cell, not the first tab and the costliest error
        page.go_back(wait_until="domcontentloaded")
        page.wait_for_url("**/analysis?*", timeout=30_000)
        expect(page.get_by_role("tab", name="Confusion")).to_have_attribute("aria-selected", "true", timeout=60_000)
        expect(links).to_have_count(1, timeout=60_000)
        expect(links.first).to_have_text("s08")
        expect(page.get_by_text("1 slide(s): HGSC predicted as CC")).to_be_visible()
        expect(chart.locator(".scatterlayer .point")).to_have_count(9, timeout=30_000)
        page.wait_for_timeout(1500)
        save_screenshot(page, "analysis_after_back")
        browser.close()


def test_model_link_opens_that_version(server: str) -> None:
    from playwright.sync_api import expect

    with browser_page(1400, 950) as page:
        page.goto(f"{server}/analysis?model=v001-abmil&tab=Compare", wait_until="domcontentloaded")
        expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true", timeout=60_000)
        expect(page.get_by_text("2 slide(s) changed prediction").or_(page.get_by_text("slide(s) changed prediction"))
               .first).to_be_visible(timeout=60_000)
        expect(page.get_by_role("combobox", name="Model version")).to_have_value("v001-abmil")
        page.goto(f"{server}/analysis?model=v999-bogus", wait_until="domcontentloaded")
        expect(page.get_by_text("no model version 'v999-bogus' in this cohort")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Balanced accuracy")).to_have_count(0)
