"""Times each page of the app with AppTest (for ``python -m core bench scale --parts pages``; streamlit lives in ui/).

``python -m ui.bench_pages [--repeat N] [--slide ID] name=pages/x.py ...`` with ``SLIDELENS_COHORT`` set prints
``RESULT {name: {"cold_s", "warm_s": [...], "errors": [...]}}``: the first run of a fresh session, then N reruns.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def time_page(page: str, repeat: int, slide: str | None) -> dict:
    """Cold (first run of a session) and warm (reruns) seconds of one page, and any error it showed."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if slide:
        at.query_params["slide"] = slide  # the viewer and review pages open a slide as a shared link would
    if not page.endswith("home.py"):
        at.switch_page(page)
    t = time.perf_counter()
    at.run()
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        at.run()
        warm.append(round(time.perf_counter() - t, 3))
    errors = [str(e.value)[:200] for e in at.exception] + [str(e.value)[:200] for e in at.error]
    return {"cold_s": round(cold, 3), "warm_s": warm, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slide", default=None)
    ap.add_argument("pages", nargs="+", help="name=pages/x.py")
    args = ap.parse_args()
    out = {}
    for item in args.pages:
        name, _, page = item.partition("=")
        out[name] = time_page(page, args.repeat, args.slide)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
