"""Convert PNG/JPEG images and TIFFs OpenSlide cannot read into cached pyramidal tiled TIFFs that OpenSlide reads.

UBC-OCEAN ships slides as PNGs of tens of thousands of pixels a side (up to about 5 gigapixels). Each is streamed
once through libvips (``pyvips`` with the ``pyvips-binary`` wheel): decoded row by row and written as a JPEG-tiled
(Q90, 256-px tiles) pyramid in constant memory, multi-threaded, with the slide's mpp in the resolution tags. The
pyramid is keyed by the source's path, size and modification time and written to a temporary file that is renamed
into place, so a crash or a full disk never leaves a half pyramid that a later run would trust.

``build_pyramid_whole_decode`` keeps the old converter (the whole image decoded with Pillow, then written with
tifffile): a 268-Mpx PNG peaks at 3.8 GB with it. It is kept for ``bench scale`` and for tests that compare pixels.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from core.errors import SlideError
from core.slides.image_headers import PLAUSIBLE_MPP

TILE = 256
JPEG_Q = 90
MIN_LEVEL_SIDE = 512  # the whole-decode path stops here; libvips stops when a level fits one tile
BIGTIFF_PIXELS = 700_000_000  # above this the pyramid may pass 4 GB: write BigTIFF (OpenSlide reads both)
PART = ".part"
SOURCE_MPP = "source mpp:"  # in the pyramid's ImageDescription: the mpp the source itself recorded, or none
ProgressFn = Callable[[float, str], None]


def pyramid_path(src: Path, cache_dir: Path) -> Path:
    """Where the pyramid for ``src`` lives; changes whenever the source file changes."""
    st = src.stat()
    key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / "pyramids" / f"{src.stem}-{digest}.tiff"


def has_pyramid(src: Path, cache_dir: Path) -> bool:
    """Whether ``src``'s pyramid is already in the cache (False for a missing source)."""
    try:
        return pyramid_path(src, cache_dir).is_file()
    except OSError:
        return False


_building: dict[Path, threading.Lock] = {}  # one conversion per pyramid in this process (viewer, tile server)
_building_guard = threading.Lock()


def _part_path(dst: Path) -> Path:
    """A temporary name unique to this conversion (the pid lets ``remove_stale_parts`` tell dead ones)."""
    return dst.with_name(f"{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PART}")


def remove_stale_parts(folder: Path) -> int:
    """Delete ``*.part`` files left by conversions whose process is gone (a crash, a kill); returns how many."""
    removed = 0
    for part in folder.glob(f"*{PART}") if folder.is_dir() else []:
        match = re.search(r"\.(\d+)\.[0-9a-f]+\.part$", part.name)
        pid = int(match.group(1)) if match else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(OSError):
            part.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_pyramid(src: Path, cache_dir: Path, progress: ProgressFn | None = None, mpp: float | None = None) -> Path:
    """Return the cached pyramid for ``src``, streaming it first if needed (reports progress 0..1).

    ``mpp`` (a per-slide value: the cohort's override, UBC-OCEAN's ``is_tma``) goes into the resolution tags; without
    it the source's own resolution is kept when it is a plausible microscope's (not a screen's 72 dpi)."""
    dst = pyramid_path(src, cache_dir)
    if dst.is_file():
        return dst
    with _building_guard:
        lock = _building.setdefault(dst, threading.Lock())
    with lock:  # a second caller waits for the first conversion, then finds the pyramid
        if dst.is_file():
            return dst
        from core.slides.image_headers import read_header

        read_header(src)  # a truncated file or impossible header fails now, before libvips decodes anything
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_image(src, dst, mpp=mpp, progress=progress)
    return dst


def _load(src: Path):  # noqa: ANN202 (a pyvips.Image)
    """The source as a sequential 8-bit sRGB libvips image, alpha flattened onto white (glass)."""
    import pyvips

    img = pyvips.Image.new_from_file(str(src), access="sequential", fail_on="truncated")
    if img.format != "uchar" or img.interpretation not in ("srgb", "rgb", "b-w", "multiband"):
        img = img.colourspace("srgb")  # 16-bit, CMYK, Lab ...
    if img.hasalpha():
        img = img.flatten(background=[255] * (img.bands - 1))
    if img.bands > 3:
        img = img.extract_band(0, n=3)
    elif img.bands < 3:
        img = img.bandjoin([img, img])
    return img.cast("uchar") if img.format != "uchar" else img


def convert_image(src: Path, dst: Path, *, mpp: float | None = None, progress: ProgressFn | None = None) -> None:
    """Stream ``src`` into a JPEG-tiled pyramidal TIFF at ``dst`` (temporary file, then rename).

    Raises ``SlideError`` with one line naming ``src``: truncated, a header that lies about the size, an unsupported
    compression, a full disk. Nothing is left at ``dst`` (nor beside it) on failure."""
    import pyvips

    report = progress or (lambda f, m: None)
    name = src.name
    report(0.0, f"converting {name}")
    tmp = _part_path(dst)
    try:
        pyvips.cache_set_max(0)  # keep no handle on the source once it is converted
        img = _load(src).copy()
        source_mpp = _source_mpp(img)
        res = mpp if mpp is not None and mpp > 0 else source_mpp
        img.set_type(pyvips.GValue.gstr_type, "image-description", describe(src, source_mpp))
        last = [-1]

        def on_eval(_image, prog) -> None:  # noqa: ANN001 (libvips' progress, in this thread)
            if prog.percent != last[0]:
                last[0] = prog.percent
                report(min(prog.percent, 99) / 100, f"converting {name}: {prog.percent}%")

        if progress is not None:
            img.set_progress(True)
            img.signal_connect("eval", on_eval)
        img.tiffsave(str(tmp), tile=True, pyramid=True, compression="jpeg", Q=JPEG_Q, tile_width=TILE,
                     tile_height=TILE, bigtiff=img.width * img.height > BIGTIFF_PIXELS,
                     xres=1000 / res if res else 1.0, yres=1000 / res if res else 1.0, resunit="cm")
        if res is None:
            _drop_resolution(tmp)
        os.replace(tmp, dst)
    except pyvips.Error as exc:
        raise SlideError(src, _vips_reason(src, exc, dst)) from None
    except OSError as exc:
        raise SlideError(src, _os_reason(exc, dst)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    report(1.0, f"{name} ready")


def describe(src: Path, source_mpp: float | None) -> str:
    """The pyramid's ImageDescription: what it was made from and the source's own mpp (``source_mpp``)."""
    return f"SlideLens pyramid of {src.name}; {SOURCE_MPP} {source_mpp if source_mpp is not None else 'none'}"


def source_mpp_of(description: str | None) -> tuple[bool, float | None]:
    """(whether ``description`` is a SlideLens pyramid's, the source's own mpp recorded in it)."""
    match = re.search(rf"{SOURCE_MPP} (\S+)", description or "")
    if match is None:
        return False, None
    try:
        return True, float(match.group(1))
    except ValueError:
        return True, None


def _source_mpp(img) -> float | None:  # noqa: ANN001
    """The source's resolution (libvips: pixels per mm) when it is plausible for a microscope."""
    try:
        mpp = 1000.0 / float(img.xres)
    except (ZeroDivisionError, ValueError):
        return None
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def _drop_resolution(path: Path) -> None:
    """Mark the resolution tags 'no unit' so OpenSlide reports no mpp (libvips always writes one)."""
    import tifffile

    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            if "ResolutionUnit" in page.tags:
                page.tags["ResolutionUnit"].overwrite(1)


def _full_disk(text: str) -> bool:
    return any(s in text for s in ("No space left", "File too large", "Disk quota", "Maximum TIFF file size"))


def _os_reason(exc: OSError, dst: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or _full_disk(str(exc)):
        return f"disk full (or file-size limit) while writing its pyramid under {dst.parent}; nothing kept"
    return f"cannot write its pyramid under {dst.parent} ({exc.strerror or exc})"


def _vips_reason(src: Path, exc, dst: Path) -> str:  # noqa: ANN001 (a pyvips.Error)
    detail = " ".join(str(getattr(exc, "detail", "") or exc).split())
    if _full_disk(detail):
        return f"disk full (or file-size limit) while writing its pyramid under {dst.parent}; nothing kept"
    if "compression" in detail.lower() and ("not implemented" in detail or "not configured" in detail):
        return f"unsupported TIFF compression ({detail[:160]})"
    suffix = src.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        from core.slides.image_headers import read_header

        try:
            hdr = read_header(src)  # names the defect when the header shows it (truncated, impossible size)
        except SlideError as err:
            return err.reason
        return (f"corrupt or truncated image: its pixel data ends before the {hdr.width}x{hdr.height} pixels its "
                f"header declares, or is damaged ({detail[:120]})")
    return f"corrupt or unreadable image ({detail[:160]})"


# --- the old converter: the whole image decoded in memory (kept for the record and for tests) -------------
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
    from PIL import Image

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


def build_pyramid_whole_decode(src: Path, dst: Path, progress: ProgressFn | None = None) -> Path:
    """The old converter: decode ``src`` whole with Pillow and write its pyramid with tifffile (memory grows with
    the image: about 14 bytes a pixel at the peak)."""
    import tifffile
    from PIL import Image

    report = progress or (lambda f, m: None)
    report(0.0, f"decoding {src.name}")
    level = _decode(src)
    levels = [level]
    while max(levels[-1].shape[:2]) > MIN_LEVEL_SIDE:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tiff.part", dir=dst.parent)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=level.nbytes > 2**31) as tif:
            for i, lv in enumerate(levels):
                report(i / len(levels), f"writing level {i} of {src.name}")
                tif.write(_tiles(lv), shape=lv.shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                          compression="jpeg", compressionargs={"level": JPEG_Q}, subfiletype=0 if i == 0 else 1,
                          metadata=None)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    report(1.0, f"{src.name} ready")
    return dst
