"""`python -m core info` and `patches`, run as a user would, including the error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DICOM, PYRAMID_TIFF, SVS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [SVS, PYRAMID_TIFF, DICOM])
def test_info_json_on_each_sample_slide(path: Path) -> None:
    r = run_cli("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["width"] > 0 and info["level_count"] == len(info["level_dimensions"])
    assert set(info) >= {"mpp", "objective_power", "vendor", "associated_images"}


def test_info_text_and_null_mpp(tmp_path: Path) -> None:
    from conftest import synthetic_tissue, write_pyramid_tiff

    r = run_cli("info", str(SVS))
    assert r.returncode == 0 and "2220 x 2967" in r.stdout and "aperio" in r.stdout
    p = write_pyramid_tiff(tmp_path / "nompp.tiff", synthetic_tissue(600, 500), mpp=None)
    info = json.loads(run_cli("info", str(p), "--json").stdout)
    assert info["mpp"] is None


def test_patches_counts_and_saves_png(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    r = run_cli("patches", str(SVS), "--png", str(out))
    assert r.returncode == 0, r.stderr
    assert "tissue patches" in r.stdout and out.stat().st_size > 1000
    n = int(r.stdout.split()[0])
    assert 10 < n < 100  # 2220x2967 at 0.5 mpp gives 8x11 cells, about 40% tissue


@pytest.mark.parametrize("kind", ["missing", "random", "directory"])
def test_bad_input_exit_2_one_line_no_traceback(tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "missing.svs", "random": tmp_path / "random.ndpi", "directory": tmp_path}[kind]
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 100)
    r = run_cli("info", str(path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]


def test_info_on_tiffs_openslide_cannot_read(tmp_path: Path) -> None:
    """A strip TIFF (ImageJ, a scanner's export tool) is converted, not refused; a TIFF whose compression cannot be
    decoded gets one line naming the file and the compression."""
    import numpy as np
    import tifffile

    rgb = np.full((300, 400, 3), (200, 120, 160), np.uint8)
    strip = tmp_path / "export.tif"
    tifffile.imwrite(strip, rgb, photometric="rgb", rowsperstrip=8)
    r = run_cli("info", str(strip), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["width"], info["height"], info["vendor"]) == (400, 300, "image")
    lzma = tmp_path / "lzma.tif"
    tifffile.imwrite(lzma, rgb, photometric="rgb", compression="lzma")
    r = run_cli("info", str(lzma))
    assert r.returncode == 2 and r.stderr.strip() == (f"error: {lzma}: unsupported TIFF compression LZMA (34925): "
                                                      "re-save it with JPEG, LZW, deflate or no compression")
