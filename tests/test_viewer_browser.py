"""End to end in headless Chromium: `streamlit run app.py`, open the viewer, tiles, overlay, gallery, slide choice."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from core.bench.viewer import ROOT, choose_slide, tiles_shown_js
from core.viewer.tiles import read_attention

sys.path.insert(0, str(Path(__file__).parent))
from _browser import CHROMIUM_ARGS, running_app, save_screenshot  # noqa: E402
from _viewer_data import SAMPLE_SVS, add_sample_attention, build_cohort, write_pyramid  # noqa: E402

from core.review.viewer_data import gallery_patches, patch_tissue_fractions  # noqa: E402
from core.slides.slide import open_slide  # noqa: E402
from core.slides.tiling import tissue_mask  # noqa: E402

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
        # JavaScript errors: uncaught ones and console errors. Failed requests are checked apart (tiles) or are
        # Streamlit's own: its health probe under the page's path, and media files of a finished run that it
        # deletes while the browser still loads them ("Image source error").
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("console", lambda m: m.type == "error" and not m.text.startswith(
            ("Failed to load resource", "Client Error: Image source error")) and pg.errors.append(m.text))
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

    # the defaults show where the model looks: top 20% by rank, opacity following attention, patch blocks
    q = state(page)["overlayQuery"]
    assert all(p in q for p in ("cmap=inferno", "scale=rank", "top=0.2", "fade=1", "render=blocks")), q
    # colour map, rescaling, top fraction, fading and drawing are the viewer's own: redrawn without a rerun
    runs = state(page)["runs"]
    legend = page.eval_on_selector(f"{ROOT} .slv-legend-bar", "e => e.style.background")
    page.select_option(f"{ROOT} .slv-cmap", "viridis")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlayQuery.includes('cmap=viridis')")
    page.select_option(f"{ROOT} .slv-rescale", "percentile")
    page.select_option(f"{ROOT} .slv-render", "smooth")
    page.click(f"{ROOT} .slv-fade")
    page.locator(f"{ROOT} .slv-top").fill("0.5")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.overlayQuery.includes('top=0.5')")
    page.wait_for_function("() => window.__slidelensViewer.world.getItemCount() === 2"
                           " && window.__slidelensViewer.world.getItemAt(1).getFullyLoaded()", timeout=20_000)
    restyled = [u for s, u in page.tiles if s == 200 and all(
        p in u for p in ("cmap=viridis", "scale=percentile", "top=0.5", "fade=0", "render=smooth"))]
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
    # ... and centres it on that patch: the most attended one with tissue (class 0, the selector's default)
    att, coords, size, _ = read_attention(COHORT["root"] / "results" / "v001-abmil" / "attention"
                                          / f"{SAMPLE_SVS.stem}.h5")
    mask = tissue_mask(open_slide(SAMPLE_SVS))
    top = gallery_patches(att[:, 0], coords, size, 6, lambda c: patch_tissue_fractions(mask, c, size))[0][0]
    assert help_text.startswith(f"#{top.rank}")
    assert abs(float(after["centerX"]) - (top.x + size / 2)) < 2
    assert abs(float(after["centerY"]) - (top.y + size / 2)) < 2
    page.screenshot(path=str(ARTIFACTS / "viewer-top-patch.png"))
    page.wait_for_selector("text=View centre", timeout=10_000)  # the viewport came back to Python

    # choosing another slide: the URL follows and the first tiles arrive quickly
    page.goto(f"{app_url}/viewer?slide={SAMPLE_SVS.stem}")
    wait_tiles(page, SAMPLE_SVS.stem)
    settle(page, 1.0)
    page.wait_for_selector("text=Label (reviewed)", timeout=20_000)  # the facts beside the viewer
    page.wait_for_selector(".st-key-viewer_pick [data-testid='glide-cell-2-0']", state="attached", timeout=20_000)
    page.wait_for_timeout(1500)
    save_screenshot(page, "viewer", doc=True)
    t0 = choose_slide(page, "synth_odd")  # from the click that chooses the slide
    wait_tiles(page, "synth_odd")
    elapsed = time.perf_counter() - t0
    print(f"\nnew slide -> first tiles on screen: {elapsed * 1000:.0f} ms "
          f"(in the component: {state(page)['firstTileMs']} ms)")
    page.wait_for_function("() => location.search.includes('slide=synth_odd')", timeout=10_000)
    assert not page.errors, page.errors


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
    choose_slide(page, "synth_a")  # the rest of the page still works
    wait_tiles(page, "synth_a")


def test_full_page_keeps_the_toolbar_and_esc_leaves(app_url, page):
    """Issue 12: in full page the toolbar vanished, the scale bar was unreadable, Esc did nothing, a null 'style'
    error was thrown and the magnification read 4.7x instead of 2.6x afterwards."""
    page.errors.clear()
    page.goto(f"{app_url}/viewer?slide={SAMPLE_SVS.stem}")
    wait_tiles(page, SAMPLE_SVS.stem)
    settle(page, 1.0)
    true_mag = ("() => { const v = window.__slidelensViewer, it = v.world.getItemAt(0);"
                " return 20 * it.viewportToImageZoom(v.viewport.getZoom(true)); }")  # CMU-1: 20x objective
    mag_before = page.inner_text(f"{ROOT} .slv-mag")
    assert float(mag_before[:-1]) == pytest.approx(page.evaluate(true_mag), abs=0.051)
    page.click(f"{ROOT} .slv-full-btn")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.full === 'on'")
    settle(page, 1.0)
    win = page.viewport_size
    osd = page.locator(f"{ROOT} .slv-osd").bounding_box()
    assert osd["width"] > 0.9 * win["width"] and osd["height"] > 0.8 * win["height"], osd  # it fills the window
    bar = page.locator(f"{ROOT} .slv-bar").bounding_box()
    assert page.is_visible(f"{ROOT} .slv-cmap") and page.is_visible(f"{ROOT} .slv-top")  # the toolbar stays
    assert 0 <= bar["y"] < osd["y"] and bar["width"] > 0.9 * win["width"], bar
    scale = page.locator(f"{ROOT} .slv-scale")
    assert scale.is_visible() and scale.inner_text().strip().endswith(("µm", "mm"))
    looks = scale.evaluate("e => { const s = getComputedStyle(e); return [parseFloat(s.fontSize), s.color,"
                           " getComputedStyle(e.parentElement).position]; }")
    assert looks[0] >= 12 and looks[1] == "rgb(17, 17, 17)", looks  # legible: dark text, not tiny
    sb = scale.bounding_box()
    assert osd["x"] <= sb["x"] and sb["y"] + sb["height"] <= osd["y"] + osd["height"] + 1  # inside the viewer
    page.screenshot(path=str(ARTIFACTS / "viewer-full-page.png"))
    assert page.inner_text(f"{ROOT} .slv-mag") == mag_before  # the magnification holds in full page
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => document.querySelector('{ROOT}').dataset.full === 'off'", timeout=5_000)
    settle(page, 1.0)
    assert page.evaluate("() => document.fullscreenElement") is None
    assert page.locator(f"{ROOT} .slv-osd").bounding_box()["height"] == pytest.approx(600, abs=2)
    mag_after = page.inner_text(f"{ROOT} .slv-mag")
    assert mag_after == mag_before, (mag_before, mag_after)
    assert float(mag_after[:-1]) == pytest.approx(page.evaluate(true_mag), abs=0.051)
    assert not page.errors, page.errors  # e.g. "Cannot read properties of null (reading 'style')"


def test_unknown_slide_in_a_link_is_named_and_the_link_kept(app_url, page):
    bad = "<script>window.__pwned=1</script>"
    page.goto(f"{app_url}/viewer?slide={bad}")
    page.wait_for_selector("[data-testid=stAlertContentError]", timeout=30_000)
    page.wait_for_timeout(1500)
    assert f"No slide '{bad}' in cohort 'viewertest'" in page.inner_text("[data-testid=stAlertContentError]")
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => new URLSearchParams(location.search).get('slide')") == bad  # not rewritten
    assert page.locator(ROOT).count() == 0  # no other slide opened in its place
    choose_slide(page, "synth_a")  # the list is there to choose from
    wait_tiles(page, "synth_a")
    page.wait_for_function("() => new URLSearchParams(location.search).get('slide') === 'synth_a'")
