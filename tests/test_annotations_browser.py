"""End to end in headless Chromium: a slide with a tumour outline in the viewer says how much attention is inside it
and exports the outline as QuPath GeoJSON (level-0 coordinates unchanged); a reviewer draws polygons with
Annotorious at two zoom levels, finds them after a reload, and the exported vertices land on the tissue clicked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _browser import browser_page, running_app, save_screenshot  # noqa: E402
from _viewer_data import build_cohort  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_viewer_shows_attention_inside_and_exports_the_outline(tmp_path: Path) -> None:
    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    toml = build_cohort(tmp_path / "c", with_svs=False)
    outline = {"type": "Polygon", "coordinates": [[[100, 100], [480, 120], [460, 600], [90, 560], [100, 100]]]}
    open_cohort_store(load_cohort(toml)).add_annotation("synth_a", outline, "Tumour", "ann", note="<b>left lobe</b>")
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp_path / "streamlit.log") as url, browser_page() as page:
        page.goto(f"{url}/viewer?slide=synth_a", wait_until="domcontentloaded")
        said = page.get_by_text("of the model's attention is inside your tumour outline")
        said.wait_for(timeout=90_000)
        assert "%" in said.inner_text()
        page.get_by_text("Annotations (1)").wait_for(timeout=30_000)  # open: the slide has annotations
        export = page.get_by_text("Export GeoJSON (QuPath)")
        export.wait_for(timeout=30_000)
        said.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(1500)
        save_screenshot(page, "viewer-annotations")
        with page.expect_download(timeout=30_000) as dl:
            export.dispatch_event("click")
        doc = json.loads(Path(dl.value.path()).read_text())
    (feat,) = doc["features"]
    assert feat["geometry"] == outline
    assert feat["properties"]["classification"]["name"] == "Tumour"
    assert feat["properties"]["note"] == "<b>left lobe</b>"


# --- drawing ------------------------------------------------------------------------------------------------
TO_SCREEN = """([x, y]) => {  // level-0 pixel -> page pixel, through the slide's own tiled image
  const v = window.__slidelensViewer, p = v.world.getItemAt(0).imageToViewerElementCoordinates(
    new OpenSeadragon.Point(x, y));
  const r = v.canvas.getBoundingClientRect();  // OSD's element coordinates: inside the border
  return [r.left + p.x, r.top + p.y];
}"""


def _level0(toml: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(toml.parent / "slides" / "synth_a.tiff", level=0)


def _tissue_targets(img: np.ndarray, box: tuple[int, int, int, int], n: int) -> list[tuple[int, int]]:
    """``n`` level-0 points spread over ``box`` (x0, y0, x1, y1), each in the middle of a flat patch of tissue
    (not the 240 background), so a vertex one pixel off still sits on the same colour."""
    x0, y0, x1, y1 = box
    out: list[tuple[int, int]] = []
    for ang in np.linspace(0, 2 * np.pi, 4 * n, endpoint=False):
        cx, cy = (x0 + x1) / 2 + np.cos(ang) * (x1 - x0) / 2.6, (y0 + y1) / 2 + np.sin(ang) * (y1 - y0) / 2.6
        x, y = int(cx), int(cy)
        patch = img[y - 6:y + 7, x - 6:x + 7].reshape(-1, 3).astype(int)
        if patch.min() < 235 and np.ptp(patch, axis=0).max() <= 12:
            out.append((x, y))
    picked = out[:: max(1, len(out) // n)][:n]
    assert len(picked) == n, f"too few flat tissue points in {box}: {out}"
    return picked


def _draw_polygon(page, pts: list[tuple[int, int]]) -> list[tuple[float, float]]:
    page.locator(".slv-an-tools [data-tool='polygon']").click()
    # the whole viewer in the window: a click on a half-hidden canvas focuses it and scrolls the page mid-outline
    page.locator(".slv-osd").evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    screen = []
    for p in pts:
        sx, sy = page.evaluate(TO_SCREEN, list(p))  # asked each time: nothing may have moved the viewer
        screen.append((sx, sy))
        page.mouse.move(round(sx), round(sy), steps=3)
        page.mouse.click(round(sx), round(sy))
        page.wait_for_timeout(150)
    sx, sy = page.evaluate(TO_SCREEN, list(pts[0]))  # a click back on the first vertex closes the outline
    page.mouse.move(round(sx), round(sy), steps=3)
    page.mouse.click(round(sx), round(sy))
    return screen


def _wait_count(page, n: int) -> None:
    page.wait_for_function(f"() => document.querySelector('.slv-root')?.dataset.annoCount === '{n}'",
                           timeout=60_000)


def test_draw_polygons_at_two_zooms_reload_and_export_on_the_right_tissue(tmp_path: Path) -> None:
    toml = build_cohort(tmp_path / "c", with_svs=False)
    img = _level0(toml)
    first = _tissue_targets(img, (40, 30, 380, 340), 5)  # the large purple blob
    second = _tissue_targets(img, (300, 460, 560, 690), 4)  # the grey-mauve one
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp_path / "streamlit.log") as url, browser_page() as page:
        page.goto(f"{url}/viewer?slide=synth_a", wait_until="domcontentloaded")
        page.wait_for_function("() => document.querySelector('.slv-root')?.dataset.annoKey !== undefined",
                               timeout=90_000)
        name = page.get_by_role("textbox", name="Your name (required to edit)")
        name.fill("Dr Draw")
        name.press("Enter")
        poly = page.locator(".slv-an-tools [data-tool='polygon']")
        page.wait_for_function("() => !document.querySelector(\".slv-an-tools [data-tool='polygon']\").disabled",
                               timeout=60_000)
        page.locator(".slv-ov-toggle").uncheck()  # the tissue itself under the pointer
        page.wait_for_timeout(800)
        zoom1 = float(page.locator(".slv-root").get_attribute("data-zoom"))
        _draw_polygon(page, first)
        _wait_count(page, 1)
        # the second outline at a deeper zoom, centred on its own tissue
        page.evaluate("""([x, y]) => { const v = window.__slidelensViewer, it = v.world.getItemAt(0);
            v.viewport.zoomTo(it.imageToViewportZoom(2.5), null, true);
            v.viewport.panTo(it.imageToViewportCoordinates(x, y), true); }""",
                      [float(np.mean([p[0] for p in second])), float(np.mean([p[1] for p in second]))])
        page.wait_for_timeout(1500)
        zoom2 = float(page.locator(".slv-root").get_attribute("data-zoom"))
        assert zoom2 > 2 * zoom1
        poly.click()
        _draw_polygon(page, second)
        _wait_count(page, 2)
        page.locator(".slv-an-tools [data-tool='select']").click()
        page.evaluate("() => window.__slidelensViewer.viewport.goHome(true)")
        page.wait_for_timeout(1500)
        save_screenshot(page, "viewer-drawn-polygons")
        page.reload(wait_until="domcontentloaded")
        _wait_count(page, 2)  # stored: found again after a reload
        page.wait_for_timeout(1500)
        save_screenshot(page, "viewer-drawn-polygons-reloaded")
        export = page.get_by_text("Export GeoJSON (QuPath)")
        export.wait_for(timeout=30_000)
        with page.expect_download(timeout=30_000) as dl:
            export.dispatch_event("click")
        doc = json.loads(Path(dl.value.path()).read_text())
    feats = doc["features"]
    assert [f["properties"]["classification"]["name"] for f in feats] == ["Tumour", "Tumour"]
    for feat, targets in zip(feats, (first, second), strict=True):
        ring = np.asarray(feat["geometry"]["coordinates"][0])
        assert feat["geometry"]["type"] == "Polygon" and len(ring) == len(targets) + 1
        assert np.abs(ring[:-1] - np.asarray(targets)).max() <= 1.0, (ring, targets)  # within a pixel
        for x, y in ring[:-1]:  # and on the same tissue as the target: the slide's colour there is the target's
            tx, ty = targets[int(np.argmin(np.hypot(*(np.asarray(targets) - (x, y)).T)))]
            assert np.abs(img[int(round(y)), int(round(x))].astype(int) - img[ty, tx]).max() <= 12


def _outline_pixels(page, x0: float, y0: float, x1: float, y1: float, rgb: tuple[int, int, int]) -> int:
    """How many screen pixels inside the level-0 box (x0, y0)-(x1, y1) have the colour ``rgb`` (an outline)."""
    import io

    from PIL import Image

    (ax, ay), (bx, by) = page.evaluate(TO_SCREEN, [x0, y0]), page.evaluate(TO_SCREEN, [x1, y1])
    shot = page.screenshot(clip={"x": ax - 4, "y": ay - 4, "width": bx - ax + 8, "height": by - ay + 8})
    px = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(px - rgb).max(axis=1) <= 40).sum())


def _msg(page) -> str:
    return page.locator(".slv-an-msg").inner_text()


def _wait_key(page, part: str) -> None:
    page.wait_for_function(f"() => (document.querySelector('.slv-root')?.dataset.annoKey || '').includes('{part}')",
                           timeout=60_000)


def test_rectangle_freehand_point_edit_conflict_delete_undo_and_layers(tmp_path: Path) -> None:
    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    toml = build_cohort(tmp_path / "c", with_svs=False)
    at = lambda x, y: [round(v) for v in page.evaluate(TO_SCREEN, [x, y])]  # noqa: E731
    with running_app({"SLIDELENS_COHORT": str(toml)}, tmp_path / "streamlit.log") as url, browser_page() as page:
        page.goto(f"{url}/viewer?slide=synth_a", wait_until="domcontentloaded")
        page.wait_for_function("() => document.querySelector('.slv-root')?.dataset.annoKey !== undefined",
                               timeout=90_000)
        assert page.locator(".slv-an-tools [data-tool='rectangle']").is_disabled()  # no name yet: read-only
        name = page.get_by_role("textbox", name="Your name (required to edit)")
        name.fill("Dr Draw")
        name.press("Enter")
        page.wait_for_function("() => !document.querySelector(\".slv-an-tools [data-tool='rectangle']\").disabled",
                               timeout=60_000)
        page.locator(".slv-ov-toggle").uncheck()
        page.locator(".slv-osd").evaluate("e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(500)
        # a rectangle, dragged
        page.locator(".slv-an-tools [data-tool='rectangle']").click()
        page.mouse.move(*at(500, 100))
        page.mouse.down()
        page.mouse.move(*at(650, 250), steps=10)
        page.mouse.up()
        _wait_count(page, 1)
        # a freehand outline of another class, with a note that looks like HTML
        page.locator(".slv-an-class").select_option("Stroma")
        page.locator(".slv-an-note").fill("<b>edge</b>")
        page.locator(".slv-an-tools [data-tool='freehand']").click()
        ring = [(760 + 60 * np.cos(t), 150 + 60 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 25)]
        page.mouse.move(*at(*ring[0]))
        page.mouse.down()
        for x, y in ring[1:]:
            page.mouse.move(*at(x, y), steps=2)
        page.mouse.up()
        _wait_count(page, 2)
        # a point
        page.locator(".slv-an-note").fill("")
        page.locator(".slv-an-class").select_option("Other")
        page.locator(".slv-an-tools [data-tool='point']").click()
        page.mouse.click(*at(450, 620))  # not under the navigator (bottom right)
        _wait_count(page, 3)
        page.locator(".slv-an-tools [data-tool='select']").click()
        page.wait_for_timeout(800)
        save_screenshot(page, "viewer-annotation-tools", doc=True)
        assert _outline_pixels(page, 500, 100, 650, 250, (200, 0, 0)) > 100  # the rectangle, Tumour red
        # select the rectangle and change its class: an audited edit
        page.mouse.click(*at(575, 175))
        page.wait_for_function("() => document.querySelector('.slv-root').dataset.annoSelected === '1'",
                               timeout=30_000)
        assert page.locator(".slv-an-class").input_value() == "Tumour"
        # drag its top-left vertex, click off it: the new shape is saved (an audited edit)
        page.mouse.move(*at(500, 100))
        page.mouse.down()
        page.mouse.move(*at(480, 80), steps=8)
        page.mouse.up()
        page.mouse.click(*at(850, 450))
        _wait_key(page, "1:2")
        page.mouse.click(*at(575, 175))
        page.wait_for_function("() => document.querySelector('.slv-root').dataset.annoSelected === '1'",
                               timeout=30_000)
        page.locator(".slv-an-class").select_option("Necrosis")
        _wait_key(page, "1:3")
        # another reviewer changes it first: this browser's edit (based on version 3) is refused, theirs shown
        store = open_cohort_store(load_cohort(toml))
        store.edit_annotation(1, {"cls": "Other"}, "bob", based_on_version=3)
        page.locator(".slv-an-note").fill("mine")
        page.locator(".slv-an-note").press("Enter")
        page.wait_for_function("() => document.querySelector('.slv-an-msg').dataset.kind === 'error'",
                               timeout=60_000)
        assert "bob edited annotation #1 (Other)" in _msg(page)
        page.get_by_text("Annotation not saved: annotation #1 was changed").wait_for(timeout=30_000)
        _wait_key(page, "1:4")  # the layer now shows bob's version, in his class's colour (Other: yellow)
        page.wait_for_timeout(800)
        assert _outline_pixels(page, 500, 100, 650, 250, (255, 200, 0)) > 100
        assert _outline_pixels(page, 500, 100, 650, 250, (200, 0, 0)) < 20  # no longer Tumour red
        save_screenshot(page, "viewer-annotation-conflict")
        # delete the (refreshed) selection, then undo the deletion
        page.locator(".slv-an-delete").click()
        _wait_count(page, 2)
        page.locator(".slv-an-undo").click()
        _wait_count(page, 3)
        # the layer hides apart from the overlay, or together with it
        page.locator(".slv-an-toggle").uncheck()
        assert page.locator(".slv-root").get_attribute("data-annotations") == "off"
        assert not page.locator(".slv-an-point").first.is_visible()
        page.locator(".slv-an-toggle").check()
        page.locator(".slv-an-link").check()
        page.locator(".slv-ov-toggle").check()
        assert page.locator(".slv-root").get_attribute("data-annotations") == "on"
        page.locator(".slv-ov-toggle").uncheck()
        assert page.locator(".slv-root").get_attribute("data-annotations") == "off"
        assert page.locator(".slv-root").get_attribute("data-overlay") == "off"
    anns = {a.id: a for a in store.annotations("synth_a")}
    rect = np.asarray(anns[1 + 0].geometry["coordinates"][0]) if 1 in anns else None
    assert rect is None  # deleted; the undo restored it under a new id
    restored = anns[4]
    assert restored.cls == "Other" and restored.author == "Dr Draw"
    assert np.abs(np.asarray(restored.geometry["coordinates"][0]) - [[480, 80], [650, 100], [650, 250], [500, 250],
                                                                   [480, 80]]).max() <= 1.5  # the dragged vertex
    free = anns[2]
    assert (free.cls, free.note, free.geometry["type"]) == ("Stroma", "<b>edge</b>", "Polygon")
    assert len(free.geometry["coordinates"][0]) > 10
    assert np.abs(np.asarray(free.geometry["coordinates"][0])[:-1] - [760, 150]).max() <= 61
    assert anns[3].geometry["type"] == "Point" and np.abs(np.asarray(anns[3].geometry["coordinates"])
                                                          - [450, 620]).max() <= 1.0
    hist = [(h.action, h.reviewer, h.annotation_id) for h in store.annotation_history("synth_a")]
    assert hist == [("create", "Dr Draw", 1), ("create", "Dr Draw", 2), ("create", "Dr Draw", 3),
                    ("edit", "Dr Draw", 1), ("edit", "Dr Draw", 1), ("edit", "bob", 1), ("delete", "Dr Draw", 1), ("create", "Dr Draw", 4)]
