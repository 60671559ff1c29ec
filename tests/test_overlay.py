"""The attention overlay: rescaling, thresholds, and exact alignment with the slide's Deep Zoom tiles."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from openslide.deepzoom import DeepZoomGenerator

from core.errors import InputError
from core.slides.slide import open_slide
from core.viewer import overlay

sys.path.insert(0, str(Path(__file__).parent))
from _viewer_data import PATCH, grid_coords, write_pyramid  # noqa: E402

TILE, OVERLAP = 254, 1


def unique_colors(n: int) -> np.ndarray:
    """Patch i gets a colour that encodes i, so a pixel tells exactly which patch painted it."""
    i = np.arange(n)
    out = np.zeros((n + 1, 4), np.uint8)
    out[:-1, 0], out[:-1, 1], out[:-1, 2], out[:-1, 3] = i & 255, i >> 8, 77, 255
    return out


def check_alignment(dims: tuple[int, int], coords: np.ndarray, size: int) -> int:
    """Assert that at every DZ level where a patch is >= 2 px, the pixel under each patch centre is that patch's."""
    values = np.random.default_rng(1).random(len(coords))
    raster = overlay.attention_raster(values, coords, size, dims)
    colors = unique_colors(len(coords))
    n_levels = overlay.dz_level_count(dims)
    checked = 0
    for level in range(n_levels):
        scale = 2 ** (n_levels - 1 - level)
        if size / scale < 2:
            continue
        cache: dict[tuple[int, int], np.ndarray] = {}
        for i, (x, y) in enumerate(coords):
            zx, zy = math.floor((x + size / 2) / scale), math.floor((y + size / 2) / scale)
            col, row = zx // TILE, zy // TILE
            if (col, row) not in cache:
                cache[(col, row)] = overlay.overlay_tile(raster, colors, level, col, row, TILE, OVERLAP)
            x0, y0, _, _ = overlay.tile_bounds(dims, level, col, row, TILE, OVERLAP)
            px = cache[(col, row)][zy - y0, zx - x0]
            assert tuple(px) == tuple(colors[i]), f"level {level}: patch {i} at {(x, y)} shows {tuple(px)}"
            checked += 1
    return checked


@pytest.mark.parametrize("dims, origin", [((1000, 700), (0, 0)),  # width not a multiple of the patch size
                                          ((1001, 757), (0, 0)),  # odd sizes: slide levels are rounded
                                          ((1001, 757), (13, 5))])  # patches at an offset from the slide corner
def test_pixel_under_each_patch_centre_carries_that_patch(dims, origin):
    coords = grid_coords(*dims, origin=origin)
    checked = check_alignment(dims, coords, PATCH)
    assert checked >= len(coords) * 5  # 64 px patches are >= 2 px on the top 6 levels


def test_overlay_tiles_have_the_slide_tiles_sizes_on_a_rounded_pyramid(tmp_path):
    path = write_pyramid(tmp_path / "odd.tiff", 1001, 757)
    slide = open_slide(path)
    assert slide.level_dimensions[1] == (501, 379)  # the rounded level this test is about
    dz = DeepZoomGenerator(slide._osr, tile_size=TILE, overlap=OVERLAP, limit_bounds=False)
    coords = grid_coords(1001, 757)
    raster = overlay.attention_raster(np.ones(len(coords)), coords, PATCH, slide.dimensions)
    colors = unique_colors(len(coords))
    assert dz.level_count == overlay.dz_level_count(slide.dimensions)
    for level in range(dz.level_count):
        cols, rows = dz.level_tiles[level]
        for col in range(cols):
            for row in range(rows):
                tile = overlay.overlay_tile(raster, colors, level, col, row)
                assert tile.shape[1::-1] == dz.get_tile_dimensions(level, (col, row))


def test_slide_and_overlay_agree_on_where_a_patch_is(tmp_path):
    """A slide painted patch by patch: the slide tile and the overlay tile show the same patch under its centre."""
    w, h, size = 1001, 757, PATCH
    coords = grid_coords(w, h)
    img = np.full((h, w, 3), 255, np.uint8)
    palette = np.random.default_rng(3).integers(0, 200, (len(coords), 3)).astype(np.uint8)
    for i, (x, y) in enumerate(coords):
        img[y:y + size, x:x + size] = palette[i]
    import tifffile
    from PIL import Image

    path = tmp_path / "painted.tiff"
    with tifffile.TiffWriter(path) as tif:
        arr = img
        for i in range(3):
            tif.write(arr, tile=(64, 64), photometric="rgb", subfiletype=0 if i == 0 else 1, metadata=None)
            arr = np.asarray(Image.fromarray(arr).resize((-(-arr.shape[1] // 2), -(-arr.shape[0] // 2)),
                                                         Image.Resampling.NEAREST))
    slide = open_slide(path)
    raster = overlay.attention_raster(np.arange(len(coords)), coords, size, slide.dimensions)
    colors = unique_colors(len(coords))
    n = overlay.dz_level_count(slide.dimensions)
    for level in (n - 1, n - 2, n - 3):  # 64, 32 and 16 px patches; the last two read rounded slide levels
        scale = 2 ** (n - 1 - level)
        for i, (x, y) in enumerate(coords):
            zx, zy = (x + size // 2) // scale, (y + size // 2) // scale
            col, row = zx // TILE, zy // TILE
            x0, y0, _, _ = overlay.tile_bounds(slide.dimensions, level, col, row)
            slide_px = np.asarray(slide.deepzoom_tile(level, col, row))[zy - y0, zx - x0]
            over_px = overlay.overlay_tile(raster, colors, level, col, row)[zy - y0, zx - x0]
            assert tuple(slide_px) == tuple(palette[i]), f"slide tile at level {level} misplaces patch {i}"
            assert tuple(over_px) == tuple(colors[i]), f"overlay tile at level {level} misplaces patch {i}"


def test_overlapping_patches_show_the_hottest():
    coords = np.array([[0, 0], [32, 0]])
    raster = overlay.attention_raster(np.array([0.9, 0.1]), coords, 64, (200, 100))
    assert raster.cell == 32
    assert raster.patch_at(40, 10) == 0  # covered by both: the higher value wins
    assert raster.patch_at(70, 10) == 1
    assert raster.patch_at(150, 10) == -1
    raster = overlay.attention_raster(np.array([0.1, 0.9]), coords, 64, (200, 100))
    assert raster.patch_at(40, 10) == 1


def test_rescale_methods():
    v = np.array([5.0, 1.0, 3.0, 100.0])
    np.testing.assert_allclose(overlay.rescale(v, "rank"), [2 / 3, 0, 1 / 3, 1], rtol=1e-6)
    np.testing.assert_allclose(overlay.rescale(v, "minmax"), (v - 1) / 99, rtol=1e-6)
    pct = overlay.rescale(np.arange(101.0), "percentile", 10, 90)
    assert pct[10] == 0 and pct[90] == 1 and pct[0] == 0 and pct[100] == 1
    assert abs(pct[50] - 0.5) < 1e-6
    assert np.all(overlay.rescale(np.full(4, 2.0), "percentile") == 0.5)
    with pytest.raises(InputError, match="unknown rescaling"):
        overlay.rescale(v, "log")


def test_top_fraction_and_colors():
    v = np.array([0.1, 0.5, 0.3, 0.9])
    assert overlay.top_fraction_mask(v, 0.5).tolist() == [False, True, False, True]
    assert overlay.top_fraction_mask(v, 0.01).tolist() == [False, False, False, True]
    with pytest.raises(InputError):
        overlay.top_fraction_mask(v, 0)
    lut = overlay.colormap_lut("viridis")
    colors = overlay.patch_colors(np.array([0.0, 1.0]), lut, visible=np.array([True, False]))
    assert tuple(colors[0]) == (*lut[0], 255)
    assert colors[1, 3] == 0 and colors[2, 3] == 0  # hidden patch and 'no patch' are transparent
    with pytest.raises(InputError, match="colour map"):
        overlay.colormap_lut("rainbowz")


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(InputError, match="3 values for 2 patch"):
        overlay.attention_raster(np.ones(3), np.zeros((2, 2)), 64, (100, 100))


def test_fade_makes_opacity_follow_the_value():
    lut = overlay.colormap_lut("inferno")
    scaled = np.array([0.0, 0.5, 1.0])
    colors = overlay.patch_colors(scaled, lut, alpha=overlay.fade_alpha(scaled))
    assert colors[:-1, 3].tolist() == [0, 128, 255] and colors[-1, 3] == 0  # low attention fades into the tissue


@pytest.mark.parametrize("dims, origin", [((1000, 700), (0, 0)), ((1001, 757), (13, 5))])
def test_smooth_rendering_passes_through_each_patch_centre_and_fades_at_the_edges(dims, origin):
    coords = grid_coords(*dims, origin=origin)
    scaled = overlay.rescale(np.random.default_rng(2).random(len(coords)), "rank")
    raster = overlay.attention_raster(scaled, coords, PATCH, dims)
    grid = overlay.smooth_grid(raster, scaled, np.ones(len(coords)))
    assert grid.cell == PATCH  # one grid cell per patch, whatever the raster's cell
    lut = overlay.colormap_lut("viridis")
    top = overlay.dz_level_count(dims) - 1
    tile = overlay.smooth_tile(grid, lut, top, 0, 0, TILE, OVERLAP)
    assert tile.shape == (*overlay.tile_bounds(dims, top, 0, 0, TILE, OVERLAP)[3:1:-1], 4)
    inner = [i for i, (x, y) in enumerate(coords)
             if x + PATCH < TILE and y + PATCH < TILE and x > origin[0] and y > origin[1]]
    assert inner
    for i in inner:  # interior patches: full opacity, and the centre pixel has (almost) the patch's colour
        cx, cy = coords[i] + PATCH // 2
        assert tile[cy, cx, 3] == 255
        assert np.abs(tile[cy, cx, :3].astype(int) - lut[round(float(scaled[i]) * 255)].astype(int)).max() <= 8
    # between two patches of different value the colour is in between (a gradient, not a block edge)
    a, b = inner[0], inner[0] + 1
    if b < len(coords) and coords[b][1] == coords[a][1]:
        x_mid, y = coords[b][0], coords[a][1] + PATCH // 2
        lo, hi = sorted((float(scaled[a]), float(scaled[b])))
        mid = tile[y, x_mid, :3].astype(int)
        assert any(np.abs(mid - lut[k].astype(int)).max() <= 8 for k in range(round(lo * 255), round(hi * 255) + 1))
    assert tile[0, 0, 3] < 255  # the edge of the tissue fades out


def test_smooth_rendering_hides_patches_outside_the_top_fraction():
    coords = grid_coords(1000, 700)
    hot = int(np.flatnonzero((coords == [128, 128]).all(axis=1))[0])
    values = np.zeros(len(coords))
    values[hot] = 1.0  # one hot patch
    raster = overlay.attention_raster(values, coords, PATCH, (1000, 700))
    visible = overlay.top_fraction_mask(values, 1 / len(values))
    assert visible.sum() == 1
    grid = overlay.smooth_grid(raster, values, visible.astype(float))
    tile = overlay.smooth_tile(grid, overlay.colormap_lut("inferno"), overlay.dz_level_count((1000, 700)) - 1,
                               0, 0, TILE, OVERLAP)
    cx, cy = coords[hot] + PATCH // 2
    assert tile[cy, cx, 3] > 200
    far = coords[0] + PATCH // 2
    assert tuple(tile[far[1], far[0]]) == (0, 0, 0, 0)
