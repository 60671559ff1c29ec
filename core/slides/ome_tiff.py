"""Tiled OME-TIFF pyramids (bfconvert, QuPath, tifffile exports), read directly with tifffile.

OpenSlide detects such a file as a ``generic-tiff`` of one level (it does not look in SubIFDs, where OME keeps its
reduced levels), so every thumbnail would decode the whole of level 0. ``OmeTiffSlide`` serves the OME levels
through the same ``read_region`` interface as an ``openslide.OpenSlide``, from ``core.slides.tiff_direct``'s tile reader,
so ``core.slides.slide.Slide`` wraps it like any other slide. OME-TIFFs this cannot read (untiled, one level only) are
converted instead (``core.slides.pyramid``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import Image

from core.slides.tiff_direct import DirectTiffReader, _Level, _true_downsample

MAX_SMALLEST_LEVEL_SIDE = 4096  # a pyramid whose smallest level is bigger is converted (thumbnails stay cheap)


def direct_levels(tif: Any) -> list[Any] | None:
    """The level pages of an OME-TIFF's first series when each is a tiled 8-bit RGB page and the smallest level
    is small enough for a thumbnail, else None (the file is then converted)."""
    try:
        series = tif.series[0]
        if series.axes != "YXS" or series.shape[-1] != 3:
            return None
        pages = [level.keyframe for level in series.levels]
    except (IndexError, AttributeError, ValueError):
        return None
    for page in pages:
        rgb = page.photometric == 2 or (page.photometric == 6 and page.compression == 7)
        if not (page.is_tiled and page.dtype == np.uint8 and page.samplesperpixel == 3 and page.planarconfig == 1
                and rgb):
            return None
    if max(pages[-1].imagewidth, pages[-1].imagelength) > MAX_SMALLEST_LEVEL_SIDE:
        return None
    return pages


class OmeTiffSlide(openslide.AbstractSlide):
    """A tiled OME-TIFF pyramid behind OpenSlide's slide interface (regions are RGBA, transparent outside)."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import tifffile

        super().__init__()
        self._path = Path(path)
        tif = tifffile.TiffFile(self._path)
        pages = direct_levels(tif)
        if pages is None:
            tif.close()
            raise openslide.OpenSlideUnsupportedFormatError(f"{path}: not a tiled RGB OME-TIFF pyramid")
        dims = tuple((int(p.imagewidth), int(p.imagelength)) for p in pages)
        levels = {}
        for i, (page, (w, h)) in enumerate(zip(pages, dims, strict=True)):
            levels[i] = _Level(page=page, width=w, height=h, tile_w=int(page.tilewidth), tile_h=int(page.tilelength),
                               tiles_across=-(-w // int(page.tilewidth)), downsample=_true_downsample(dims[0], (w, h)))
        self._levels = levels
        self._dims = dims
        self._reader = DirectTiffReader(self._path, tif, levels, (255, 255, 255))
        props = {openslide.PROPERTY_NAME_VENDOR: "ome-tiff", "openslide.level-count": str(len(dims))}
        if mpp is not None:
            props[openslide.PROPERTY_NAME_MPP_X] = props[openslide.PROPERTY_NAME_MPP_Y] = repr(float(mpp))
        self._props = props

    def __repr__(self) -> str:
        return f"OmeTiffSlide({str(self._path)!r})"

    @classmethod
    def detect_format(cls, filename: Any) -> str | None:
        import tifffile

        try:
            with tifffile.TiffFile(filename) as tif:
                return "ome-tiff" if tif.is_ome and direct_levels(tif) is not None else None
        except Exception:  # noqa: BLE001 (not a TIFF tifffile reads)
            return None

    def close(self) -> None:
        self._reader.close()

    @property
    def level_count(self) -> int:
        return len(self._dims)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple((lv.downsample[0] + lv.downsample[1]) / 2 for lv in self._levels.values())

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return max((i for i, ds in enumerate(self.level_downsamples) if ds <= downsample * 1.001), default=0)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGBA region of ``size`` level pixels whose top-left is ``location`` in level-0 pixels."""
        if not 0 <= level < len(self._dims):
            raise openslide.OpenSlideError(f"level {level} out of range")
        w, h = int(size[0]), int(size[1])
        ds_x, ds_y = self._levels[level].downsample
        x0, y0 = math.floor(location[0] / ds_x), math.floor(location[1] / ds_y)
        try:
            rgb = self._reader.read(level, (x0, y0), (w, h))
        except Exception as exc:  # noqa: BLE001 (undecodable tile: the caller reports it like OpenSlide's errors)
            raise openslide.OpenSlideError(f"cannot read tile data ({exc})") from exc
        lw, lh = self._dims[level]
        alpha = np.zeros((h, w), np.uint8)
        alpha[max(0, -y0):max(0, min(h, lh - y0)), max(0, -x0):max(0, min(w, lw - x0))] = 255
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
