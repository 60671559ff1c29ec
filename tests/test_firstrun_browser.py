"""First run end to end in the browser: a fresh checkout builds a first handful of demo slides with progress, opens
on them (a slide with its attention in the viewer while the rest is still being built in the background), the open
page picks up the final model without a reload, then a second start reuses everything and opens the home page."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _browser import browser_page, running_app, save_screenshot

from core.bench.firstrun import open_viewer_with_attention
from core.demo.firstrun import STAGES, read_status
from core.demo.progressive import read_plan

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _snapshot(root: Path) -> dict[str, int]:
    """Modification times of everything the first run produced (the database aside: reads may touch it)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "slidelens.db" not in p.name and ".cache" not in p.parts}


def test_first_run_builds_demo_then_second_start_rebuilds_nothing(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    demo = tmp_path / "data" / "demo"
    env = {"SLIDELENS_DEMO_DIR": str(demo), "SLIDELENS_DEMO_TINY": "1", "SLIDELENS_COHORT": ""}
    with running_app(env, tmp_path / "first.log") as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Preparing the demo cohort")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Estimated time left")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Patch features —")).to_be_visible()
        save_screenshot(page, "firstrun_progress", doc=True)
        # the build runs in its own process; the page polls it and opens once the first handful is ready
        expect(page.get_by_text("Needs attention")).to_be_visible(timeout=480_000)
        status = read_status(demo)
        assert status is not None and status.ready and not status.done
        first = len(list((demo / "slides").iterdir()))
        assert first < len(read_plan(demo)["ids"])  # opened before the whole cohort was drawn
        # the viewer shows a slide with its attention overlay before the background build ends
        shown = open_viewer_with_attention(page, url, 120_000)
        assert not read_status(demo).done, "the background build ended before a slide with attention was shown"
        assert (demo / "results" / "v001-abmil" / "attention" / f"{shown}.h5").is_file()
        expect(page.get_by_text("Still building in the background")).to_be_visible(timeout=10_000)
        save_screenshot(page, "firstrun_viewer")
        # the rest arrives in the background; the open page picks up the final model without a reload
        deadline = time.time() + 600
        while not read_status(demo).done and time.time() < deadline:
            assert read_status(demo).error is None, read_status(demo).error
            time.sleep(2)
        page.get_by_role("link", name="Home").first.click()
        expect(page.get_by_text("v002-abmil").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Still building in the background")).to_have_count(0, timeout=30_000)
        page.wait_for_timeout(1500)  # let the class chart paint
        save_screenshot(page, "home", doc=True, full_page=True)
    status = read_status(demo)
    assert status is not None and status.done and status.error is None
    assert [s.status for s in status.stages] == ["done"] * len(STAGES)
    assert sorted(p.stem.split(".")[0] for p in (demo / "slides").iterdir()) == sorted(read_plan(demo)["ids"])
    assert (demo / "cohort.toml").is_file() and list((demo / "models").glob("v002-*/model.json"))
    before = _snapshot(demo)

    t0 = time.time()
    with running_app(env, tmp_path / "second.log") as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Needs attention")).to_be_visible(timeout=60_000)
        assert page.get_by_text("Preparing the demo cohort").count() == 0
        assert page.get_by_text("Still building in the background").count() == 0
        elapsed = time.time() - t0
    print(f"second start to home page: {elapsed:.1f} s")
    assert _snapshot(demo) == before  # nothing rebuilt, nothing rewritten
    assert read_status(demo).updated == status.updated  # no new first run was started
