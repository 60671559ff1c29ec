"""End to end in headless Chromium: confusion-matrix cell on the analysis page -> slide list -> the viewer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_analysis_page import build_cohort

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "screenshots" / "analysis.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]

pytestmark = pytest.mark.browser


def _entry(tmp: Path) -> Path:
    """app.py once it navigates to the analysis page; until then a test-only entry over the two pages."""
    app = ROOT / "app.py"
    if app.is_file() and "pages/analysis.py" in app.read_text():
        return app
    entry = tmp / "entry.py"
    viewer = ROOT / "pages" / "viewer.py"
    if not viewer.is_file():  # a stand-in that shows the query string, so the link itself is still tested
        viewer = tmp / "viewer_stub.py"
        viewer.write_text("import streamlit as st\nst.write('viewer', dict(st.query_params))\n")
    # the viewer first, as in app.py (the first page is served at "/", so it must not be the analysis page)
    pages = [f'st.Page({str(viewer)!r}, title="Viewer", url_path="viewer")',
             f'st.Page({str(ROOT / "pages" / "analysis.py")!r}, title="Analysis", url_path="analysis")']
    entry.write_text("import streamlit as st\nst.set_page_config(layout='wide')\n"
                     f"st.navigation([{', '.join(pages)}]).run()\n")
    return entry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("an_browser")
    toml = build_cohort(tmp / "cohort")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLIDELENS_COHORT": str(toml), "PYTHONPATH": str(ROOT)}
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(_entry(tmp)), "--server.headless", "true",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"streamlit did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_confusion_cell_to_viewer(server: str) -> None:
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
        page.wait_for_timeout(1500)  # let thumbnails and the highlighted cell paint
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
        links.first.click()
        page.wait_for_url("**/viewer?*", timeout=30_000)
        assert "slide=s08" in page.url and "model=v002-abmil" in page.url
        expect(page.get_by_text("s08").first).to_be_visible(timeout=60_000)
        browser.close()
    assert SCREENSHOT.stat().st_size < 400_000
