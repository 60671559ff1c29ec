"""``bench firstrun``: a newcomer's first start, timed in headless Chromium from ``streamlit run app.py`` on an empty
demo folder (what ``make run`` does on a fresh clone once its packages are installed).

Times, from starting the server: the home page on screen; a slide in the viewer with its attention overlay drawn
(target: at most 60 s); the complete default demo built in the background (target: at most 4 minutes); and the open
page picking up the final model version without a reload. Writes JSON with the stage durations, the patch throughput
and the machine's load average, since on a shared machine the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.bench._util import REPO, free_port, stop_app, wait_for_http, write_json

TARGET_ATTENTION_S = 60.0
TARGET_COMPLETE_S = 240.0
ROOT = ".slv-root"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("firstrun", help="a fresh first start in headless Chromium: seconds to a slide with "
                                        "attention and to the complete demo (JSON)")
    p.add_argument("--tiny", action="store_true", help="the tiny demo (what the tests build)")
    p.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds (default 1200)")
    p.add_argument("--keep", type=Path, default=None, help="build the demo here and keep it (default: a temp folder)")
    p.add_argument("--warm-cache", action="store_true",
                   help="reuse this machine's exported backbone graph (default: an empty cache, as on a fresh clone)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--features", action="store_true",
                   help="only the backbone's patches/s: eager PyTorch vs ONNX Runtime, interleaved, medians")
    p.add_argument("--repeat", type=int, default=5, help="--features: timed passes of each (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="--features: patches per batch (default 64)")
    p.add_argument("--reading", type=Path, default=None, metavar="COHORT",
                   help="--features: also extract this cohort's first WSIs end to end, patches read by 2 worker "
                        "processes against in this process (what a machine of <= 2 cores now does), interleaved")
    p.add_argument("--json", dest="out", help="also write the result here")
    p.set_defaults(func=run)


def features_speed(repeat: int = 5, batch_size: int = 64) -> dict[str, Any]:
    """Patches/s of the default backbone, eager PyTorch ("before") against what extraction uses now ("after"),
    measured alternately on the same batch of 256 px patches, with the largest difference of their features."""
    import statistics

    import numpy as np
    import torch

    from core.model.backbones import create_backbone, embed

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8))
    before, after = create_backbone(device="cpu", runtime="torch"), create_backbone(device="cpu")
    t = time.perf_counter()
    ref, out = embed(before, x), embed(after, x)  # warm-up (the first call of ONNX Runtime exports or loads the graph)
    warm = time.perf_counter() - t
    speed: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeat):
        for name, bb in (("before", before), ("after", after)):
            t = time.perf_counter()
            embed(bb, x)
            speed[name].append(batch_size / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in speed.items()}
    return {"threads": torch.get_num_threads(), "batch_size": batch_size, "repeat": repeat,
            "before": {"runtime": before.runtime, "patches_per_s_median": round(med["before"], 2),
                       "runs": [round(v, 2) for v in speed["before"]]},
            "after": {"runtime": after.runtime, "patches_per_s_median": round(med["after"], 2),
                      "runs": [round(v, 2) for v in speed["after"]]},
            "speedup": round(med["after"] / med["before"], 2),
            "max_abs_feature_difference": float((out - ref).abs().max()), "warmup_s": round(warm, 1),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def reading_speed(cohort_path: Path, repeat: int = 2, n_slides: int = 4) -> dict[str, Any]:
    """End-to-end patches/s of extraction (tiling, reading, backbone, writing) on ``n_slides`` WSIs of a cohort with
    patches read by two DataLoader workers against in-process, alternately, into a scratch folder; medians."""
    from core.bench.cohorts import extraction_speed
    from core.cohort.cohort_file import load_cohort
    from core.model.backbones import create_backbone

    cohort = load_cohort(cohort_path / "cohort.toml" if cohort_path.is_dir() else cohort_path)
    variants = {"two reading workers": {"num_workers": 2}, "in-process": {"num_workers": 0}}
    ids, med = extraction_speed(cohort, create_backbone(device="cpu"), variants, n_slides, repeat)
    return {"slides": ids, "repeat": repeat, "cpus": os.cpu_count(),
            "patches_per_s": {k: round(v, 2) for k, v in med.items()},
            "ratio_in_process": round(med["in-process"] / med["two reading workers"], 2),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def attention_shown_js() -> str:
    """A JavaScript predicate: the viewer shows a slide, has drawn its tiles and has its attention overlay on, with
    overlay tiles drawn (the overlay is the second item of the OpenSeadragon world)."""
    return (f"() => {{ const r = document.querySelector('{ROOT}'); const v = window.__slidelensViewer;"
            " return !!(r && r.dataset.imageId && +r.dataset.tilesLoaded > 0 && r.dataset.overlay === 'on'"
            " && v && v.world.getItemCount() > 1 && v.world.getItemAt(1).getFullyLoaded()); }")


def shown_image_id(page: Any) -> str:
    return str(page.evaluate(f"() => document.querySelector('{ROOT}').dataset.imageId"))


def open_viewer_with_attention(page: Any, url: str, timeout_ms: float) -> str:
    """Go to the viewer through the sidebar (no page reload) and wait for a slide with its attention overlay;
    returns the slide id shown."""
    page.get_by_role("link", name="Viewer").first.click()
    page.wait_for_function(attention_shown_js(), timeout=timeout_ms)
    return shown_image_id(page)


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import Error as BrowserError
    from playwright.sync_api import sync_playwright

    from core.bench.viewer import CHROMIUM_ARGS
    from core.demo.firstrun import demo_pending, is_running, read_status

    if args.features:
        res = features_speed(args.repeat, args.batch_size)
        if args.reading is not None:
            res["reading"] = reading_speed(args.reading)
        write_json({"bench": "firstrun --features", **res}, args.out)
        return 0
    tmp = None
    if args.keep is None:
        tmp = Path(tempfile.mkdtemp(prefix="slidelens-firstrun-"))
        demo = tmp / "demo"
    else:
        demo = args.keep
        if demo.exists() and any(demo.iterdir()):
            raise SystemExit(f"{demo}: not empty; the benchmark starts from an empty demo folder")
    env = {**os.environ, "SLIDELENS_DEMO_DIR": str(demo), "SLIDELENS_COHORT": "",
           "SLIDELENS_DEMO_TINY": "1" if args.tiny else "0"}
    cache = None
    if not args.warm_cache:  # a newcomer has no exported ONNX graph yet: the first run exports it
        cache = Path(tempfile.mkdtemp(prefix="slidelens-firstrun-cache-"))
        env["SLIDELENS_CACHE"] = str(cache)
    port = free_port()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    shown = final_seen = None
    deadline_ms = args.timeout * 1000

    def left_ms() -> float:
        return max(1000.0, deadline_ms - (time.perf_counter() - t0) * 1000)

    error = None
    try:
        wait_for_http(port, "/_stcore/health", timeout=120)
        marks["server_up_s"] = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_text("Needs attention").wait_for(timeout=left_ms())
            marks["home_s"] = time.perf_counter() - t0
            shown = open_viewer_with_attention(page, f"http://127.0.0.1:{port}", left_ms())
            marks["attention_s"] = time.perf_counter() - t0
            status = read_status(demo)
            marks["background_running_at_attention"] = float(bool(status and not status.done))
            while time.perf_counter() - t0 < args.timeout and demo_pending(demo):
                status = read_status(demo)
                if status is not None and status.error:
                    raise SystemExit(f"first run failed: {status.error}")
                time.sleep(1.0)
            if demo_pending(demo):
                raise TimeoutError(f"the demo was not complete after {args.timeout:.0f} s")
            marks["complete_s"] = time.perf_counter() - t0
            final_seen = _final_version(demo)
            if final_seen:  # the open page picks the final model up without a reload (the banner reruns it)
                page.get_by_role("link", name="Home").first.click()
                page.get_by_text(final_seen).first.wait_for(timeout=min(left_ms(), 60_000))
                marks["final_in_page_s"] = time.perf_counter() - t0
            browser.close()
    except (TimeoutError, RuntimeError, BrowserError) as exc:  # a wait ran out: report what was reached
        error = " ".join(str(exc).split())[:300]
    finally:
        stop_app(proc)
        status = read_status(demo)
        if is_running(status):  # the builder the app started (its own session): stop it before its folder goes
            os.kill(status.pid, signal.SIGTERM)
            time.sleep(2)
        for folder in (tmp, cache):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    stages = {s.name: round(s.finished - s.started, 1) for s in (status.stages if status else [])
              if s.started and s.finished}
    result: dict[str, Any] = {
        "bench": "firstrun", "tiny": args.tiny, "onnx_cache": "warm" if args.warm_cache else "empty",
        "slide_with_attention": shown, "final_version": final_seen,
        "error": error,
        **{k: round(v, 1) for k, v in marks.items()},
        "targets_s": {"attention": TARGET_ATTENTION_S, "complete": TARGET_COMPLETE_S},
        "met": {"attention": marks.get("attention_s", 1e9) <= TARGET_ATTENTION_S,
                "complete": marks.get("complete_s", 1e9) <= TARGET_COMPLETE_S},
        "stage_seconds": stages, "runtime": _runtime(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "wall-clock seconds from starting the server; on a shared machine (load average above the CPU "
                "count) these figures are pessimistic",
    }
    write_json(result, args.out)
    return 0


def _final_version(demo: Path) -> str | None:
    from core.model.versions import default_version

    try:
        from core.cohort.cohort_file import load_cohort

        cohort = load_cohort(demo / "cohort.toml")
    except Exception:  # noqa: BLE001
        return None
    return default_version(cohort.models, cohort.results)


def _runtime() -> str:
    from core.model.onnx_backbone import onnx_available

    return "onnxruntime" if onnx_available() and os.environ.get("SLIDELENS_RUNTIME") != "torch" else "torch"
