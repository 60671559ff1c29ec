"""Convert plain PNG/JPEG images into cached pyramidal tiled TIFFs that OpenSlide reads.

UBC-OCEAN ships slides as PNGs of tens of thousands of pixels a side; decoding one whole for every tile request
would be hopeless, so each image is decoded once and written as a JPEG-tiled pyramid keyed by the source's
path, size and modification time. Writes go to a temporary file that is renamed into place, so a crash never
leaves a half pyramid that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from core.errors import SlideError

TILE = 256
MIN_LEVEL_SIDE = 512
ProgressFn = Callable[[float, str], None]


def pyramid_path(src: Path, cache_dir: Path) -> Path:
    """Where the pyramid for ``src`` lives; changes whenever the source file changes."""
    st = src.stat()
    key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / "pyramids" / f"{src.stem}-{digest}.tiff"


def _tiles(arr: np.ndarray) -> Iterator[np.ndarray]:
    h, w = arr.shape[:2]
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            tile = arr[y:y + TILE, x:x + TILE]
            if tile.shape[0] != TILE or tile.shape[1] != TILE:
                pad = np.full((TILE, TILE, 3), 255, np.uint8)
                pad[: tile.shape[0], : tile.shape[1]] = tile
                tile = pad
            yield tile


def _decode(src: Path) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = None  # UBC-OCEAN PNGs are legitimately huge
    try:
        with Image.open(src) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise SlideError(src, f"corrupt or truncated image ({exc})") from exc


def ensure_pyramid(src: Path, cache_dir: Path, progress: ProgressFn | None = None) -> Path:
    """Return the cached pyramid for ``src``, building it first if needed (reports progress 0..1)."""
    dst = pyramid_path(src, cache_dir)
    if dst.is_file():
        return dst
    report = progress or (lambda f, m: None)
    report(0.0, f"decoding {src.name}")
    level = _decode(src)
    levels = [level]
    while max(levels[-1].shape[:2]) > MIN_LEVEL_SIDE:
        prev = Image.fromarray(levels[-1])
        levels.append(np.asarray(prev.reduce(2)))
    total = sum(lv.shape[0] * lv.shape[1] for lv in levels)
    done = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tiff.part", dir=dst.parent)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=level.nbytes > 2**31) as tif:
            for i, lv in enumerate(levels):
                report(done / total, f"writing level {i} of {src.name}")
                tif.write(_tiles(lv), shape=lv.shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                          compression="jpeg", compressionargs={"level": 90}, subfiletype=0 if i == 0 else 1,
                          metadata=None)
                done += lv.shape[0] * lv.shape[1]
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    report(1.0, f"{src.name} ready")
    return dst
