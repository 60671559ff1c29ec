"""Tissue detection and the patch grid, checked against simple masks computed here."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DICOM, SVS, synthetic_tissue, write_pyramid_tiff
from core.errors import SlideError
from core.slides.slide import open_slide
from core.slides.tiling import patch_grid, patch_size_level0, tissue_mask, tissue_mask_from_rgb


def _simple_tissue(rgb: np.ndarray) -> np.ndarray:
    """A deliberately different tissue definition: clearly darker than the glass in any channel."""
    return rgb.astype(int).min(axis=2) < 200


def test_grid_on_real_he_slide_covers_tissue_not_background() -> None:
    s = open_slide(SVS)
    grid = patch_grid(s, patch_size=128, target_mpp=0.5, min_tissue=0.5)
    assert len(grid) > 50
    # judge every grid cell with the simple mask computed from level-0 pixels
    kept = {tuple(c) for c in grid.coords.tolist()}
    size0 = grid.patch_size_level0
    tp = fp = fn = 0
    for y in range(0, s.dimensions[1] - size0 + 1, size0):
        for x in range(0, s.dimensions[0] - size0 + 1, size0):
            frac = _simple_tissue(np.asarray(s.read_region((x, y), 0, (size0, size0)))).mean()
            inside = (x, y) in kept
            if frac > 0.7:
                tp += inside
                fn += not inside
            elif frac < 0.05:
                fp += inside
    assert tp / (tp + fn) > 0.9  # nearly all clear tissue is gridded
    assert fp == 0  # no empty-glass patch is kept


def test_tissue_mask_on_synthetic_ellipse() -> None:
    rgb = synthetic_tissue(400, 300)
    mask = tissue_mask_from_rgb(rgb)
    truth = (rgb[..., 1] < 200)
    agreement = (mask == truth).mean()
    assert agreement > 0.97
    assert not tissue_mask_from_rgb(np.full((100, 100, 3), 250, np.uint8)).any()  # blank glass


def test_small_specks_are_removed_and_holes_filled() -> None:
    rgb = np.full((400, 400, 3), 245, np.uint8)
    rgb[100:300, 100:300] = (220, 120, 170)  # tissue block
    rgb[180:220, 180:220] = (245, 245, 245)  # a hole (lumen) inside the tissue
    rgb[10:12, 10:12] = (220, 120, 170)  # dust speck
    mask = tissue_mask_from_rgb(rgb)
    assert mask[200, 200]  # hole filled
    assert not mask[10, 10]  # speck removed
    assert mask[150, 150] and not mask[350, 350]


def test_patch_size_scales_with_mpp(tmp_path) -> None:
    p40 = write_pyramid_tiff(tmp_path / "tma40x.tiff", synthetic_tissue(2048, 2048), mpp=0.25)
    p20 = write_pyramid_tiff(tmp_path / "wsi20x.tiff", synthetic_tissue(1024, 1024), mpp=0.5)
    s40, s20 = open_slide(p40), open_slide(p20)
    assert patch_size_level0(s40, 256, 0.5) == 512
    assert patch_size_level0(s20, 256, 0.5) == 256
    g40, g20 = patch_grid(s40), patch_grid(s20)
    # same physical tissue, same number of patches
    assert abs(len(g40) - len(g20)) <= 2 and len(g20) > 0
    assert (g40.coords % 512 == 0).all()


def test_grid_coordinates_are_level0_and_inside_the_slide(synthetic_slide) -> None:
    s = open_slide(synthetic_slide)
    g = patch_grid(s, patch_size=100, target_mpp=0.5)
    w, h = s.dimensions
    assert g.coords.dtype == np.int64
    assert (g.coords[:, 0] + g.patch_size_level0 <= w).all() and (g.coords[:, 1] + g.patch_size_level0 <= h).all()
    assert (g.fraction >= 0.25).all() and (g.fraction <= 1).all()
    m = tissue_mask(s)
    assert 0.2 < m.fraction < 0.6


def test_grid_needs_an_mpp(tmp_path) -> None:
    p = write_pyramid_tiff(tmp_path / "nompp.tiff", synthetic_tissue(600, 600), mpp=None)
    with pytest.raises(SlideError, match="no mpp"):
        patch_grid(open_slide(p))
    assert len(patch_grid(open_slide(p), default_mpp=0.5, patch_size=64)) > 0


def test_low_resolution_dicom_grid() -> None:
    s = open_slide(DICOM)
    g = patch_grid(s, patch_size=256, target_mpp=32.0)  # coarser than the file: 1 level-0 px ~ 29 um
    assert len(g) > 0 and g.patch_size_level0 == round(256 * 32.0 / s.mpp)
