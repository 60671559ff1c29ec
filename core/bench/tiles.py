"""``bench tiles``: slide and overlay tile latency over HTTP from the running app, against raw OpenSlide.

Starts ``streamlit run app.py`` (or uvicorn on the bare tile routes) on a free port, fetches each Deep Zoom tile of
a slide once (cold, as a browser would; the most detailed levels first) over one keep-alive connection, and times,
in the same run, openslide's ``DeepZoomGenerator.get_tile`` plus JPEG encoding of the same tiles on a fresh handle.
Then the same for up to 60 tiles one and two levels coarser, and overlay tiles in two styles. Targets: slide tile
p50 within 1.3x of raw, overlay p95 < 30 ms. ``direct_read_levels`` lists the levels ``core.slides.tiff_direct`` serves."""

from __future__ import annotations

import argparse
import http.client
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.bench._util import REPO, free_port, percentiles, start_app, stop_app, wait_for_http, write_json
from core.cohort.cohort_file import Cohort, default_cohort_path, load_cohort
from core.errors import InputError

TARGET_RATIO = 1.3
TARGET_OVERLAY_P95_MS = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiles", help="tile and overlay latency over HTTP vs raw OpenSlide (JSON)")
    p.add_argument("--cohort", help="cohort.toml (default: $SLIDELENS_COHORT or the demo cohort)")
    p.add_argument("--slide", help="image id in the cohort, or a slide file (default: the largest slide)")
    p.add_argument("--version", help="model version whose attention to draw (default: any that has it)")
    p.add_argument("--tiles", type=int, default=200, help="at most this many distinct tiles (default 200)")
    p.add_argument("--server", choices=("streamlit", "uvicorn"), default="streamlit")
    p.add_argument("--json", dest="out", help="also write the result here")
    p.set_defaults(func=run)


def _pick(args: argparse.Namespace) -> tuple[Path, str, str, tempfile.TemporaryDirectory | None]:
    """(cohort.toml, image_id, version) to measure; a temporary cohort with synthetic attention if needed."""
    cohort: Cohort | None = None
    path = Path(args.cohort) if args.cohort else default_cohort_path()
    if path.exists():
        cohort = load_cohort(path)
    slide_path: Path | None = None
    if args.slide and Path(args.slide).is_file():
        slide_path = Path(args.slide)
    elif cohort is not None and cohort.slide_paths:
        ids = [args.slide] if args.slide else list(cohort.slide_paths)
        slide_path = max((cohort.slide_path(i) for i in ids), key=lambda p: p.stat().st_size)
    if slide_path is None:
        raise InputError(f"{path}: no cohort with slides; pass --cohort or --slide PATH")
    image_id = next((k for k, v in (cohort.slide_paths.items() if cohort else []) if v == slide_path), None)
    if cohort is not None and image_id is not None and cohort.results.is_dir():
        for version in ([args.version] if args.version else sorted(os.listdir(cohort.results))):
            if (cohort.results / version / "attention" / f"{image_id}.h5").is_file():
                return cohort.source or path, image_id, version, None
    return _synthetic_cohort(slide_path)


def _synthetic_cohort(slide_path: Path) -> tuple[Path, str, str, tempfile.TemporaryDirectory]:
    """A one-slide cohort whose attention is random over the slide's tissue patches (nothing to train first)."""
    import h5py

    from core.slides.slide import image_id_for, open_slide
    from core.slides.tiling import patch_grid

    tmp = tempfile.TemporaryDirectory(prefix="slidelens-bench-")
    root = Path(tmp.name)
    slide = open_slide(slide_path)
    grid = patch_grid(slide, 128, 0.5, min_tissue=0.1, default_mpp=0.5)
    image_id, version = image_id_for(slide_path), "v000-bench"
    att_dir = root / "results" / version / "attention"
    att_dir.mkdir(parents=True)
    with h5py.File(att_dir / f"{image_id}.h5", "w") as f:
        f["coords"] = grid.coords
        f["attention"] = np.random.default_rng(0).random(len(grid)).astype(np.float32)
        f.attrs["patch_size_level0"] = grid.patch_size_level0
        f.attrs["classes"] = "[]"
    toml = root / "cohort.toml"
    toml.write_text(f'name = "bench"\nslides = ["{slide_path.resolve()}"]\ndefault_mpp = 0.5\n')
    return toml, image_id, version, tmp


def _start(server: str, toml: Path, port: int) -> subprocess.Popen:
    if server == "streamlit":
        return start_app(toml, port)
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "core.bench.tiles:_bare_app", "--port", str(port),
           "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "SLIDELENS_COHORT": str(toml)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _bare_app() -> Any:
    from starlette.applications import Starlette

    from core.viewer.tiles import tile_routes

    return Starlette(routes=tile_routes())


def _tile_list(dz: Any, limit: int) -> list[tuple[int, int, int]]:
    """Every tile of the most detailed levels first, then coarser ones, capped at ``limit``, in random order."""
    out: list[tuple[int, int, int]] = []
    for level in range(dz.level_count - 1, -1, -1):
        cols, rows = dz.level_tiles[level]
        out += [(level, c, r) for c in range(cols) for r in range(rows)]
        if len(out) >= limit:
            break
    out = out[:limit]
    random.Random(0).shuffle(out)
    return out


def _raw_tile(dz: Any, level: int, col: int, row: int) -> None:
    from core.viewer.tiles import JPEG_QUALITY

    buf = io.BytesIO()
    dz.get_tile(level, (col, row)).convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)


def _coarser_tiles(dz: Any, finest: list[tuple[int, int, int]], limit: int) -> list[tuple[int, int, int]]:
    """Up to ``limit`` tiles from the levels just coarser than those in ``finest`` (where fewer slide levels
    line up with Deep Zoom's, so more tiles are resampled), in random order."""
    below = min(t[0] for t in finest) - 1
    out: list[tuple[int, int, int]] = []
    for level in range(below, max(below - 2, -1), -1):
        cols, rows = dz.level_tiles[level]
        out += [(level, c, r) for c in range(cols) for r in range(rows)]
    random.Random(1).shuffle(out)
    return out[:limit]


def _slide_times(client: Any, slide_path: Path, image_id: str,
                 tiles: list[tuple[int, int, int]]) -> tuple[list[float], list[float]]:
    """Raw OpenSlide (fresh handle) then HTTP time of each tile; the file is read once first so that both sides
    find it in the OS cache and neither has decoded tiles cached in OpenSlide."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with open(slide_path, "rb") as f:
        while f.read(1 << 24):
            pass
    dz = DeepZoomGenerator(openslide.OpenSlide(str(slide_path)), tile_size=254, overlap=1, limit_bounds=False)
    raw = []
    for level, col, row in tiles:
        t = time.perf_counter()
        _raw_tile(dz, level, col, row)
        raw.append(time.perf_counter() - t)
    http = _http_times(client, [f"/tiles/{image_id}_files/{lv}/{c}_{r}.jpeg" for lv, c, r in tiles])
    return raw, http


_SERVER_MS: list[float] = []  # the handler's own time of each request (Server-Timing), for the split


class _Client:
    """A keep-alive HTTP/1.1 client on the standard library's ``http.client``: one connection, like a browser's,
    and about 0.3 ms less Python per request than httpx, so the figure is the server's, not the client's."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        self._conn.request("GET", url, headers={"Accept-Encoding": "gzip"})
        r = self._conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def close(self) -> None:
        self._conn.close()


def _http_times(client: _Client, urls: list[str]) -> list[float]:
    times = []
    for url in urls:
        t = time.perf_counter()
        status, headers, body = client.get(url)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise InputError(f"{url}: HTTP {status} {body[:120]!r}")
        timing = headers.get("server-timing", "")
        if "dur=" in timing:
            _SERVER_MS.append(float(timing.split("dur=")[1]) / 1000)
    return times


def _coarse_summary(tiles: list[tuple[int, int, int]], raw: list[float], http: list[float]) -> dict | None:
    if not tiles:
        return None
    raw_s, http_s = percentiles(raw), percentiles(http)
    return {"deepzoom_levels": sorted({t[0] for t in tiles}), "n_tiles": len(tiles),
            "raw_openslide_get_tile_jpeg": raw_s, "http_slide_tiles": http_s,
            "ratio_p50_http_vs_raw": round(http_s["p50_ms"] / raw_s["p50_ms"], 3)}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.slides.slide import open_slide

    toml, image_id, version, tmp = _pick(args)
    cohort = load_cohort(toml)
    slide_path = cohort.slide_path(image_id)
    dz = open_slide(slide_path).deepzoom()
    tiles = _tile_list(dz, args.tiles)
    port = free_port()
    proc = _start(args.server, toml, port)
    client = _Client(port)
    try:
        wait_for_http(port, f"/tiles/{image_id}.dzi")
        client.get(f"/tiles/{image_id}_files/0/0_0.jpeg")  # open the slide: not part of a tile's latency
        steps = tqdm(total=4, desc="bench tiles", disable=not sys.stderr.isatty())
        _SERVER_MS.clear()
        raw, http = _slide_times(client, slide_path, image_id, tiles)
        handler = percentiles(list(_SERVER_MS))
        coarse = _coarser_tiles(dz, tiles, 60) if min(t[0] for t in tiles) > 0 else []
        raw_coarse, http_coarse = _slide_times(client, slide_path, image_id, coarse) if coarse else ([], [])
        steps.update(2)
        ov = f"/tiles/attention/{version}/{image_id}_files"
        client.get(f"{ov}/0/0_0.png")  # load the attention file once
        overlay_urls = [f"{ov}/{lv}/{c}_{r}.png?cmap=inferno&scale=percentile" for lv, c, r in tiles]
        over = _http_times(client, overlay_urls)
        steps.update()
        restyled = [u.replace("inferno", "viridis").replace("percentile", "rank") + "&top=0.5"
                    for u in overlay_urls]
        over2 = _http_times(client, restyled)
        steps.update()
        steps.close()
    finally:
        client.close()
        stop_app(proc)
        if tmp is not None:
            tmp.cleanup()
    raw_s, http_s = percentiles(raw), percentiles(http)
    direct_levels = open_slide(slide_path).direct_read_levels
    over_s = percentiles(over + over2)
    ratio = round(http_s["p50_ms"] / raw_s["p50_ms"], 3)
    result = {
        "bench": "tiles", "server": args.server, "slide": image_id, "dimensions": list(dz.level_dimensions[-1]),
        "n_tiles": len(tiles), "levels": sorted({t[0] for t in tiles}),
        "raw_openslide_get_tile_jpeg": raw_s, "http_slide_tiles": http_s, "http_overlay_tiles": over_s,
        "slide_tile_handler_in_server": handler,
        "ratio_p50_http_vs_raw": ratio,
        "ratio_p50_handler_vs_raw": round(handler["p50_ms"] / raw_s["p50_ms"], 3) if handler else None,
        "direct_read_levels": direct_levels,
        "coarser_levels": _coarse_summary(coarse, raw_coarse, http_coarse),
        "targets": {"ratio_p50": TARGET_RATIO, "overlay_p95_ms": TARGET_OVERLAY_P95_MS},
        "met": {"ratio_p50": ratio <= TARGET_RATIO, "overlay_p95_ms": over_s["p95_ms"] < TARGET_OVERLAY_P95_MS},
    }
    write_json(result, args.out)
    return 0
