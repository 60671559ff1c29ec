"""Direct reads of tiled TIFF levels for Deep Zoom tiles: decode only the tiles a region needs.

OpenSlide's ``read_region`` paints every pixel through cairo, which costs about 11 ns a pixel even when its tile
cache is warm (0.75 ms for one 256-px Deep Zoom tile on this machine, against 0.13 ms to decode the JPEG tile
itself), and about four times that where a region starts between pixels of its level, which it resamples
bilinearly. For slides whose OpenSlide levels are plain tiled TIFF pages (OpenSlide's ``generic-tiff`` and
``aperio`` vendors, which include the pyramids SlideLens writes for PNG/JPEG images), this module reads the
compressed tiles with ``os.pread``, decodes them with tifffile/imagecodecs, keeps decoded tiles in a process-wide
LRU and copies regions out of them. ``core.slides.slide`` turns those regions into Deep Zoom tiles.

A level is served only after a check at first use: a region read both ways must match OpenSlide's pixels (exactly
where both read whole pixels; in 8-px block means on levels whose downsample is fractional). Every failure (an
unknown layout, an undecodable tile) makes the caller fall back to OpenSlide.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIRECT_VENDORS = ("generic-tiff", "aperio")
TILE_CACHE_BYTES = 256 << 20  # decoded tiles, all slides together


@dataclass(frozen=True)
class _Level:
    page: Any  # tifffile.TiffPage
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    downsample: tuple[float, float]  # level-0 pixels per level pixel, (x, y): see ``_true_downsample``


class _DecodedTiles:
    """A byte-bounded LRU of decoded tiles shared by every reader in the process (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def drop(self, reader_id: int) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == reader_id]:
                self._bytes -= self._items.pop(key).nbytes


_tiles = _DecodedTiles(TILE_CACHE_BYTES)
_reader_ids = itertools.count(1)


def _release(reader_id: int, fd: int, tiff: Any) -> None:
    _tiles.drop(reader_id)
    for closer in (lambda: os.close(fd), tiff.close):
        with contextlib.suppress(OSError):
            closer()


class DirectTiffReader:
    """RGB regions of a slide's tiled TIFF levels, read without OpenSlide. Build it with ``open_direct``."""

    def __init__(self, path: Path, tiff: Any, levels: dict[int, _Level], background: tuple[int, int, int]) -> None:
        self.path = path
        self._tiff = tiff
        self._levels = levels
        self._background = np.array(background, dtype=np.uint8)
        self._fd = os.open(path, os.O_RDONLY)
        self._id = next(_reader_ids)
        self.reads = 0  # regions served (tests and benchmarks read it)
        for lv in levels.values():
            _ = lv.page.decode  # tifffile builds the decoder lazily: do it once, before threads share the page
        # evicted Slide handles are left to the garbage collector: release the file and the tiles with it
        self._finalizer = weakref.finalize(self, _release, self._id, self._fd, tiff)

    @property
    def levels(self) -> list[int]:
        """OpenSlide levels this reader serves."""
        return sorted(self._levels)

    def downsample(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per pixel of ``level`` along x and y."""
        return self._levels[level].downsample

    def read(self, level: int, l_xy: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """The ``size`` (w, h) region at level pixel ``l_xy`` as an (h, w, 3) uint8 array; what lies outside the
        level is background (glass)."""
        lv = self._levels[level]
        x0, y0 = l_xy
        w, h = size
        if w <= 0 or h <= 0:
            raise ValueError(f"empty region {size}")
        out = np.empty((h, w, 3), dtype=np.uint8)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, lv.width), min(y0 + h, lv.height)
        if ix0 >= ix1 or iy0 >= iy1:
            out[:] = self._background
            return out
        if (ix0, iy0, ix1, iy1) != (x0, y0, x0 + w, y0 + h):
            out[:] = self._background
        for ty in range(iy0 // lv.tile_h, (iy1 - 1) // lv.tile_h + 1):
            for tx in range(ix0 // lv.tile_w, (ix1 - 1) // lv.tile_w + 1):
                tile = self._tile(level, lv, ty * lv.tiles_across + tx)
                tile_x, tile_y = tx * lv.tile_w, ty * lv.tile_h
                sx0, sy0 = max(ix0, tile_x), max(iy0, tile_y)
                sx1, sy1 = min(ix1, tile_x + lv.tile_w), min(iy1, tile_y + lv.tile_h)
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = tile[sy0 - tile_y:sy1 - tile_y, sx0 - tile_x:sx1 - tile_x]
        self.reads += 1
        return out

    def _tile(self, level: int, lv: _Level, index: int) -> np.ndarray:
        key = (self._id, level, index)
        tile = _tiles.get(key)
        if tile is not None:
            return tile
        page = lv.page
        count = int(page.databytecounts[index])
        if count == 0:  # a tile the scanner never wrote: glass, as OpenSlide paints it
            tile = np.broadcast_to(self._background, (lv.tile_h, lv.tile_w, 3))
        else:
            data = os.pread(self._fd, count, int(page.dataoffsets[index]))
            decoded = page.decode(data, index, jpegtables=page.jpegtables)[0]
            tile = decoded.reshape(decoded.shape[-3:])
            if tile.shape[0] < lv.tile_h or tile.shape[1] < lv.tile_w:  # some writers crop edge tiles
                padded = np.empty((lv.tile_h, lv.tile_w, 3), dtype=np.uint8)
                padded[:] = self._background
                padded[:tile.shape[0], :tile.shape[1]] = tile
                tile = padded
        _tiles.put(key, tile)
        return tile

    def drop_level(self, level: int) -> None:
        self._levels.pop(level, None)

    def close(self) -> None:
        self._finalizer()


def open_direct(path: Path, level_dimensions: tuple[tuple[int, int], ...], vendor: str,
                background: tuple[int, int, int] = (255, 255, 255)) -> DirectTiffReader | None:
    """A direct reader for the levels of ``path`` that are whole tiled 8-bit RGB TIFF pages, or None.

    Only OpenSlide vendors whose levels are exactly such pages qualify (``DIRECT_VENDORS``); a level qualifies when
    exactly one such page has its size. The caller checks the pixels before use.
    """
    if vendor not in DIRECT_VENDORS:
        return None
    try:
        import tifffile

        tiff = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 (any reason tifffile cannot parse it: OpenSlide still can)
        log.info("%s: no direct TIFF reads (%s)", path, exc)
        return None
    try:
        levels = _match_levels(tiff, level_dimensions)
        if not levels:
            tiff.close()
            return None
        return DirectTiffReader(Path(path), tiff, levels, background)
    except Exception as exc:  # noqa: BLE001
        log.info("%s: no direct TIFF reads (%s)", path, exc)
        tiff.close()
        return None


def _match_levels(tiff: Any, dims: tuple[tuple[int, int], ...]) -> dict[int, _Level]:
    by_size: dict[tuple[int, int], list[Any]] = {}
    for page in tiff.pages:
        if not getattr(page, "is_tiled", False) or page.dtype != np.uint8 or page.planarconfig != 1:
            continue
        rgb = page.photometric == 2 or (page.photometric == 6 and page.compression == 7)  # RGB, or JPEG YCbCr
        if page.samplesperpixel != 3 or not rgb:
            continue
        by_size.setdefault((page.imagewidth, page.imagelength), []).append(page)
    levels: dict[int, _Level] = {}
    for level, (w, h) in enumerate(dims):
        pages = by_size.get((w, h), [])
        if len(pages) != 1:
            continue
        page = pages[0]
        levels[level] = _Level(page=page, width=w, height=h, tile_w=page.tilewidth, tile_h=page.tilelength,
                               tiles_across=-(-w // page.tilewidth), downsample=_true_downsample(dims[0], (w, h)))
    return levels


def _true_downsample(level0: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Level-0 pixels per level pixel. A level made by shrinking level 0 k times (its size rounded either way, as
    every pyramid writer does) has a downsample of exactly k; OpenSlide reports the mean of the two size ratios
    instead (1.9985 for 1501 -> 751), which puts far pixels up to half a pixel off. Other levels: the size ratios."""
    (w0, h0), (w, h) = level0, size
    k = round(w0 / w)
    if k >= 1 and w in (w0 // k, -(-w0 // k)) and h in (h0 // k, -(-h0 // k)):
        return float(k), float(k)
    return w0 / w, h0 / h
