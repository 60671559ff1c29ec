"""``bench scale`` part ``overlay``: attention overlay tiles and the attention-at-point lookup on a slide with 100,000
patches, against the same on 1,000 patches (constant time means the two medians are alike).

A layer is built the way the tile routes build it (raster of patch indices, cached colours), on a slide whose patch
grid holds ``n`` patches of 256 px; then random Deep Zoom tiles of every level are rendered to PNG (blocks and smooth)
and random points are looked up. Times are the handler's own work in this process (the HTTP path adds about 0.5 ms,
see ``bench tiles``). Target: overlay tile p95 under 30 ms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.bench._util import percentiles

TARGET_P95_MS = 30.0
PATCH = 256


def _layer(n: int, seed: int = 0) -> Any:
    from core.viewer import overlay
    from core.viewer.attention_layers import AttentionLayer

    side = math.ceil(math.sqrt(n / 0.68))  # tissue (a disc) covers about 69% of the grid
    gy, gx = np.mgrid[0:side, 0:side]
    keep = ((gx - side / 2) ** 2 + (gy - side / 2) ** 2) < (side * 0.47) ** 2
    coords = np.stack([gx[keep], gy[keep]], 1)[:n].astype(np.int64) * PATCH
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.5, 1.0, (len(coords), 1)).astype(np.float32)
    dims = (side * PATCH, side * PATCH)
    raster = overlay.attention_raster(values[:, 0], coords, PATCH, dims)
    return AttentionLayer(values, coords, PATCH, ["attention"], raster, Path(f"bench-{n}.h5"), (f"bench-{n}", n, dims))


def _tile_times(layer: Any, style: Any, tiles: int, rng: np.random.Generator) -> list[float]:
    from core.viewer import overlay
    from core.viewer.attention_layers import overlay_tile_png

    dims = layer.raster.dimensions
    sizes = overlay.dz_level_dimensions(dims)
    top = len(sizes) - 1
    levels = [lv for lv in range(max(0, top - 8), top + 1)]
    overlay_tile_png(layer, style, top, 0, 0)  # the colour table is built once per (layer, style), then cached
    out = []
    for _ in range(tiles):
        lv = int(rng.choice(levels))
        w, h = sizes[lv]
        col, row = int(rng.integers(0, max(1, math.ceil(w / 254)))), int(rng.integers(0, max(1, math.ceil(h / 254))))
        t = time.perf_counter()
        overlay_tile_png(layer, style, lv, col, row)
        out.append(time.perf_counter() - t)
    return out


def _lookup_times(layer: Any, points: int, rng: np.random.Generator) -> list[float]:
    from core.viewer.attention_layers import attention_at

    w, h = layer.raster.dimensions
    xs, ys = rng.uniform(0, w, points), rng.uniform(0, h, points)
    out = []
    for x, y in zip(xs, ys, strict=True):
        t = time.perf_counter()
        attention_at(layer, float(x), float(y))
        out.append(time.perf_counter() - t)
    return out


def bench_overlay(n: int = 100_000, small: int = 1_000, tiles: int = 300, points: int = 2_000) -> dict[str, Any]:
    """Overlay tile and lookup percentiles at ``n`` and ``small`` patches."""
    from core.viewer.attention_layers import OverlayStyle

    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"target_tile_p95_ms": TARGET_P95_MS}
    for count in (small, n):
        t = time.perf_counter()
        layer = _layer(count)
        build = time.perf_counter() - t
        res: dict[str, Any] = {"patches": int(len(layer.coords)), "slide_px": list(layer.raster.dimensions),
                               "layer_build_s": round(build, 3)}
        for render in ("blocks", "smooth"):
            res[f"tiles_{render}"] = percentiles(_tile_times(layer, OverlayStyle(render=render), tiles, rng))
        res["lookup"] = percentiles(_lookup_times(layer, points, rng))
        out[f"n{count}"] = res
    big = out[f"n{n}"]
    out["meets_target"] = all(big[f"tiles_{r}"]["p95_ms"] < TARGET_P95_MS for r in ("blocks", "smooth"))
    out["lookup_p50_ratio_big_vs_small"] = round(big["lookup"]["p50_ms"] / max(out[f"n{small}"]["lookup"]["p50_ms"],
                                                                                1e-9), 2)
    return out
