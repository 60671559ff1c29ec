"""First run end to end in the browser: a fresh checkout builds a tiny demo with progress, then a second start
reuses everything and opens the home page at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _browser import browser_page, running_app, save_screenshot

from core.firstrun import read_status

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
        # the build runs in its own process; the page polls it and opens the home page when it is done
        expect(page.get_by_text("Needs attention")).to_be_visible(timeout=480_000)
        expect(page.get_by_text("Model version")).to_be_visible()
        page.wait_for_timeout(1500)  # let the class chart paint
        save_screenshot(page, "home", doc=True, full_page=True)
    status = read_status(demo)
    assert status is not None and status.done and status.error is None
    assert [s.status for s in status.stages] == ["done"] * 5
    assert (demo / "cohort.toml").is_file() and list((demo / "models").glob("v001-*/model.json"))
    before = _snapshot(demo)

    t0 = time.time()
    with running_app(env, tmp_path / "second.log") as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Needs attention")).to_be_visible(timeout=60_000)
        assert page.get_by_text("Preparing the demo cohort").count() == 0
        elapsed = time.time() - t0
    print(f"second start to home page: {elapsed:.1f} s")
    assert _snapshot(demo) == before  # nothing rebuilt, nothing rewritten
    assert read_status(demo).updated == status.updated  # no new first run was started
