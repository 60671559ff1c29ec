"""Direct tiled-TIFF reads behind Deep Zoom tiles: same pixels as OpenSlide, fallbacks, safety check, resources."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from openslide.deepzoom import DeepZoomGenerator

from conftest import PYRAMID_TIFF, SVS, synthetic_tissue, write_pyramid_tiff
from core.errors import SlideError
from core.slides.cache import SlideCache
from core.slides.slide import DZ_OVERLAP, DZ_TILE_SIZE, open_slide
from core.slides.tiff_direct import DirectTiffReader, _DecodedTiles, _Level, _true_downsample, open_direct


def _openslide_tiles(path: Path) -> tuple[DeepZoomGenerator, list[tuple[int, int, int]]]:
    dz = DeepZoomGenerator(openslide.OpenSlide(str(path)), DZ_TILE_SIZE, DZ_OVERLAP, limit_bounds=False)
    tiles = [(lv, c, r) for lv in range(dz.level_count)
             for c in range(dz.level_tiles[lv][0]) for r in range(dz.level_tiles[lv][1])]
    return dz, tiles


@pytest.fixture(scope="module")
def integer_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pyramid whose level sizes halve exactly (1536 -> 768 -> 384), so every level is read directly."""
    path = tmp_path_factory.mktemp("direct") / "even.tiff"
    return write_pyramid_tiff(path, synthetic_tissue(1536, 1024, seed=3), levels=3)


def _whole_pixel_levels(dz: DeepZoomGenerator, osr: openslide.OpenSlide) -> set[int]:
    """Deep Zoom levels where openslide's generator copies whole pixels of one slide level, unscaled."""
    top = dz.level_count - 1
    out = set()
    for lv in range(dz.level_count):
        d = 2 ** (top - lv)
        level = osr.get_best_level_for_downsample(d)
        if osr.level_downsamples[level] == d:
            out.add(lv)
    return out


@pytest.mark.parametrize("name", ["svs", "pyramid_tiff", "odd_synthetic", "integer_pyramid"])
def test_whole_pixel_tiles_equal_openslide(name: str, synthetic_slide: Path, integer_pyramid: Path) -> None:
    path = {"svs": SVS, "pyramid_tiff": PYRAMID_TIFF, "odd_synthetic": synthetic_slide,
            "integer_pyramid": integer_pyramid}[name]
    slide = open_slide(path)
    dz, tiles = _openslide_tiles(path)
    exact = _whole_pixel_levels(dz, openslide.OpenSlide(str(path)))
    assert dz.level_count - 1 in exact
    compared = 0
    for lv, c, r in tiles:
        if lv not in exact:
            continue
        ours = np.asarray(slide.deepzoom_tile(lv, c, r))
        ref = np.asarray(dz.get_tile(lv, (c, r)).convert("RGB"))
        assert np.array_equal(ours, ref), (name, lv, c, r)
        compared += 1
    assert compared >= 4
    reader = slide._direct
    assert reader is not None and reader.levels == list(range(slide.level_count)) and reader.reads > 0


@pytest.fixture(scope="module")
def lines_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1501 x 1203 white with 8-px black lines at known places, lossless, so that positions can be measured.
    Its levels are 751 x 602 and 376 x 301: OpenSlide reports fractional downsamples (1.9985, 3.9943)."""
    img = np.full((1203, 1501, 3), 255, np.uint8)
    for x in LINES_X:
        img[:, x:x + 8] = 0
    path = tmp_path_factory.mktemp("lines") / "lines.tiff"
    return write_pyramid_tiff(path, img, levels=3, compression="zlib")


LINES_X = (200, 712, 1224, 1480)


def test_tiles_put_every_pixel_where_deep_zoom_geometry_says(lines_slide: Path) -> None:
    # Deep Zoom pixel i of a level with downsample D covers level-0 [i*D, (i+1)*D): a line whose level-0 centre
    # is at c has its centre at c/D - 0.5 in pixel indices, at every level and everywhere across the slide
    slide = open_slide(lines_slide)
    assert slide.level_downsamples[1] != 2  # OpenSlide's estimate; the level is an exact 2x shrink
    dz = slide.deepzoom()
    top = dz.level_count - 1
    for k in range(4):
        for x in LINES_X:
            centre = (x + 4) / 2 ** k - 0.5
            col = int(centre // DZ_TILE_SIZE)
            start = col * DZ_TILE_SIZE - (DZ_OVERLAP if col else 0)
            darkness = 255 - np.asarray(slide.deepzoom_tile(top - k, col, 0), dtype=float)[100, :, 0]
            lo, hi = max(0, int(centre - start) - 7), min(len(darkness), int(centre - start) + 8)
            idx = np.arange(lo, hi)
            measured = (darkness[lo:hi] * idx).sum() / darkness[lo:hi].sum() + start
            assert measured == pytest.approx(centre, abs=0.05), (k, x)
    assert slide._direct is not None and slide._direct.levels == [0, 1, 2]  # deflate tiles, read directly


def test_true_downsample_of_shrunk_levels() -> None:
    assert _true_downsample((1501, 1203), (751, 602)) == (2.0, 2.0)  # rounded up
    assert _true_downsample((1501, 1203), (750, 601)) == (2.0, 2.0)  # rounded down
    assert _true_downsample((2220, 2967), (555, 742)) == (4.0, 4.0)
    assert _true_downsample((1000, 900), (300, 300)) == (1000 / 300, 3.0)  # not a whole shrink: the ratios


def test_formats_outside_the_tiff_vendors_are_not_read_directly() -> None:
    assert open_direct(SVS, ((2220, 2967),), "dicom") is None
    assert open_direct(Path(__file__), ((1, 1),), "generic-tiff") is None  # not a TIFF: None, no error


def test_a_level_whose_pixels_differ_from_openslide_is_dropped(tmp_path: Path, integer_pyramid: Path) -> None:
    # the same geometry with other pixels: the check at first use must catch a wrong page mapping
    other = write_pyramid_tiff(tmp_path / "other.tiff", synthetic_tissue(1536, 1024, seed=9)[::-1].copy(),
                               levels=3)
    slide = open_slide(integer_pyramid)
    tiff = tifffile.TiffFile(other)
    page = tiff.pages[0]
    wrong = DirectTiffReader(other, tiff, {0: _Level(page, 1536, 1024, 256, 256, 6, (1.0, 1.0))}, (255, 255, 255))
    slide._check_direct(wrong)
    assert wrong.levels == []


def test_a_corrupt_tile_gives_a_slide_error_not_a_crash(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "corrupt.tiff", synthetic_tissue(1024, 768, seed=4), levels=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:  # garble the top-left tile of level 0, keep the file's structure
        f.seek(offset + 2)
        f.write(b"\xff\x00" * ((count - 4) // 2))
    slide = open_slide(path, validate=False)
    dz = slide.deepzoom()
    try:
        tile = slide.deepzoom_tile(dz.level_count - 1, 0, 0)
    except SlideError as exc:
        assert "corrupt.tiff" in str(exc) and "\n" not in str(exc)
    else:  # a decoder that paints garbage rather than failing: still a tile of the right size
        assert tile.size == (DZ_TILE_SIZE + DZ_OVERLAP, DZ_TILE_SIZE + DZ_OVERLAP)
    # the rest of the slide still reads, from this handle too (OpenSlide's own handle stays in error once it failed)
    assert slide.deepzoom_tile(dz.level_count - 1, 2, 2).size == (DZ_TILE_SIZE + 2 * DZ_OVERLAP,) * 2


def test_the_slide_cache_reopens_a_handle_that_failed_a_read(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "bad.tiff", synthetic_tissue(1024, 768, seed=4), levels=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"\xff\x00" * ((count - 4) // 2))
    cache = SlideCache(maxsize=4)
    first = cache.get(path)
    with pytest.raises(SlideError):
        first.read_region((0, 0), 0, (64, 64))  # OpenSlide's handle is now in error for good
    with pytest.raises(SlideError):
        first.read_region((600, 600), 0, (64, 64))
    second = cache.get(path)
    assert second is not first
    assert second.read_region((600, 600), 0, (64, 64)).size == (64, 64)


def test_threads_read_the_same_pixels_as_one_thread(integer_pyramid: Path) -> None:
    slide = open_slide(integer_pyramid)
    dz = slide.deepzoom()
    tiles = [(lv, c, r) for lv in range(dz.level_count - 3, dz.level_count)
             for c in range(dz.level_tiles[lv][0]) for r in range(dz.level_tiles[lv][1])]
    expected = {t: np.asarray(open_slide(integer_pyramid).deepzoom_tile(*t)) for t in tiles}
    results: dict[tuple[int, int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(part: list[tuple[int, int, int]]) -> None:
        try:
            for t in part:
                results[t] = np.asarray(slide.deepzoom_tile(*t))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tiles[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(np.array_equal(results[t], expected[t]) for t in tiles)


def test_decoded_tile_cache_keeps_to_its_byte_budget() -> None:
    cache = _DecodedTiles(max_bytes=3 * 100)
    for i in range(5):
        cache.put((1, 0, i), np.zeros(100, np.uint8))
    assert cache.get((1, 0, 0)) is None and cache.get((1, 0, 4)) is not None
    assert sum(cache.get((1, 0, i)) is not None for i in range(5)) == 3
    cache.drop(1)
    assert cache.get((1, 0, 4)) is None


def test_a_dropped_reader_releases_its_file(integer_pyramid: Path) -> None:
    slide = open_slide(integer_pyramid)
    slide.deepzoom_tile(slide.deepzoom().level_count - 1, 0, 0)
    fd = slide._direct._fd

    def holds_file() -> bool:
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).resolve() == integer_pyramid.resolve()
        except OSError:
            return False

    assert holds_file()
    del slide
    gc.collect()
    assert not holds_file()
