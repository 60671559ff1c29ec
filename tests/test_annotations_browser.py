"""End to end in headless Chromium: a slide with a tumour outline in the viewer says how much attention is inside it
and exports the outline as QuPath GeoJSON (level-0 coordinates unchanged)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _browser import browser_page, running_app, save_screenshot  # noqa: E402
from _viewer_data import build_cohort  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_viewer_shows_attention_inside_and_exports_the_outline(tmp_path: Path) -> None:
    from core.cohort import load_cohort
    from core.review import open_cohort_store

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
