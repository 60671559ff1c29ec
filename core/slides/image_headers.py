"""What a slide file is and how big, from its header alone (no pixels decoded).

``cohort init`` reads only these headers, so a folder of 538 UBC-OCEAN PNGs (550 GB) is checked in seconds; the
route tells ``core.slides.slide`` how the file is read: through OpenSlide, directly (tiled OME-TIFF pyramids), or after
a streaming conversion into a cached pyramid (PNG, JPEG, TIFFs OpenSlide does not read).
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import openslide

from core.errors import SlideError

OPENSLIDE, DIRECT, CONVERT = "openslide", "direct", "convert"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
MAX_DEFLATE_RATIO = 1032  # deflate cannot shrink data more than this: a smaller file cannot hold the header's size
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# TIFF compressions the libvips wheel decodes (libtiff without zstd, lzma, JPEG 2000, PNG or JPEG XL codecs)
CONVERTIBLE_TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946, 50001}
TAIL_SEARCH = 1 << 16
PLAUSIBLE_MPP = (0.05, 50.0)  # microscopy: anything outside is a screen resolution (72 dpi) or garbage


@dataclass(frozen=True)
class SlideHeader:
    """A slide file's format, how SlideLens reads it, and its level-0 size when the header gives it."""

    path: Path
    kind: str  # "png", "jpeg", "tiff", "ome-tiff" or an OpenSlide vendor ("aperio", "generic-tiff", ...)
    route: str  # OPENSLIDE, DIRECT (tiled OME-TIFF pyramid) or CONVERT (streamed into a cached pyramid)
    width: int | None = None  # None: only OpenSlide knows (it reads the file's own directory)
    height: int | None = None
    mpp: float | None = None  # recorded in the header (TIFF resolution, OME PhysicalSizeX), when plausible

    @property
    def megapixels(self) -> float:
        return (self.width or 0) * (self.height or 0) / 1e6


def check_file(path: Path) -> None:
    """``SlideError`` for a path that is missing, a folder or empty."""
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        raise SlideError(path, "is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(path, "file is empty")


def _ends_with(fh, size: int, marker: bytes) -> bool:
    """Whether ``marker`` lies in the last 64 KB (some writers append a few bytes after the end chunk)."""
    fh.seek(max(0, size - TAIL_SEARCH))
    return marker in fh.read(TAIL_SEARCH)


def png_header(path: Path) -> SlideHeader:
    """Size of a PNG from its IHDR chunk; ``SlideError`` for a bad signature or CRC, a missing end (truncated
    file) or a size the file is too small to hold."""
    with open(path, "rb") as fh:
        head = fh.read(33)
        size = os.fstat(fh.fileno()).st_size
        if head[:8] != PNG_SIGNATURE:
            raise SlideError(path, "corrupt: not a PNG file (bad signature)")
        if len(head) < 33 or head[12:16] != b"IHDR":
            raise SlideError(path, "corrupt or truncated PNG: no IHDR header")
        if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
            raise SlideError(path, "corrupt PNG: its IHDR header fails its checksum")
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        if not _ends_with(fh, size, PNG_IEND):
            raise SlideError(path, f"truncated PNG: the file ({size:,} bytes) stops before its IEND end chunk")
    if width == 0 or height == 0 or colour not in PNG_CHANNELS:
        raise SlideError(path, f"corrupt PNG header (size {width}x{height}, colour type {colour})")
    raw = height * (1 + math.ceil(width * depth * PNG_CHANNELS[colour] / 8))
    if size * MAX_DEFLATE_RATIO < raw:
        raise SlideError(path, f"corrupt PNG: its header says {width}x{height} pixels, more than a file of "
                               f"{size:,} bytes can hold")
    return SlideHeader(path, "png", CONVERT, width, height)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_header(path: Path) -> SlideHeader:
    """Size of a JPEG from its SOF marker; ``SlideError`` when there is none or the file is truncated."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(2) != b"\xff\xd8":
            raise SlideError(path, "corrupt: not a JPEG file (no start-of-image marker)")
        while True:
            marker = fh.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                raise SlideError(path, "corrupt or truncated JPEG: no frame header")
            if marker[1] in (0x01, 0xFF) or 0xD0 <= marker[1] <= 0xD7:
                if marker[1] == 0xFF:
                    fh.seek(-1, os.SEEK_CUR)  # fill byte
                continue
            seg = fh.read(2)
            if len(seg) < 2:
                raise SlideError(path, "truncated JPEG: the file stops in its header")
            length = struct.unpack(">H", seg)[0]
            if marker[1] in _JPEG_SOF:
                body = fh.read(5)
                if len(body) < 5:
                    raise SlideError(path, "truncated JPEG: the file stops in its frame header")
                height, width = struct.unpack(">HH", body[1:5])
                break
            fh.seek(length - 2, os.SEEK_CUR)
        if not _ends_with(fh, size, b"\xff\xd9"):
            raise SlideError(path, f"truncated JPEG: the file ({size:,} bytes) stops before its end marker")
    if width == 0 or height == 0:
        raise SlideError(path, f"corrupt JPEG header (size {width}x{height})")
    return SlideHeader(path, "jpeg", CONVERT, width, height)


def _tiff_mpp(page) -> float | None:  # noqa: ANN001 (a tifffile.TiffPage)
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den or unit not in (2, 3):
        return None
    return _plausible((2.54e4 if unit == 2 else 1e4) * den / num)


def _ome_mpp(xml: str | None) -> float | None:
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml or "")
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml or "")
    if match is None:
        return None
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
    try:
        return _plausible(float(match.group(1)) * scale) if scale is not None else None
    except ValueError:
        return None


def _plausible(mpp: float) -> float | None:
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def tiff_header(path: Path, vendor: str | None) -> SlideHeader:
    """A TIFF OpenSlide does not read, or reads as a plain ``generic-tiff``: tiled OME-TIFF pyramids are read
    directly, other OME-TIFFs and strip TIFFs are converted; OpenSlide keeps plain tiled TIFFs."""
    import tifffile

    from core.slides.ome_tiff import direct_levels

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            ome = tif.is_ome
            levels = direct_levels(tif) if ome else None
            series = tif.series[0]
            axes, shape, pages = series.axes, series.shape, len(series.pages)
            mpp = _ome_mpp(tif.ome_metadata) if ome else _tiff_mpp(page)
            compression = int(page.compression)
            width, height = int(page.imagewidth), int(page.imagelength)
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, IndexError, KeyError) as exc:
        raise SlideError(path, f"corrupt or truncated TIFF ({exc})") from None
    if levels is not None:
        return SlideHeader(path, "ome-tiff", DIRECT, width, height, mpp)
    if vendor == "generic-tiff" and not ome:
        return SlideHeader(path, vendor, OPENSLIDE, width, height, mpp)
    if compression not in CONVERTIBLE_TIFF_COMPRESSIONS:
        try:
            name = tifffile.COMPRESSION(compression).name
        except ValueError:
            name = "unknown"
        raise SlideError(path, f"unsupported TIFF compression {name} ({compression}): re-save it with JPEG, "
                               "LZW, deflate or no compression")
    if pages > 1:
        raise SlideError(path, f"unsupported TIFF layout {axes} {shape}: one RGB or grey image per file, not "
                               f"{pages} planes")
    return SlideHeader(path, "ome-tiff" if ome else "tiff", CONVERT, width, height, mpp)


def read_header(path: str | Path) -> SlideHeader:
    """The header of any slide file; ``SlideError`` (one line naming it) when it is missing, corrupt, truncated
    or a format SlideLens cannot read. Decodes no pixels: PNG IHDR, JPEG SOF, TIFF tags, OpenSlide's detection."""
    path = Path(path)
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return png_header(path)
    if suffix in (".jpg", ".jpeg"):
        return jpeg_header(path)
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideError(path, f"corrupt or truncated slide ({exc})") from None
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic in TIFF_MAGICS and vendor in (None, "generic-tiff"):
        return tiff_header(path, vendor)
    if vendor is None:
        raise SlideError(path, "unsupported format: not a slide OpenSlide can read, nor a PNG/JPEG/TIFF image")
    return SlideHeader(path, vendor, OPENSLIDE)


def records_mpp(path: str | Path) -> bool:
    """Whether the file states its own pixel size: PNG/JPEG never do (for SlideLens), a vendor format (SVS, NDPI,
    DICOM, ...) is trusted to, a TIFF does when its resolution tags or OME metadata give a plausible one."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return False
    try:
        header = read_header(path)
    except (SlideError, OSError):
        return False
    return header.mpp is not None or header.kind not in ("tiff", "ome-tiff", "generic-tiff")
