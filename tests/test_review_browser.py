"""End to end in headless Chromium on the review page: relabel and reload, user text shown as text with no request
leaving the machine, keyboard actions that save only changes and can be undone, and the remembered reviewer name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
from _browser import CHROMIUM_ARGS, choose_option, running_app, save_screenshot
from _review_data import make_review_cohort

from core.cohort.cohort_file import load_cohort
from core.review.queue import open_cohort_store

pytestmark = pytest.mark.browser
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rv_browser")
    toml = make_review_cohort(tmp / "cohort")
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp / "streamlit.log") as url:
        yield url, toml


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1500, "height": 1400})
        finally:
            browser.close()


def _open(page, url: str, slide: str, name: str | None = "ann") -> None:  # noqa: ANN001 - a playwright Page
    from playwright.sync_api import expect

    page.goto(f"{url}/review?slide={slide}", wait_until="domcontentloaded")
    box = page.locator(".st-key-reviewer input")
    expect(box).to_be_visible(timeout=60_000)
    expect(page.locator(f".st-key-rv_{slide}_reason input")).to_be_visible(timeout=60_000)
    if name is not None:
        box.fill(name)
        box.press("Enter")
        expect(page.get_by_text("Enter your name above")).to_have_count(0, timeout=30_000)
    _idle(page)


def _idle(page) -> None:  # noqa: ANN001 - a playwright Page
    """Wait until no script run is in flight (keys pressed during a rerun can be lost on a loaded machine)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(500)  # the name's rerun (and the stored name's echo) may start just after the Enter
    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=60_000)


def _store(toml: Path):  # noqa: ANN202 - a core.review.store.Store
    return open_cohort_store(load_cohort(toml), sync=False)


def _heading(page, slide: str):  # noqa: ANN001, ANN202 - the panel's title for that slide
    return page.get_by_role("heading", level=4).filter(has_text=slide)


def test_relabel_reload_shows_label_and_audit_row(server: tuple[str, Path], page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, toml = server
    _open(page, url, "s01")
    choose_option(page, ".st-key-rv_s01_1_new_label", "tumor")
    reason = page.locator(".st-key-rv_s01_reason input")
    reason.fill("tumour cells throughout")
    reason.press("Enter")  # Enter saves the label chosen
    expect(page.get_by_text("s01: saved label = 'tumor'")).to_be_visible(timeout=30_000)
    # a reload is a new session: the label and its audit row come from the database
    page.goto(f"{url}/review?slide=s01", wait_until="domcontentloaded")
    metric = page.locator("[data-testid='stMetricValue']").first
    expect(metric).to_have_text("tumor", timeout=60_000)
    table = page.locator("[data-testid='stTable']").first
    expect(table).to_contain_text("ann", timeout=30_000)
    expect(table).to_contain_text("tumour cells throughout")
    expect(table).to_contain_text("v001-abmil")
    page.set_viewport_size({"width": 1500, "height": 1700})  # the whole panel, history included
    expect(page.locator("[data-testid='stPlotlyChart']").first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(1500)  # let the thumbnail and the chart paint
    save_screenshot(page, "review", doc=True)
    edits = [r for r in _store(toml).history("s01") if r.reason != "import"]
    assert [(r.new_value, r.reviewer) for r in edits] == [("tumor", "ann")]


def test_markdown_in_a_note_is_shown_as_text_and_nothing_is_fetched_outside(server: tuple[str, Path],
                                                                             page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, _toml = server
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    _open(page, url, "s05", name="**eve** ![e](http://example.com/e.png)")
    note = "**bold** [x](http://example.com) ![i](http://example.com/i.png)"
    page.locator(".st-key-rv_s05_note textarea").fill(note)
    page.get_by_role("button", name="Save note").click()
    alert = page.locator("[data-testid='stAlertContentSuccess']").first
    expect(alert).to_contain_text("s05: saved note = '**bold** [x](http://", timeout=30_000)
    shown = alert.inner_text().replace("\u2060", "")  # ui.safe's invisible word joiners that stop autolinks
    assert f"s05: saved note = '{note}'" in shown
    history = page.locator("[data-testid='stTable']").first
    expect(history).to_contain_text("**eve** ![e](http://")
    assert "**eve** ![e](http://example.com/e.png)" in history.inner_text().replace("\u2060", "")
    for where in (alert, history, page.locator("[data-testid='stText']").filter(has_text="Note:")):
        assert where.locator("strong, img, a").count() == 0, where.first.inner_html()
    page.wait_for_timeout(1500)  # anything the page would load from the text has been asked for by now
    outside = sorted({u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
                      and urlparse(u).hostname not in LOCAL_HOSTS})
    assert outside == [], outside


def test_keyboard_saves_only_changes_undoes_and_keeps_typed_text(server: tuple[str, Path],
                                                                page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, toml = server
    _open(page, url, "s03")
    reason = page.locator(".st-key-rv_s03_reason input")
    reason.press("Enter")  # an empty reason and the label as it is: nothing to save
    expect(page.get_by_text("s03: nothing changed (label is already 'tumor')")).to_be_visible(timeout=30_000)
    store = _store(toml)
    assert store.history("s03")[-1].reason == "import" and store.state("s03").updated_by == "import"
    expect(_heading(page, "s03")).to_be_visible()
    # relabel with the keyboard, then Alt+Z puts the old label back: both rows stay in the audit log
    choose_option(page, ".st-key-rv_s03_1_new_label", "normal")
    reason.fill("glands look benign")
    reason.press("Enter")
    expect(page.get_by_text("s03: saved label = 'normal'")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Undo")).to_be_visible()
    page.keyboard.press("Alt+z")
    expect(page.get_by_text("s03: undone (label back to 'tumor'")).to_be_visible(timeout=30_000)
    expect(_heading(page, "s03")).to_be_visible()
    expect(page.locator("[data-testid='stMetricValue']").first).to_have_text("tumor")
    expect(page.locator("[data-testid='stTable']").first).to_contain_text("undo of #")
    rows = [r for r in _store(toml).history("s03") if r.reason != "import"]
    assert [(r.new_value, r.undoes) for r in rows] == [("normal", None), ("tumor", rows[0].id)]
    assert _store(toml).state("s03").updated_by == "import"  # the undone relabel no longer counts as a review
    # Alt+N while typing a reason moves on, and the text is still there on coming back
    reason = page.locator(".st-key-rv_s03_reason input")
    reason.click()
    reason.press_sequentially("half a thought")  # typed, not committed: no Enter, no blur
    page.keyboard.press("Alt+n")
    expect(page.locator(".st-key-rv_s03_reason input")).to_have_count(0, timeout=30_000)
    choose_option(page, ".st-key-rv_slide", "s03")
    expect(page.locator(".st-key-rv_s03_reason input")).to_have_value("half a thought", timeout=30_000)
    assert len([r for r in _store(toml).history("s03") if r.reason != "import"]) == 2


def test_reviewer_name_survives_a_reload(server: tuple[str, Path], page) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, _toml = server
    _open(page, url, "s07", name="Dr. Who")
    page.reload(wait_until="domcontentloaded")
    expect(page.locator(".st-key-reviewer input")).to_have_value("Dr. Who", timeout=60_000)
    expect(page.get_by_text("Enter your name above")).to_have_count(0, timeout=30_000)
    box = page.locator(".st-key-reviewer input")
    box.fill("")
    box.press("Enter")  # a cleared name is forgotten by the browser too
    expect(page.get_by_text("Enter your name above")).to_be_visible(timeout=30_000)
    page.reload(wait_until="domcontentloaded")
    expect(page.locator(".st-key-rv_s07_reason input")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(2000)
    expect(page.locator(".st-key-reviewer input")).to_have_value("")
