"""Attention -> heatmap aligned to the slide, in pure numpy.

The overlay shares the slide's Deep Zoom geometry (``limit_bounds=False``): DZ level ``L`` of ``n`` levels shows
level-0 pixel ``l0`` at DZ pixel ``l0 / 2**(n-1-L)``. Patches are painted into a *cell raster*: a grid whose cell
side is the largest step that divides every patch corner, so every patch covers whole cells exactly. A tile pixel
takes the patch of the cell under its centre, hence the pixel under a patch's centre carries that patch's value at
every level where the patch spans at least two pixels.

Coordinate planes follow openslide: ``l0_`` level-0 pixels, ``z_`` Deep Zoom pixels, ``c_`` raster cells.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from core.errors import InputError

MAX_CELLS = 64_000_000  # a raster larger than this is coarsened (only for patches at arbitrary offsets)
RESCALE_METHODS = ("percentile", "rank", "minmax")
RENDERINGS = ("blocks", "smooth")  # one flat square per patch, or bilinear between patch centres

# Colour maps as control points (position, r, g, b), interpolated into 256-entry lookup tables.
_CMAPS: dict[str, list[tuple[float, int, int, int]]] = {
    "inferno": [(0, 0, 0, 4), (0.25, 87, 16, 110), (0.5, 188, 55, 84), (0.75, 249, 142, 9), (1, 252, 255, 164)],
    "viridis": [(0, 68, 1, 84), (0.25, 59, 82, 139), (0.5, 33, 145, 140), (0.75, 94, 201, 98), (1, 253, 231, 37)],
    "jet": [(0, 0, 0, 131), (0.125, 0, 0, 255), (0.375, 0, 255, 255), (0.625, 255, 255, 0), (0.875, 255, 0, 0),
            (1, 128, 0, 0)],
    "coolwarm": [(0, 59, 76, 192), (0.5, 221, 221, 221), (1, 180, 4, 38)],
    "reds": [(0, 255, 245, 240), (0.5, 251, 106, 74), (1, 103, 0, 13)],
}
COLORMAPS = tuple(_CMAPS)


def colormap_lut(name: str) -> np.ndarray:
    """A 256 x 3 uint8 lookup table for a colour map of ``COLORMAPS``."""
    if name not in _CMAPS:
        raise InputError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    pts = np.array(_CMAPS[name], dtype=np.float64)
    x = np.linspace(0, 1, 256)
    return np.stack([np.interp(x, pts[:, 0], pts[:, i]) for i in (1, 2, 3)], axis=1).round().astype(np.uint8)


def rescale(values: np.ndarray, method: str = "percentile", low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Attention rescaled to [0, 1] for display: ``percentile`` (clip to low..high), ``rank`` or ``minmax``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if method not in RESCALE_METHODS:
        raise InputError(f"unknown rescaling {method!r}; choose one of {', '.join(RESCALE_METHODS)}")
    if v.size == 0:
        return np.zeros(0, np.float32)
    if method == "rank":
        order = np.argsort(v, kind="stable")
        out = np.empty(v.size)
        out[order] = np.arange(v.size)
        return (out / max(v.size - 1, 1)).astype(np.float32)
    lo, hi = (np.percentile(v, [low, high]) if method == "percentile" else (v.min(), v.max()))
    if not hi > lo:
        return np.full(v.size, 0.5, np.float32)
    return np.clip((v - lo) / (hi - lo), 0, 1).astype(np.float32)


def top_fraction_mask(values: np.ndarray, top: float) -> np.ndarray:
    """Boolean mask of the ``top`` fraction (0..1] of patches by value (at least one patch when top > 0)."""
    v = np.asarray(values).ravel()
    if not 0 < top <= 1:
        raise InputError(f"threshold must be a fraction in (0, 1], got {top}")
    k = max(1, int(math.ceil(top * v.size))) if v.size else 0
    keep = np.zeros(v.size, bool)
    keep[np.argsort(-v, kind="stable")[:k]] = True
    return keep


@dataclass(frozen=True)
class AttentionRaster:
    """Patch index per raster cell (-1 where no patch); cell (0, 0) starts at level-0 ``origin``."""

    index: np.ndarray  # rows x cols int32
    origin: tuple[int, int]
    cell: int  # level-0 pixels per cell side
    patch_size_level0: int
    dimensions: tuple[int, int]  # level-0 slide size

    def patch_at(self, l0_x: float, l0_y: float) -> int:
        """Index of the patch covering level-0 point (x, y), or -1."""
        c = math.floor((l0_x - self.origin[0]) / self.cell)
        r = math.floor((l0_y - self.origin[1]) / self.cell)
        rows, cols = self.index.shape
        return int(self.index[r, c]) if 0 <= r < rows and 0 <= c < cols else -1


def attention_raster(values: np.ndarray, coords: np.ndarray, patch_size_level0: int,
                     dims: tuple[int, int]) -> AttentionRaster:
    """Paint patches (level-0 top-left ``coords``, side ``patch_size_level0``) into a cell raster.

    Where patches overlap, the one with the higher value wins, so a hot patch is never hidden.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(coords) != len(values):
        raise InputError(f"attention has {len(values)} values for {len(coords)} patch coordinates")
    size = int(patch_size_level0)
    if size < 1:
        raise InputError(f"patch_size_level0 must be positive, got {patch_size_level0}")
    w0, h0 = int(dims[0]), int(dims[1])
    if len(coords) == 0:
        return AttentionRaster(np.full((1, 1), -1, np.int32), (0, 0), max(w0, h0, 1), size, (w0, h0))
    base = coords.min(axis=0)
    cell = math.gcd(size, int(np.gcd.reduce((coords - base).ravel())))
    while math.ceil(w0 / cell + 1) * math.ceil(h0 / cell + 1) > MAX_CELLS:
        cell *= 2  # arbitrary offsets: approximate rather than exhaust memory
    origin = (int(base[0] % cell), int(base[1] % cell))
    cols = max(1, math.ceil((max(w0, int(coords[:, 0].max()) + size) - origin[0]) / cell))
    rows = max(1, math.ceil((max(h0, int(coords[:, 1].max()) + size) - origin[1]) / cell))
    # rank of each patch by value: painting the maximum rank makes the hottest overlapping patch win
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    best = np.full((rows, cols), -1, np.int64)
    c0 = (coords[:, 0] - origin[0]) // cell
    r0 = (coords[:, 1] - origin[1]) // cell
    span = max(1, -(-size // cell))
    for dy in range(span):
        for dx in range(span):
            np.maximum.at(best, (r0 + dy, c0 + dx), rank)
    index = np.where(best >= 0, order[np.maximum(best, 0)], -1).astype(np.int32)
    return AttentionRaster(index, origin, cell, size, (w0, h0))


def dz_level_count(dims: tuple[int, int]) -> int:
    """Number of Deep Zoom levels for a level-0 size (as openslide's DeepZoomGenerator counts them)."""
    w, h = int(dims[0]), int(dims[1])
    n = 1
    while w > 1 or h > 1:
        w, h = max(1, (w + 1) // 2), max(1, (h + 1) // 2)
        n += 1
    return n


def dz_level_dimensions(dims: tuple[int, int]) -> list[tuple[int, int]]:
    """Deep Zoom level sizes, smallest first (repeated halving rounding up, as openslide does)."""
    sizes = [(int(dims[0]), int(dims[1]))]
    while sizes[-1] != (1, 1):
        w, h = sizes[-1]
        sizes.append((max(1, (w + 1) // 2), max(1, (h + 1) // 2)))
    return sizes[::-1]


def tile_bounds(dims: tuple[int, int], level: int, col: int, row: int, tile_size: int = 254,
                overlap: int = 1) -> tuple[int, int, int, int]:
    """DZ-pixel box (x0, y0, width, height) of a tile including its overlap, as openslide computes it."""
    z_w, z_h = dz_level_dimensions(dims)[level]

    def axis(t: int, z_lim: int) -> tuple[int, int]:
        start = t * tile_size - (overlap if t > 0 else 0)
        end = min(z_lim, (t + 1) * tile_size + overlap)
        return start, end - start

    x0, w = axis(col, z_w)
    y0, h = axis(row, z_h)
    return x0, y0, w, h


def overlay_tile(raster: AttentionRaster, colors: np.ndarray, level: int, col: int, row: int,
                 tile_size: int = 254, overlap: int = 1) -> np.ndarray:
    """RGBA tile (h x w x 4 uint8) of the overlay at a Deep Zoom position.

    ``colors`` is an (N+1) x 4 uint8 table: row ``i`` is patch ``i``'s RGBA, the last row the transparent
    colour for cells without a patch (see ``patch_colors``).
    """
    n_levels = dz_level_count(raster.dimensions)
    x0, y0, w, h = tile_bounds(raster.dimensions, level, col, row, tile_size, overlap)
    scale = 2 ** (n_levels - 1 - level)  # level-0 pixels per DZ pixel at this level
    rows, cols = raster.index.shape
    c = np.floor(((np.arange(x0, x0 + w) + 0.5) * scale - raster.origin[0]) / raster.cell).astype(np.int64)
    r = np.floor(((np.arange(y0, y0 + h) + 0.5) * scale - raster.origin[1]) / raster.cell).astype(np.int64)
    c_ok = (c >= 0) & (c < cols)
    r_ok = (r >= 0) & (r < rows)
    idx = raster.index[np.clip(r, 0, rows - 1)[:, None], np.clip(c, 0, cols - 1)[None, :]]
    idx = np.where(r_ok[:, None] & c_ok[None, :], idx, -1)
    return colors[idx]  # -1 picks the last row: transparent


def patch_colors(scaled: np.ndarray, lut: np.ndarray, visible: np.ndarray | None = None,
                 alpha: int | np.ndarray = 255) -> np.ndarray:
    """(N+1) x 4 RGBA table from rescaled values in [0, 1]; hidden patches and the last row are transparent.

    ``alpha`` is one opacity for every patch or one per patch (0..255, see ``fade_alpha``).
    """
    scaled = np.clip(np.asarray(scaled, dtype=np.float64).ravel(), 0, 1)
    out = np.zeros((len(scaled) + 1, 4), np.uint8)
    out[:-1, :3] = lut[np.round(scaled * 255).astype(np.int64)]
    out[:-1, 3] = alpha
    if visible is not None:
        out[:-1][~np.asarray(visible, bool)] = 0
    return out


def fade_alpha(scaled: np.ndarray) -> np.ndarray:
    """Per-patch opacity proportional to the rescaled value (uint8): low attention fades into the tissue."""
    return np.round(np.clip(np.asarray(scaled, dtype=np.float64).ravel(), 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class SmoothGrid:
    """Patch-sized cells for the smooth rendering: premultiplied value and opacity, zero-padded by one cell."""

    value: np.ndarray  # (rows + 2) x (cols + 2) float32, rescaled value x opacity
    alpha: np.ndarray  # (rows + 2) x (cols + 2) float32, 0..1
    origin: tuple[int, int]
    cell: int  # level-0 pixels per cell side (about one patch)
    dimensions: tuple[int, int]

    @functools.cached_property
    def stacked(self) -> np.ndarray:
        """value and alpha as one rows x cols x 2 array (one gather per sample instead of two)."""
        return np.stack([self.value, self.alpha], axis=-1)


def smooth_grid(raster: AttentionRaster, scaled: np.ndarray, alpha: np.ndarray) -> SmoothGrid:
    """Average a raster's cells into patch-sized cells (``alpha`` 0..1 per patch, 0 for hidden patches)."""
    idx = raster.index
    has = idx >= 0
    safe = np.maximum(idx, 0)
    a = np.where(has, np.asarray(alpha, np.float32)[safe], 0).astype(np.float32)
    v = np.where(has, np.asarray(scaled, np.float32)[safe], 0).astype(np.float32) * a
    f = max(1, -(-raster.patch_size_level0 // raster.cell))  # raster cells per patch side
    rows, cols = -(-idx.shape[0] // f), -(-idx.shape[1] // f)

    def block_mean(g: np.ndarray) -> np.ndarray:
        pad = np.zeros((rows * f, cols * f), np.float32)
        pad[:g.shape[0], :g.shape[1]] = g
        out = np.zeros((rows + 2, cols + 2), np.float32)
        out[1:-1, 1:-1] = pad.reshape(rows, f, cols, f).mean(axis=(1, 3))
        return out

    return SmoothGrid(block_mean(v), block_mean(a), raster.origin, raster.cell * f, raster.dimensions)


def _bilinear(grid: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``grid`` (rows x cols x k) at rows ``fy`` and columns ``fx``: separable, so the row pass
    runs only over the grid rows the tile touches (a handful when zoomed in)."""
    rows, cols = grid.shape[:2]
    y0 = np.floor(fy).astype(np.int64)
    x0 = np.floor(fx).astype(np.int64)
    ty = (fy - y0).astype(np.float32)[:, None, None]
    tx = (fx - x0).astype(np.float32)[None, :, None]
    x0c, x1c = np.clip(x0, 0, cols - 1), np.clip(x0 + 1, 0, cols - 1)
    used, inv = np.unique(np.concatenate([np.clip(y0, 0, rows - 1), np.clip(y0 + 1, 0, rows - 1)]),
                          return_inverse=True)
    band = grid[used]  # the touched rows only
    across = band[:, x0c] * (1 - tx) + band[:, x1c] * tx  # len(used) x w x k
    top, bottom = across[inv[:len(fy)]], across[inv[len(fy):]]
    return top * (1 - ty) + bottom * ty


def smooth_tile(grid: SmoothGrid, lut: np.ndarray, level: int, col: int, row: int, tile_size: int = 254,
                overlap: int = 1) -> np.ndarray:
    """RGBA tile of the smooth rendering: colour and opacity interpolated bilinearly between patch centres."""
    n_levels = dz_level_count(grid.dimensions)
    x0, y0, w, h = tile_bounds(grid.dimensions, level, col, row, tile_size, overlap)
    scale = 2 ** (n_levels - 1 - level)
    # cell centres sit at integer positions of the padded grid (cell 0 of the data is index 1)
    fx = ((np.arange(x0, x0 + w) + 0.5) * scale - grid.origin[0]) / grid.cell - 0.5 + 1
    fy = ((np.arange(y0, y0 + h) + 0.5) * scale - grid.origin[1]) / grid.cell - 0.5 + 1
    fx = np.clip(fx, 0, grid.value.shape[1] - 1)
    fy = np.clip(fy, 0, grid.value.shape[0] - 1)
    va = _bilinear(grid.stacked, fy, fx)
    a = va[..., 1]
    v = va[..., 0] / np.maximum(a, 1e-6)
    alpha = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    rgb = lut[(np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)]  # uint8 indices: a cheap gather
    rgb *= (alpha > 0)[..., None]  # fully transparent pixels are (0, 0, 0, 0)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def display_values(values: np.ndarray, method: str = "percentile", top: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rescaled values and the mask of patches shown under a top-fraction threshold."""
    return rescale(values, method), top_fraction_mask(values, top)
