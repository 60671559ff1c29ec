"""``bench viewer``: how long a newly chosen slide takes to show its first tiles, in a real browser.

Starts ``streamlit run app.py`` on the cohort, opens ``/viewer`` in headless Chromium (Debian's ``chromium``,
driven by Playwright) and chooses slides one after another from the slide list (searched for, then its row
clicked). For each choice it times, from the click on the slide's row to the first tile drawn by OpenSeadragon:
the whole wait the user sees, and the part inside the viewer component (from the new slide reaching it to its first
tile). Target: under 1 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from core.bench._util import free_port, percentiles, start_app, stop_app, wait_for_http, write_json
from core.cohort.cohort_file import default_cohort_path, load_cohort
from core.errors import InputError

TARGET_FIRST_TILES_S = 1.0
ROOT = ".slv-root"  # the viewer component's root element (ui/frontend/viewer)
PICK = ".st-key-viewer_pick"  # the viewer page's slide list (a dataframe with row selection)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viewer", help="a newly chosen slide's first tiles on screen, in headless Chromium (JSON)")
    p.add_argument("--cohort", help="cohort.toml (default: $SLIDELENS_COHORT or the demo cohort)")
    p.add_argument("--switches", type=int, default=10, help="slides chosen one after another (default 10)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                   help="the browser executable (default: chromium on PATH)")
    p.add_argument("--json", dest="out", help="also write the result here")
    p.set_defaults(func=run)


def tiles_shown_js(image_id: str) -> str:
    """A JavaScript predicate: the viewer shows ``image_id`` and has drawn at least one of its tiles."""
    return (f"() => {{ const r = document.querySelector('{ROOT}');"
            f" return r && r.dataset.imageId === '{image_id}' && +r.dataset.tilesLoaded > 0; }}")


def choose_slide(page: Any, image_id: str, timeout: float = 60_000) -> float:
    """Choose ``image_id`` in the viewer's slide list as a user does: type it in the search box, then click the
    first listed row once it is that slide. Returns ``time.perf_counter()`` at the click."""
    search = page.locator(".st-key-viewer_f_text input")
    search.fill(image_id)
    search.press("Enter")
    first = f"{PICK} [data-testid='glide-cell-2-0']"  # the slide column of the first row (accessible grid)
    page.wait_for_function(f"() => {{ const c = document.querySelector(\"{first}\");"
                           f" return c && c.innerText.trim() === {json.dumps(image_id)}; }}", timeout=timeout)
    box = page.locator(f"{PICK} [data-testid='stDataFrame']").bounding_box()
    t0 = time.perf_counter()
    page.mouse.click(box["x"] + 16, box["y"] + 58)  # the row marker of the first row (header ~36 px, rows 44 px)
    return t0


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright
    from tqdm import tqdm

    toml = Path(args.cohort) if args.cohort else default_cohort_path()
    if toml.is_dir():
        toml = toml / "cohort.toml"
    cohort = load_cohort(toml)
    ids = sorted(cohort.slide_paths)
    if len(ids) < 2:
        raise InputError(f"{toml}: the viewer benchmark needs at least two slides")
    if not Path(args.chromium).is_file():
        raise InputError(f"{args.chromium}: no Chromium here (apt-get install -y chromium, or pass --chromium)")
    order = [ids[(1 + i) % len(ids)] for i in range(args.switches)]
    port = free_port()
    proc = start_app(toml.resolve(), port)
    total: list[float] = []
    component: list[float] = []
    try:
        wait_for_http(port, "/_stcore/health")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/viewer?slide={ids[0]}")
            page.wait_for_function(tiles_shown_js(ids[0]), timeout=120_000)
            page.wait_for_timeout(1500)
            for image_id in tqdm(order, desc="bench viewer", disable=not sys.stderr.isatty()):
                t0 = choose_slide(page, image_id)
                page.wait_for_function(tiles_shown_js(image_id), timeout=60_000)
                total.append(time.perf_counter() - t0)
                component.append(float(page.evaluate(f"() => document.querySelector('{ROOT}').dataset.firstTileMs"))
                                 / 1000)
                page.wait_for_timeout(1000)  # let the page finish its rerun before the next choice
            browser.close()
    finally:
        stop_app(proc)
    total_s = percentiles(total)
    result = {
        "bench": "viewer", "cohort": str(toml), "switches": len(order),
        "click_to_first_tile": total_s,
        "in_component_to_first_tile": percentiles(component),
        "target_s": TARGET_FIRST_TILES_S,
        "met": total_s["p50_ms"] < TARGET_FIRST_TILES_S * 1000,
        "worst_met": total_s["max_ms"] < TARGET_FIRST_TILES_S * 1000,
    }
    write_json(result, args.out)
    return 0
