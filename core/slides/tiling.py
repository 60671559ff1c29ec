"""Tissue detection on a thumbnail and the patch grid at a target resolution.

All coordinates returned are level-0 pixels (top-left corners). A patch of ``patch_size`` pixels at
``target_mpp`` covers ``patch_size * target_mpp / slide_mpp`` level-0 pixels, so a 40x TMA (0.25 mpp) and a
20x slide (0.5 mpp) are sampled at the same physical size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.filters import threshold_otsu

from core.errors import SlideError
from core.slides.slide import Slide


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask of a thumbnail; ``downsample`` is level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass(frozen=True)
class PatchGrid:
    """Tissue patches: level-0 top-left ``coords`` (N x 2, int64), each with its tissue ``fraction``."""

    coords: np.ndarray
    fraction: np.ndarray
    patch_size_level0: int
    patch_size: int
    target_mpp: float

    def __len__(self) -> int:
        return len(self.coords)


def tissue_mask_from_rgb(rgb: np.ndarray, min_area_frac: float = 0.0005) -> np.ndarray:
    """Tissue = saturated and not white: Otsu on HSV saturation, holes filled, specks removed."""
    img = Image.fromarray(rgb.astype(np.uint8)).convert("HSV")
    hsv = np.asarray(img)
    sat = hsv[..., 1].astype(np.float32)
    val = hsv[..., 2].astype(np.float32)
    if sat.max() - sat.min() < 8:  # flat image: no contrast to threshold
        return np.zeros(sat.shape, bool)
    thr = max(float(threshold_otsu(sat)), 15.0)  # never call faintly tinted glass tissue
    mask = (sat > thr) & (val > 30)  # very dark = pen marks / slide edges
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        min_area = max(4, min_area_frac * mask.size)
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_area
        mask = keep[labels]
    return mask


def tissue_mask(slide: Slide, thumbnail_size: int = 2048) -> TissueMask:
    """Tissue mask of ``slide`` computed on a thumbnail whose longest side is ``thumbnail_size``."""
    thumb = slide.thumbnail(thumbnail_size)
    rgb = np.asarray(thumb)
    return TissueMask(tissue_mask_from_rgb(rgb), slide.dimensions[0] / rgb.shape[1])


def patch_size_level0(slide: Slide, patch_size: int, target_mpp: float, default_mpp: float | None = None) -> int:
    """Side of a patch in level-0 pixels for ``patch_size`` pixels at ``target_mpp``."""
    mpp = slide.mpp_or(default_mpp)
    if mpp is None:
        raise SlideError(slide.path, "no mpp in the file; set one for this slide or a default_mpp to tile it")
    return max(1, int(round(patch_size * target_mpp / mpp)))


MIN_THUMBNAIL = 1024  # below this the mask's closing and speck removal start to change which patches are kept
MASK_PX_PER_PATCH = 16  # mask pixels along a patch side: plenty for a tissue fraction per patch


def grid_thumbnail_size(dimensions: tuple[int, int], size0: int, cap: int = 2048) -> int:
    """Longest side of the tissue-detection thumbnail for a grid of ``size0`` level-0 pixels: ``cap`` for a large
    slide, less for a small image whose patches ``cap`` would over-resolve (on 4-6k pixel demo slides 1024 keeps the
    same patches within 1-2% at a fifth of the time)."""
    cells = max(dimensions) / max(size0, 1)
    return int(min(cap, max(MIN_THUMBNAIL, MASK_PX_PER_PATCH * cells)))


def patch_grid(slide: Slide, patch_size: int = 256, target_mpp: float = 0.5, min_tissue: float = 0.25,
               default_mpp: float | None = None, thumbnail_size: int = 2048,
               mask: TissueMask | None = None) -> PatchGrid:
    """Non-overlapping full patches whose tissue fraction is at least ``min_tissue`` (the tissue mask from a
    thumbnail of at most ``thumbnail_size`` pixels, see ``grid_thumbnail_size``)."""
    size0 = patch_size_level0(slide, patch_size, target_mpp, default_mpp)
    mask = mask or tissue_mask(slide, grid_thumbnail_size(slide.dimensions, size0, thumbnail_size))
    w0, h0 = slide.dimensions
    xs = np.arange(0, w0 - size0 + 1, size0)
    ys = np.arange(0, h0 - size0 + 1, size0)
    if len(xs) == 0 or len(ys) == 0:
        return PatchGrid(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), size0, patch_size, target_mpp)
    frac = patch_fractions(mask, xs, ys, size0)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    keep = frac >= min_tissue
    coords = np.stack([gx[keep], gy[keep]], axis=1).astype(np.int64)
    return PatchGrid(coords, frac[keep].astype(np.float32), size0, patch_size, target_mpp)


def patch_fractions(mask: TissueMask, xs: np.ndarray, ys: np.ndarray, size0: int) -> np.ndarray:
    """Tissue fraction of each grid cell (len(ys) x len(xs)) from the mask, via an integral image."""
    m = mask.mask.astype(np.float64)
    mh, mw = m.shape
    integral = np.zeros((mh + 1, mw + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    ds = mask.downsample

    def span(starts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.floor(starts / ds).astype(int), 0, limit)
        b = np.clip(np.ceil((starts + size0) / ds).astype(int), 0, limit)
        return a, np.maximum(b, np.minimum(a + 1, limit))

    x0, x1 = span(xs, mw)
    y0, y1 = span(ys, mh)
    Y0, X0 = np.meshgrid(y0, x0, indexing="ij")
    Y1, X1 = np.meshgrid(y1, x1, indexing="ij")
    total = integral[Y1, X1] - integral[Y0, X1] - integral[Y1, X0] + integral[Y0, X0]
    area = np.maximum((Y1 - Y0) * (X1 - X0), 1)
    return total / area


def draw_grid(slide: Slide, grid: PatchGrid, max_size: int = 1024, mask: TissueMask | None = None) -> Image.Image:
    """Thumbnail with the tissue outline (if given) and each kept patch drawn as a square."""
    thumb = slide.thumbnail(max_size).convert("RGB")
    scale = thumb.size[0] / slide.dimensions[0]
    if mask is not None:
        m = Image.fromarray(mask.mask.astype(np.uint8) * 255).resize(thumb.size, Image.Resampling.NEAREST)
        edge = np.asarray(m) > 0
        edge = edge ^ ndimage.binary_erosion(edge, iterations=1)
        arr = np.asarray(thumb).copy()
        arr[edge] = (0, 160, 0)
        thumb = Image.fromarray(arr)
    draw = ImageDraw.Draw(thumb)
    s = grid.patch_size_level0 * scale
    for x, y in grid.coords:
        draw.rectangle([x * scale, y * scale, x * scale + s, y * scale + s], outline=(20, 60, 220), width=1)
    return thumb
