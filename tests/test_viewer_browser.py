"""End to end in headless Chromium: `streamlit run app.py`, open the viewer, tiles, overlay, gallery, slide choice."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright

from core.bench.viewer import ROOT, tiles_shown_js
from core.tiles import read_attention

sys.path.insert(0, str(Path(__file__).parent))
from _browser import CHROMIUM_ARGS, running_app, save_screenshot  # noqa: E402
from _viewer_data import SAMPLE_SVS, add_sample_attention, build_cohort, write_pyramid  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"


COHORT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_cohort")
    COHORT["root"] = root
    toml = build_cohort(root)
    add_sample_attention(root)
    write_pyramid(root / "slides" / "synth_nompp.tiff", 600, 400, mpp=None, seed=4)
    (root / "slides" / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    with running_app({"SLIDELENS_COHORT": str(toml)}, root / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1050})
        pg.tiles = []  # (status, url) of every response under /tiles/
        pg.on("response", lambda r: "/tiles/" in r.url and pg.tiles.append((r.status, r.url)))
        yield pg
        browser.close()


def state(page: Page) -> dict:
    return page.evaluate(f"() => Object.assign({{}}, document.querySelector('{ROOT}').dataset)")


def wait_tiles(page: Page, image_id: str, timeout: float = 30_000) -> None:
    page.wait_for_function(tiles_shown_js(image_id), timeout=timeout)


def settle(page: Page, seconds: float = 1.5) -> None:
    """Wait until the viewport stops changing (animations finish) and tiles are drawn."""
    page.wait_for_function("() => window.__slidelensViewer && window.__slidelensViewer.world.getItemAt(0)"
                           " && window.__slidelensViewer.world.getItemAt(0).getFullyLoaded()", timeout=30_000)
    page.wait_for_timeout(seconds * 1000)


def test_viewer_end_to_end(app_url, page):
    page.goto(f"{app_url}/viewer?slide={SAMPLE_SVS.stem}")
    wait_tiles(page, SAMPLE_SVS.stem)
    settle(page)
    ok = [u for s, u in page.tiles if s == 200]
    assert any(f"/tiles/{SAMPLE_SVS.stem}_files/" in u and u.split("?")[0].endswith(".jpeg") for u in ok)
    assert any("/tiles/attention/v001-abmil/" in u and ".png" in u for u in ok), "overlay tiles were not fetched"
    assert not [u for s, u in page.tiles if s >= 400], "a tile request failed"
    assert state(page)["overlay"] == "on"
    mag = page.inner_text(f"{ROOT} .slv-mag")
    assert mag.endswith("×") and float(mag[:-1]) > 0  # 20x objective times the current zoom
    assert "µm" in page.inner_text(f"{ROOT} .slv-scale") or "mm" in page.inner_text(f"{ROOT} .slv-scale")
    page.screenshot(path=str(ARTIFACTS / "viewer-overlay.png"))

    # the overlay is toggled in the browser, without a rerun of the page
    page.click(f"{ROOT} .slv-ov-toggle")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlay === 'off'")
    assert page.evaluate("() => window.__slidelensViewer.world.getItemAt(1).getOpacity()") == 0
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "viewer-no-overlay.png"))
    page.click(f"{ROOT} .slv-ov-toggle")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlay === 'on'")

    # colour map, rescaling and top fraction are the viewer's own: the overlay is redrawn without a rerun
    runs = state(page)["runs"]
    legend = page.eval_on_selector(f"{ROOT} .slv-legend-bar", "e => e.style.background")
    page.select_option(f"{ROOT} .slv-cmap", "viridis")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlayQuery.includes('cmap=viridis')")
    page.select_option(f"{ROOT} .slv-rescale", "rank")
    page.locator(f"{ROOT} .slv-top").fill("0.2")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlayQuery.includes('top=0.2')")
    page.wait_for_function("() => window.__slidelensViewer.world.getItemCount() === 2"
                           " && window.__slidelensViewer.world.getItemAt(1).getFullyLoaded()", timeout=20_000)
    restyled = [u for s, u in page.tiles if s == 200 and "cmap=viridis" in u and "scale=rank" in u and "top=0.2" in u]
    assert restyled, "no overlay tile was fetched in the new style"
    assert state(page)["runs"] == runs, "restyling the overlay reran the page"
    new_legend = page.eval_on_selector(f"{ROOT} .slv-legend-bar", "e => e.style.background")
    assert legend.startswith("linear-gradient") and new_legend.startswith("linear-gradient") and new_legend != legend
    page.screenshot(path=str(ARTIFACTS / "viewer-restyled.png"))

    # hovering over tissue shows the raw attention of the patch under the cursor
    box = page.locator(f"{ROOT} .slv-osd").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"() => document.querySelector('{ROOT} .slv-hover').textContent.includes('attention')",
                           timeout=10_000)

    # clicking the most attended patch in the gallery pans and zooms the viewer to it
    before = state(page)
    page.locator(".st-key-viewer_goto_Most_0 button").first.click()
    page.wait_for_function(f"() => +document.querySelector('{ROOT}').dataset.zoom > {float(before['zoom']) * 1.5}",
                           timeout=20_000)
    settle(page)
    after = state(page)
    help_text = page.locator(".st-key-viewer_goto_Most_0 button").first.inner_text()
    moved = abs(float(after["centerX"]) - float(before["centerX"])) + abs(float(after["centerY"]) -
                                                                          float(before["centerY"]))
    assert moved > 50 and float(after["zoom"]) > float(before["zoom"]), (before, after, help_text)
    # ... and centres it on that patch
    att, coords, size, _ = read_attention(COHORT["root"] / "results" / "v001-abmil" / "attention"
                                          / f"{SAMPLE_SVS.stem}.h5")
    top = int(np.argmax(att[:, 0]))  # class 0 is the default class of the selector
    assert abs(float(after["centerX"]) - (coords[top, 0] + size / 2)) < 2
    assert abs(float(after["centerY"]) - (coords[top, 1] + size / 2)) < 2
    page.screenshot(path=str(ARTIFACTS / "viewer-top-patch.png"))
    page.wait_for_selector("text=View centre", timeout=10_000)  # the viewport came back to Python

    # choosing another slide: the URL follows and the first tiles arrive quickly
    page.goto(f"{app_url}/viewer?slide={SAMPLE_SVS.stem}")
    wait_tiles(page, SAMPLE_SVS.stem)
    settle(page, 1.0)
    save_screenshot(page, "viewer", doc=True)
    page.locator(".st-key-viewer_slide").click()
    option = page.get_by_role("option", name="synth_odd")
    option.wait_for()
    t0 = time.perf_counter()  # from the click that chooses the slide
    option.click()
    wait_tiles(page, "synth_odd")
    elapsed = time.perf_counter() - t0
    print(f"\nnew slide -> first tiles on screen: {elapsed * 1000:.0f} ms "
          f"(in the component: {state(page)['firstTileMs']} ms)")
    page.wait_for_function("() => location.search.includes('slide=synth_odd')", timeout=10_000)


def test_slide_without_mpp_without_attention_and_broken(app_url, page):
    page.goto(f"{app_url}/viewer?slide=synth_nompp")
    wait_tiles(page, "synth_nompp")
    settle(page, 0.5)
    assert page.is_visible(f"{ROOT} .slv-note") and "scale unknown" in page.inner_text(f"{ROOT} .slv-note")
    assert not page.is_visible(f"{ROOT} .slv-scale")
    assert page.locator("text=No trained model yet").count() == 1  # viewer only, with the way to get attention
    page.screenshot(path=str(ARTIFACTS / "viewer-no-mpp.png"))

    page.goto(f"{app_url}/viewer?slide=broken")
    page.wait_for_selector("[data-testid=stAlertContentError]", timeout=20_000)
    assert "broken.svs" in page.inner_text("[data-testid=stAlertContentError]")
    assert page.locator("text=Traceback").count() == 0
    page.screenshot(path=str(ARTIFACTS / "viewer-broken.png"))
    page.locator(".st-key-viewer_slide").click()  # the rest of the page still works
    page.get_by_role("option", name="synth_a").click()
    wait_tiles(page, "synth_a")
