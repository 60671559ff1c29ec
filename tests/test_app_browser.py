"""End to end in headless Chromium: the app makes no request to outside hosts, and a bad cohort path typed under
"Open another cohort" gives one message while every page keeps working on the current cohort."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from _browser import CHROMIUM_ARGS, running_app
from _review_data import make_review_cohort

pytestmark = pytest.mark.browser
LOCAL = {"127.0.0.1", "localhost", "[::1]", "::1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("app_browser")
    toml = make_review_cohort(tmp / "study")
    toml.write_text(toml.read_text().replace('name = "review-test"', 'name = "first-study"'))
    with running_app({"SLIDELENS_COHORT": str(toml), "SLIDELENS_DEMO_DIR": str(tmp / "demo")},
                     tmp / "streamlit.log") as url:
        yield url


def test_no_outside_requests_and_a_bad_cohort_path_is_one_message(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        page.on("request", lambda r: outside.append(r.url)
                if urlparse(r.url).scheme in ("http", "https", "ws", "wss") and urlparse(r.url).hostname not in LOCAL
                else None)
        # block anything outside, so a missed case fails here instead of leaking on a real network
        page.route(lambda u: urlparse(u).hostname not in LOCAL and urlparse(u).scheme.startswith("http"),
                   lambda route: route.abort())
        for path in ("", "viewer?slide=s01", "analysis", "review?slide=s01"):
            page.goto(f"{server}/{path}", wait_until="domcontentloaded")
            expect(page.locator("h1").first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)
        icon = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
        assert icon and all(urlparse(h).hostname in LOCAL or h.startswith("data:") for h in icon), icon
        page.goto(f"{server}/", wait_until="domcontentloaded")
        expect(page.locator("h1").first).to_contain_text("first-study", timeout=60_000)
        page.get_by_text("Open another cohort").click()
        box = page.locator(".st-key-cohort_path_input input")
        box.fill("/etc/passwd")
        page.get_by_test_id("stBaseButton-secondaryFormSubmit").click()
        alert = page.locator("[data-testid='stSidebar'] [data-testid='stAlertContentError']")
        expect(alert).to_have_count(1, timeout=30_000)
        expect(alert).to_contain_text("/etc/passwd: invalid TOML")
        assert "\n" not in alert.inner_text().strip()
        # the current cohort still works on every page, without a reload
        for name in ("Error analysis", "Review queue", "Viewer", "Home"):
            page.locator("[data-testid='stSidebarNav']").get_by_text(name, exact=True).click()
            expect(page.locator("h1").first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(800)
            assert page.locator("[data-testid='stException']").count() == 0, name
        expect(page.locator("h1").first).to_contain_text("first-study")
        browser.close()
    assert outside == [], sorted(set(outside))[:5]
