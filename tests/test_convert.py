"""Streaming conversion (libvips) of PNG/JPEG and TIFFs OpenSlide cannot read; OME-TIFF pyramids read directly;
bad input during conversion: one line naming the file, no partial pyramid, the rest of a batch still converts."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from core.errors import SlideError
from core.slides.pyramid import build_pyramid_whole_decode, ensure_pyramid, pyramid_path, remove_stale_parts
from core.slides.slide import needs_conversion, open_slide

ROOT = Path(__file__).resolve().parents[1]


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth stain-like colour fields with some fine texture (what JPEG at Q90 keeps well)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.sin(xx / 97 + rng.random() * 6) * np.cos(yy / 71) + 0.3 * np.sin((xx + yy) / 13)
    rgb = np.stack([215 - 40 * base, 150 - 60 * base, 190 - 30 * base], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def png_with_size(src: bytes, width: int, height: int) -> bytes:
    """``src`` (a PNG) with its IHDR rewritten to claim ``width`` x ``height`` (checksum fixed, so it looks valid)."""
    ihdr = src[12:16] + struct.pack(">II", width, height) + src[24:29]
    return src[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + src[33:]


def test_streamed_png_matches_the_whole_decode_path(tmp_path: Path) -> None:
    rgb = texture(2400, 1700)  # 4 Mpx
    png = tmp_path / "wsi_1.png"
    Image.fromarray(rgb).save(png)
    old = build_pyramid_whole_decode(png, tmp_path / "old" / "wsi_1.tiff")
    calls: list[float] = []
    s = open_slide(png, cache_dir=tmp_path / "cache", progress=lambda f, m: calls.append(f))
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls) and len(calls) > 3
    ref = openslide.OpenSlide(str(old))
    assert s.dimensions == ref.dimensions == (2400, 1700)
    assert s.read_path.parent == tmp_path / "cache" / "pyramids" and s.vendor == "image"
    for level in (0, 1):
        w, h = s.level_dimensions[level]
        assert (w, h) == ref.level_dimensions[level]
        mine = np.asarray(s.read_region((0, 0), level, (w, h)), np.float32)
        theirs = np.asarray(ref.read_region((0, 0), level, (w, h)).convert("RGB"), np.float32)
        assert np.abs(mine - theirs).mean() < 2.0, level
    assert np.abs(np.asarray(s.read_region((0, 0), 0, (2400, 1700)), np.float32) - rgb).mean() < 2.5
    assert max(s.level_dimensions[-1]) <= 256  # libvips goes down to one tile
    tiff = tifffile.TiffFile(s.read_path)
    page = tiff.pages.first
    assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256) and page.compression == 7


def test_mpp_goes_into_the_resolution_tags_and_file_mpp_stays_the_sources(tmp_path: Path) -> None:
    png = tmp_path / "tma_3.png"
    Image.fromarray(texture(600, 500)).save(png)
    s = open_slide(png, mpp=0.25, cache_dir=tmp_path / "c1")
    assert s.mpp == 0.25 and s.file_mpp is None  # the PNG records none: the cohort states it
    assert openslide.OpenSlide(str(s.read_path)).properties["openslide.mpp-x"] == "0.25"
    plain = open_slide(png, cache_dir=tmp_path / "c2")
    assert plain.mpp is None and "openslide.mpp-x" not in openslide.OpenSlide(str(plain.read_path)).properties


def test_strip_tiff_converts_and_keeps_its_resolution(tmp_path: Path) -> None:
    rgb = texture(900, 700)
    strip = tmp_path / "imagej.tif"
    tifffile.imwrite(strip, rgb, photometric="rgb", rowsperstrip=32, compression="lzw",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert openslide.OpenSlide.detect_format(str(strip)) is None  # what used to be 'unsupported format'
    assert needs_conversion(strip, tmp_path / "cache")
    s = open_slide(strip, cache_dir=tmp_path / "cache")
    assert s.dimensions == (900, 700) and s.mpp == pytest.approx(0.5) and s.read_path != strip
    assert np.abs(np.asarray(s.read_region((100, 100), 0, (300, 200)), np.float32) - rgb[100:300, 100:400]).mean() < 3
    assert not needs_conversion(strip, tmp_path / "cache")


def test_tiled_ome_tiff_pyramid_is_read_directly(tmp_path: Path) -> None:
    rgb = texture(1200, 900)
    ome = tmp_path / "case_9.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tw:
        tw.write(rgb, subifds=2, tile=(256, 256), photometric="rgb", compression="jpeg",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        for k in (2, 4):
            tw.write(np.asarray(Image.fromarray(rgb).reduce(k)), tile=(256, 256), photometric="rgb",
                     compression="jpeg", subfiletype=1)
    assert not needs_conversion(ome, tmp_path / "cache")
    s = open_slide(ome, cache_dir=tmp_path / "cache")
    assert s.image_id == "case_9" and s.vendor == "ome-tiff" and s.read_path == ome
    assert s.level_dimensions == ((1200, 900), (600, 450), (300, 225)) and s.mpp == pytest.approx(0.25)
    assert not (tmp_path / "cache").exists()  # nothing converted
    region = np.asarray(s.read_region((400, 300), 1, (128, 128)), np.float32)
    expected = np.asarray(Image.fromarray(rgb).reduce(2), np.float32)[150:278, 200:328]
    assert np.abs(region - expected).mean() < 3
    dz = s.deepzoom()
    assert s.deepzoom_tile(dz.level_count - 1, 1, 1).size == (256, 256)
    assert s.thumbnail(100).size == (100, 75)


def test_untiled_ome_tiff_is_converted(tmp_path: Path) -> None:
    ome = tmp_path / "flat.ome.tif"
    tifffile.imwrite(ome, texture(500, 400), photometric="rgb", ome=True)
    s = open_slide(ome, cache_dir=tmp_path / "cache")
    assert s.dimensions == (500, 400) and s.read_path.parent.name == "pyramids"


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (400, 500, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    truncated = tmp / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    lies = tmp / "lies.png"  # says 500x900: the data ends after 400 rows
    lies.write_bytes(png_with_size(data, 500, 900))
    huge = tmp / "huge.png"  # says 60000x60000: no file of this size can hold that
    huge.write_bytes(png_with_size(data, 60000, 60000))
    zstd = tmp / "zstd.tif"
    tifffile.imwrite(zstd, texture(300, 200), photometric="rgb", compression="zstd")
    return {"truncated": (truncated, "truncated"), "lies": (lies, "header declares"),
            "huge": (huge, "more than a file"), "zstd": (zstd, "unsupported TIFF compression ZSTD")}


def test_bad_input_one_line_naming_the_file_and_no_partial_pyramid(tmp_path: Path) -> None:
    for name, (path, reason) in _bad_inputs(tmp_path).items():
        with pytest.raises(SlideError) as err:
            open_slide(path, cache_dir=tmp_path / "cache")
        msg = str(err.value)
        assert msg.startswith(str(path)) and reason in msg and "\n" not in msg, (name, msg)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_stale_parts_of_dead_processes_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "pyramids"
    folder.mkdir()
    (folder / "x-1.tiff.999999999.0a1b2c3d.part").write_bytes(b"half")  # no such process
    (folder / "y-1.tiff.1.0a1b2c3d.part").write_bytes(b"init's")  # pid 1 is alive: another conversion, left alone
    assert remove_stale_parts(folder) == 1
    assert [p.name for p in folder.iterdir()] == ["y-1.tiff.1.0a1b2c3d.part"]


def test_two_threads_opening_one_new_image_convert_it_once(tmp_path: Path) -> None:
    import threading

    png = tmp_path / "shared.png"
    Image.fromarray(texture(1500, 1200)).save(png)
    starts: list[float] = []
    got: list[Path] = []

    def open_it() -> None:
        got.append(ensure_pyramid(png, tmp_path / "cache", lambda f, m: starts.append(f) if f == 0.0 else None))

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and len(set(got)) == 1 and starts == [0.0]  # one conversion, the others waited for it
    assert open_slide(png, cache_dir=tmp_path / "cache").dimensions == (1500, 1200)


def test_pyramid_is_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(texture(300, 200)).save(png)
    first = ensure_pyramid(png, tmp_path / "cache")
    Image.fromarray(texture(300, 200, seed=5)).save(png)
    assert pyramid_path(png, tmp_path / "cache") != first
    assert ensure_pyramid(png, tmp_path / "cache").is_file()


def _cohort(tmp: Path, images: dict[str, np.ndarray]) -> Path:
    slides = tmp / "train_images"
    slides.mkdir()
    for image_id, rgb in images.items():
        Image.fromarray(rgb).save(slides / f"{image_id}.png")
    toml = tmp / "cohort.toml"
    toml.write_text('name = "t"\nslides = "train_images"\n')
    return toml


def _convert(toml: Path, *extra: str, ulimit_kb: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "core", "convert", "--cohort", str(toml), *extra]
    if ulimit_kb is not None:  # a full disk: writes past the limit fail with EFBIG
        cmd = ["bash", "-c", f'ulimit -f {ulimit_kb}; exec "$@"', "bash", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_convert_command_full_disk_and_bad_files_do_not_stop_the_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    toml = _cohort(tmp_path, {"small_1": texture(300, 200), "small_2": texture(320, 240, 1),
                              "noisy": rng.integers(0, 255, (1500, 1500, 3), dtype=np.uint8)})
    bad = _bad_inputs(tmp_path / "train_images")
    (tmp_path / "train_images" / "good.png").unlink()
    r = _convert(toml, "--workers", "2", ulimit_kb=400)  # the noisy image's pyramid needs > 400 KB
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5, r.stderr
    noisy = str(tmp_path / "train_images" / "noisy.png")
    assert any(e.startswith(f"error: {noisy}: disk full (or file-size limit)") for e in errors), errors
    for path, reason in bad.values():
        assert any(e.startswith(f"error: {path}:") and reason in e for e in errors), (path, errors)
    pyramids = tmp_path / ".cache" / "pyramids"
    assert sorted(p.name.split("-")[0] for p in pyramids.iterdir()) == ["small_1", "small_2"]  # no .part left
    assert "converted 2" in r.stderr
    r = _convert(toml, "--only", "noisy,small_1")  # resumable: no limit now, small_1 already done
    assert r.returncode == 0, r.stderr
    assert "converted 1" in r.stderr and "already done 1" in r.stderr


def test_jpeg_header_and_truncated_jpeg(tmp_path: Path) -> None:
    from core.slides.image_headers import read_header

    jpg = tmp_path / "core_2.jpg"
    Image.fromarray(texture(640, 480)).save(jpg, quality=90)
    header = read_header(jpg)
    assert (header.width, header.height, header.route) == (640, 480, "convert")
    s = open_slide(jpg, cache_dir=tmp_path / "cache")
    assert s.dimensions == (640, 480)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpg.read_bytes()[:5000])
    with pytest.raises(SlideError, match="truncated JPEG"):
        open_slide(cut, cache_dir=tmp_path / "cache")
