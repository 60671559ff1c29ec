"""Slide access on real sample slides, synthetic pyramids, plain images and broken files."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DICOM, PYRAMID_TIFF, SVS, synthetic_tissue, write_pyramid_tiff
from core.errors import SlideError
from core.slides.cache import SlideCache
from core.slides.slide import find_slides, open_slide


@pytest.mark.parametrize(
    ("path", "dims", "levels", "mpp", "vendor", "assoc"),
    [
        (SVS, (2220, 2967), 1, 0.499, "aperio", ["label", "macro", "thumbnail"]),
        (PYRAMID_TIFF, (2220, 2967), 3, 0.499, "generic-tiff", []),
        (DICOM, (1152, 700), 1, 28.97, "dicom", []),
    ],
)
def test_sample_slide_metadata(path: Path, dims, levels, mpp, vendor, assoc) -> None:
    s = open_slide(path)
    assert s.dimensions == dims
    assert s.level_count == levels
    assert s.mpp == pytest.approx(mpp, rel=1e-3)
    assert s.vendor == vendor
    assert s.associated_image_names == assoc
    info = s.info()
    assert info["width"] == dims[0] and info["level_dimensions"][0] == list(dims)


def test_svs_objective_power_and_associated_image() -> None:
    s = open_slide(SVS)
    assert s.objective_power == 20
    label = s.associated_image("label")
    assert label.mode == "RGB" and min(label.size) > 10
    with pytest.raises(SlideError, match="no associated image"):
        s.associated_image("nope")


def test_mpp_none_without_resolution_tags_and_overrides(tmp_path: Path) -> None:
    p = write_pyramid_tiff(tmp_path / "nompp.tiff", synthetic_tissue(800, 600), mpp=None)
    s = open_slide(p)
    assert s.mpp is None
    assert s.mpp_or(0.25) == 0.25
    assert open_slide(p, mpp=0.3).mpp == 0.3
    with pytest.raises(SlideError, match="no mpp"):
        s.read_region_mpp((0, 0), (64, 64), 0.5)


def _expected_tile_size(level_dims: tuple[int, int], col: int, row: int, ts: int = 254, ov: int = 1):
    """Deep Zoom tile size written out independently of core.slides.slide.dz_tile_size."""
    x0 = col * ts - (ov if col > 0 else 0)
    y0 = row * ts - (ov if row > 0 else 0)
    return min(level_dims[0], (col + 1) * ts + ov) - x0, min(level_dims[1], (row + 1) * ts + ov) - y0


@pytest.mark.parametrize("path_kind", ["pyramid", "svs", "synthetic"])
def test_deepzoom_tile_sizes_every_level(path_kind: str, synthetic_slide: Path) -> None:
    path = {"pyramid": PYRAMID_TIFF, "svs": SVS, "synthetic": synthetic_slide}[path_kind]
    s = open_slide(path)
    dz = s.deepzoom()
    assert dz.level_dimensions[-1] == s.dimensions
    for level in range(dz.level_count):
        cols, rows = dz.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            tile = s.deepzoom_tile(level, col, row)
            assert tile.size == _expected_tile_size(dz.level_dimensions[level], col, row), (level, col, row)
    with pytest.raises(SlideError, match="out of range"):
        s.deepzoom_tile(dz.level_count, 0, 0)
    with pytest.raises(SlideError, match="out of range"):
        s.deepzoom_tile(dz.level_count - 1, cols, 0)


def test_read_region_at_target_mpp_has_right_physical_size() -> None:
    s = open_slide(PYRAMID_TIFF)  # 0.499 mpp, 3 levels
    target = s.read_region_mpp((400, 600), (128, 128), mpp=2.0)
    assert target.size == (128, 128)
    # the same physical area read at level 0 and shrunk must look the same
    side0 = round(128 * 2.0 / s.mpp)
    ref = s.read_region((400, 600), 0, (side0, side0)).resize((128, 128), Image.Resampling.BOX)
    diff = np.abs(np.asarray(target, float) - np.asarray(ref, float)).mean()
    assert diff < 12, diff
    # a shifted region is clearly different, so the comparison above is meaningful
    other = s.read_region((400 + side0, 600), 0, (side0, side0)).resize((128, 128), Image.Resampling.BOX)
    assert np.abs(np.asarray(target, float) - np.asarray(other, float)).mean() > diff * 2


def test_thumbnail_keeps_aspect_ratio() -> None:
    s = open_slide(SVS)
    th = s.thumbnail(300)
    assert max(th.size) == 300 and th.mode == "RGB"
    assert th.size[0] / th.size[1] == pytest.approx(2220 / 2967, rel=0.02)


def test_plain_png_is_converted_once_and_reads_match(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1300, 0:1700]
    rgb = np.stack([(xx % 256), (yy % 256), ((xx + yy) // 8 % 256)], -1).astype(np.uint8)
    png = tmp_path / "core_01.png"
    Image.fromarray(rgb).save(png)
    calls: list[float] = []
    s = open_slide(png, cache_dir=tmp_path / "cache", progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == 1.0
    assert s.dimensions == (1700, 1300) and s.level_count >= 2
    assert s.mpp is None and s.vendor == "image"
    region = np.asarray(s.read_region((300, 200), 0, (64, 64)), float)
    assert np.abs(region - rgb[200:264, 300:364]).mean() < 6
    pyramids = list((tmp_path / "cache" / "pyramids").glob("*.tiff"))
    assert len(pyramids) == 1
    mtime = pyramids[0].stat().st_mtime_ns
    calls.clear()
    open_slide(png, cache_dir=tmp_path / "cache", progress=lambda f, m: calls.append(f))
    assert calls == [] and pyramids[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not list((tmp_path / "cache" / "pyramids").glob("*.part"))


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    random_svs = tmp / "random.svs"
    random_svs.write_bytes(rng.bytes(50_000))
    random_png = tmp / "random.png"
    random_png.write_bytes(rng.bytes(5_000))
    truncated_svs = tmp / "truncated.svs"
    truncated_svs.write_bytes(SVS.read_bytes()[: SVS.stat().st_size // 2])
    truncated_tiff = tmp / "truncated.tiff"
    truncated_tiff.write_bytes(PYRAMID_TIFF.read_bytes()[: PYRAMID_TIFF.stat().st_size // 3])
    truncated_png = tmp / "truncated.png"
    buf = tmp / "full.png"
    Image.fromarray(synthetic_tissue(400, 300)).save(buf)
    truncated_png.write_bytes(buf.read_bytes()[:2000])
    text = tmp / "notes.txt"
    text.write_text("not a slide")
    empty = tmp / "empty.svs"
    empty.write_bytes(b"")
    folder = tmp / "folder.svs"
    folder.mkdir()
    return {
        "missing": (tmp / "nope.svs", "not found"),
        "directory": (folder, "directory"),
        "empty": (empty, "empty"),
        "random bytes svs": (random_svs, "unsupported format|corrupt"),
        "random bytes png": (random_png, "corrupt|truncated"),
        "truncated svs": (truncated_svs, "corrupt|truncated"),
        "truncated tiff": (truncated_tiff, "corrupt|truncated"),
        "truncated png": (truncated_png, "corrupt|truncated"),
        "unsupported": (text, "unsupported format"),
    }


def test_bad_input_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    for name, (path, reason) in _bad_files(tmp_path).items():
        with pytest.raises(SlideError) as err:
            open_slide(path, cache_dir=tmp_path / "cache")
        msg = str(err.value)
        assert str(path) in msg, name
        assert "\n" not in msg, name
        assert any(r in msg for r in reason.split("|")), (name, msg)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_slide_cache_shares_handles_across_threads() -> None:
    cache = SlideCache(maxsize=2)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(SVS))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g is got[0] for g in got)
    cache.get(PYRAMID_TIFF)
    cache.get(DICOM)
    assert len(cache) == 2
    assert cache.get(SVS) is not got[0]  # evicted, reopened


def test_find_slides_one_id_per_file_and_dicom_folder(tmp_path: Path) -> None:
    shutil.copytree(DICOM.parent, tmp_path / "dicom-case")
    shutil.copy(SVS, tmp_path / "a.svs")
    (tmp_path / "readme.txt").write_text("x")
    found = find_slides(tmp_path)
    assert set(found) == {"a", "dicom-case"}
