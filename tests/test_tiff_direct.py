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
from core.slides import DZ_OVERLAP, DZ_TILE_SIZE, open_slide
from core.tiff_direct import DirectTiffReader, _DecodedTiles, _Level, open_direct


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


@pytest.mark.parametrize("name", ["svs", "pyramid_tiff", "odd_synthetic", "integer_pyramid"])
def test_every_deep_zoom_tile_equals_openslide(name: str, synthetic_slide: Path, integer_pyramid: Path) -> None:
    path = {"svs": SVS, "pyramid_tiff": PYRAMID_TIFF, "odd_synthetic": synthetic_slide,
            "integer_pyramid": integer_pyramid}[name]
    slide = open_slide(path)
    dz, tiles = _openslide_tiles(path)
    compared = 0
    for lv, c, r in tiles:
        ours = np.asarray(slide.deepzoom_tile(lv, c, r))
        ref = np.asarray(dz.get_tile(lv, (c, r)).convert("RGB"))
        if ours.shape != ref.shape:  # openslide's thumbnail drops a pixel on tiny levels; ours keeps the DZ size
            continue
        assert np.array_equal(ours, ref), (name, lv, c, r)
        compared += 1
    assert compared > len(tiles) // 2
    reader = slide._direct
    assert reader is not None and 0 in reader.levels and reader.reads > 0


def test_whole_number_downsamples_read_every_level_directly(integer_pyramid: Path) -> None:
    slide = open_slide(integer_pyramid)
    slide.deepzoom_tile(slide.deepzoom().level_count - 1, 0, 0)
    assert slide._direct is not None and slide._direct.levels == [0, 1, 2]


def test_fractional_downsample_levels_stay_with_openslide(synthetic_slide: Path) -> None:
    slide = open_slide(synthetic_slide)  # 1501 x 1203: level 1 is 751 x 602, a downsample of 1.998...
    assert slide.level_downsamples[1] != round(slide.level_downsamples[1])
    slide.deepzoom_tile(slide.deepzoom().level_count - 1, 0, 0)
    assert slide._direct is not None and slide._direct.levels == [0]


def test_formats_outside_the_tiff_vendors_are_not_read_directly() -> None:
    assert open_direct(SVS, ((2220, 2967),), (1.0,), "dicom") is None
    assert open_direct(Path(__file__), ((1, 1),), (1.0,), "generic-tiff") is None  # not a TIFF: None, no error


def test_a_level_whose_pixels_differ_from_openslide_is_dropped(tmp_path: Path, integer_pyramid: Path) -> None:
    # the same geometry with other pixels: the check at first use must catch a wrong page mapping
    other = write_pyramid_tiff(tmp_path / "other.tiff", synthetic_tissue(1536, 1024, seed=9)[::-1].copy(),
                               levels=3)
    slide = open_slide(integer_pyramid)
    tiff = tifffile.TiffFile(other)
    page = tiff.pages[0]
    wrong = DirectTiffReader(other, tiff, {0: _Level(page, 1536, 1024, 256, 256, 6, 1)}, (255, 255, 255))
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
