"""One ``Slide`` interface over every format OpenSlide reads, plain PNG/JPEG images and other TIFFs.

Plain images (TMA cores, UBC-OCEAN's PNG exports) and TIFFs OpenSlide does not read (strip TIFFs from ImageJ or a
scanner's export tool, untiled OME-TIFFs) are streamed once into a cached pyramidal tiled TIFF (``core.slides.pyramid``)
and then read through OpenSlide like any other slide; tiled OME-TIFF pyramids are read directly
(``core.slides.ome_tiff``). Regions, thumbnails and Deep Zoom tiles behave identically for every format. This is the only
module that opens slides; for Deep Zoom tiles of tiled TIFF levels it reads the TIFF tiles itself through
``core.slides.tiff_direct`` (checked against OpenSlide). Which route a file takes comes from its header
(``core.slides.image_headers``), which is all ``cohort init`` reads.

Coordinate planes follow openslide's naming: ``l0_`` level-0 pixels, ``l_`` pixels of a given level.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from core.errors import SlideError
from core.slides.image_headers import CONVERT, DIRECT, check_file, read_header
from core.slides.tiff_direct import DirectTiffReader, open_direct

log = logging.getLogger(__name__)

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
THUMBNAIL_SUFFIX = "_thumbnail"  # UBC-OCEAN's <image_id>_thumbnail.png, beside the slide or in a *thumbnails folder
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    *PLAIN_IMAGE_SUFFIXES,
)
DZ_TILE_SIZE = 254
DZ_OVERLAP = 1
DIRECT_CHECK_TOLERANCE = 1.0  # mean |difference| (0..255) allowed between direct and OpenSlide pixels
DIRECT_CHECK_BLOCK_TOLERANCE = 3.0  # the same in 8-px block means, where OpenSlide resamples (measured <= 1.7)
ProgressFn = Callable[[float, str], None]


class Slide:
    """An open slide. Use ``open_slide`` (or a ``SlideCache``) to get one; thread-safe for reads."""

    def __init__(self, path: Path, osr: openslide.OpenSlide, *, mpp_override: float | None = None,
                 source_path: Path | None = None) -> None:
        self.path = Path(source_path or path)  # what the user gave us
        self.read_path = Path(path)  # what OpenSlide reads (the cached pyramid for plain images)
        self._osr = osr
        self._mpp_override = mpp_override
        self._dz: dict[tuple[int, int, bool], DeepZoomGenerator] = {}
        self._lock = threading.Lock()
        self._direct: DirectTiffReader | None = None
        self._direct_tried = False
        self.failed = False  # a read failed: this OpenSlide handle fails every read from now on
        # geometry read once: it stays valid after OpenSlide's handle failed a read (its errors are sticky)
        self._level_dimensions: tuple[tuple[int, int], ...] = tuple(osr.level_dimensions)
        self._level_downsamples: tuple[float, ...] = tuple(osr.level_downsamples)
        self._background = _background_of(osr)

    # --- metadata -------------------------------------------------------------------------
    @property
    def image_id(self) -> str:
        return image_id_for(self.path)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._osr.properties

    @property
    def file_mpp(self) -> float | None:
        """Microns per pixel recorded in the file (mean of x and y), or None. For a converted image: the source
        file's own value (the pyramid's resolution tags may hold a per-slide mpp given at conversion)."""
        props = self._osr.properties
        if self.read_path != self.path:
            from core.slides.pyramid import source_mpp_of

            ours, mpp = source_mpp_of(props.get(openslide.PROPERTY_NAME_COMMENT))
            if ours:
                return mpp
        try:
            mx = float(props[openslide.PROPERTY_NAME_MPP_X])
            my = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mx))
        except (KeyError, ValueError):
            return None
        if not (math.isfinite(mx) and mx > 0):
            return None
        return (mx + my) / 2 if math.isfinite(my) and my > 0 else mx

    @property
    def mpp(self) -> float | None:
        """Microns per pixel: the per-slide override if set, else the file's value, else None."""
        return self._mpp_override if self._mpp_override is not None else self.file_mpp

    def mpp_or(self, default: float | None) -> float | None:
        """``mpp`` falling back to a configured default for files that carry none."""
        return self.mpp if self.mpp is not None else default

    @property
    def objective_power(self) -> float | None:
        raw = self._osr.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def vendor(self) -> str:
        if self.path.suffix.lower() in PLAIN_IMAGE_SUFFIXES or self.read_path != self.path:
            return "image"  # converted into a cached pyramid
        return self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")

    @property
    def associated_image_names(self) -> list[str]:
        return sorted(self._osr.associated_images.keys())

    def associated_image(self, name: str) -> Image.Image:
        try:
            return self._osr.associated_images[name].convert("RGB")
        except KeyError:
            raise SlideError(self.path, f"no associated image {name!r}") from None

    def info(self) -> dict:
        """A JSON-ready summary (what ``python -m core info`` prints)."""
        return {
            "path": str(self.path),
            "image_id": self.image_id,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "vendor": self.vendor,
            "associated_images": self.associated_image_names,
        }

    # --- pixels -----------------------------------------------------------------------------
    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except openslide.OpenSlideError as exc:
            self.failed = True  # OpenSlide's errors are sticky: SlideCache opens a fresh handle next time
            raise SlideError(self.path, f"corrupt or truncated slide data ({exc})") from exc

    def read_region(self, l0_location: tuple[int, int], level: int, l_size: tuple[int, int]) -> Image.Image:
        """RGB region of ``l_size`` pixels at ``level``, whose top-left is ``l0_location`` in level-0 pixels.

        Transparent (out-of-bounds or unscanned) pixels come back white, as on glass.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(self.path, f"level {level} out of range 0..{self.level_count - 1}")
        rgba = self._guard(self._osr.read_region, tuple(int(v) for v in l0_location), level,
                           tuple(int(v) for v in l_size))
        return _rgba_to_rgb(rgba)

    def best_level_for_downsample(self, downsample: float) -> int:
        # a small tolerance so that a level at 3.9999x is used for a 4x request
        target = downsample * 1.001
        return max((i for i, ds in enumerate(self._level_downsamples) if ds <= target), default=0)

    def read_region_mpp(self, l0_location: tuple[int, int], size: tuple[int, int], mpp: float,
                        default_mpp: float | None = None) -> Image.Image:
        """Region of ``size`` pixels at ``mpp`` microns per pixel, top-left at ``l0_location``.

        Reads from the best pyramid level and resizes, so the physical size is ``size * mpp`` microns.
        """
        base = self.mpp_or(default_mpp)
        if base is None:
            raise SlideError(self.path, "no mpp in the file; set one for this slide or a default_mpp")
        downsample = mpp / base
        l0_w, l0_h = size[0] * downsample, size[1] * downsample
        level = self.best_level_for_downsample(downsample)
        ds = self.level_downsamples[level]
        l_w, l_h = max(1, round(l0_w / ds)), max(1, round(l0_h / ds))
        img = self.read_region(l0_location, level, (l_w, l_h))
        if (l_w, l_h) != tuple(size):
            img = img.resize(tuple(size), Image.Resampling.BILINEAR if downsample < ds * 1.5 else Image.Resampling.BOX)
        return img

    def thumbnail(self, max_size: int | tuple[int, int] = 1024) -> Image.Image:
        """RGB thumbnail whose longest side fits ``max_size`` (aspect ratio kept)."""
        if isinstance(max_size, int):
            max_size = (max_size, max_size)
        return _rgba_to_rgb(self._guard(self._osr.get_thumbnail, max_size))

    # --- Deep Zoom --------------------------------------------------------------------------
    def deepzoom(self, tile_size: int = DZ_TILE_SIZE, overlap: int = DZ_OVERLAP,
                 limit_bounds: bool = False) -> DeepZoomGenerator:
        """A cached Deep Zoom generator. ``limit_bounds=False`` keeps DZ pixel (0,0) at level-0 (0,0)."""
        key = (tile_size, overlap, limit_bounds)
        with self._lock:
            if key not in self._dz:
                self._dz[key] = DeepZoomGenerator(self._osr, tile_size=tile_size, overlap=overlap,
                                                  limit_bounds=limit_bounds)
            return self._dz[key]

    def deepzoom_tile(self, dz_level: int, col: int, row: int, tile_size: int = DZ_TILE_SIZE,
                      overlap: int = DZ_OVERLAP) -> Image.Image:
        """One Deep Zoom tile as RGB; raises ``SlideError`` for an index out of range.

        Tiles of tiled TIFF slides are cut from decoded TIFF tiles (``core.slides.tiff_direct``) and resampled from the
        tile's exact footprint on the level: openslide's ``DeepZoomGenerator`` pixels where it reads whole pixels,
        several times faster, and better aligned where it resamples. Other slides use openslide's generator
        geometry, without its alpha compositing where the region is opaque.
        """
        dz = self.deepzoom(tile_size, overlap)
        if not 0 <= dz_level < dz.level_count:
            raise SlideError(self.path, f"Deep Zoom level {dz_level} out of range 0..{dz.level_count - 1}")
        cols, rows = dz.level_tiles[dz_level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise SlideError(self.path, f"tile {col},{row} out of range at level {dz_level} ({cols}x{rows})")
        expected = dz_tile_size(dz.level_dimensions[dz_level], col, row, tile_size, overlap)
        tile = self._direct_dz_tile(2.0 ** (dz.level_count - 1 - dz_level), col, row, expected, tile_size, overlap)
        if tile is None:
            tile = self._openslide_dz_tile(dz, dz_level, col, row)
        if tile.size != expected:  # openslide's aspect-preserving thumbnail can drop a pixel on tiny levels
            tile = tile.resize(expected, Image.Resampling.BILINEAR)
        return tile

    @property
    def background(self) -> tuple[int, int, int]:
        """The colour of glass (the file's background-color property, else white)."""
        return self._background

    def _direct_dz_tile(self, dz_downsample: float, col: int, row: int, size: tuple[int, int], tile_size: int,
                        overlap: int) -> Image.Image | None:
        """The tile from the direct TIFF reader, or None where it does not serve the level OpenSlide would read."""
        direct = self._direct_reader()
        if direct is None:
            return None
        level = self.best_level_for_downsample(dz_downsample)  # the level openslide's generator would read
        if level not in direct.levels:
            return None
        ds_x, ds_y = direct.downsample(level)
        sx, sy = dz_downsample / ds_x, dz_downsample / ds_y  # level pixels per Deep Zoom pixel
        zx, zy = col * tile_size - (overlap if col else 0), row * tile_size - (overlap if row else 0)
        fx0, fy0, fx1, fy1 = zx * sx, zy * sy, (zx + size[0]) * sx, (zy + size[1]) * sy
        ix0, iy0 = math.floor(fx0 + 1e-9), math.floor(fy0 + 1e-9)
        ix1, iy1 = math.ceil(fx1 - 1e-9), math.ceil(fy1 - 1e-9)
        try:
            region = Image.fromarray(direct.read(level, (ix0, iy0), (ix1 - ix0, iy1 - iy0)))
        except Exception as exc:  # noqa: BLE001 (an undecodable tile: OpenSlide reads it, or says why)
            log.warning("%s: direct read at level %d failed, using OpenSlide (%s)", self.path, level, exc)
            return None
        box = (fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0)
        if region.size == size and all(abs(v - w) < 1e-9 for v, w in zip(box, (0, 0, *size), strict=True)):
            return region  # whole pixels at the level's own scale: no resampling
        return region.resize(size, Image.Resampling.LANCZOS, box=box,
                             reducing_gap=2.0 if min(sx, sy) >= 4 else None)

    def _openslide_dz_tile(self, dz: DeepZoomGenerator, dz_level: int, col: int, row: int) -> Image.Image:
        tile_info = getattr(dz, "_get_tile_info", None)  # openslide-python's geometry (present since 1.0)
        if tile_info is None:
            return _rgba_to_rgb(self._guard(dz.get_tile, dz_level, (col, row)), self.background)
        (l0_xy, level, l_size), z_size = tile_info(dz_level, (col, row))
        rgba = self._guard(self._osr.read_region, tuple(l0_xy), level, tuple(l_size))
        tile = _rgba_to_rgb(rgba, self.background)
        if tile.size != tuple(z_size):
            tile = tile.resize(tuple(z_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        return tile

    @property
    def direct_read_levels(self) -> list[int]:
        """Levels whose Deep Zoom tiles are read straight from the TIFF (``core.slides.tiff_direct``); [] for none."""
        reader = self._direct_reader()
        return reader.levels if reader is not None else []

    def _direct_reader(self) -> DirectTiffReader | None:
        """The direct reader of this slide's tiled TIFF levels, built and checked on first use (or None)."""
        if self._direct_tried:
            return self._direct
        with self._lock:
            if not self._direct_tried:
                try:
                    vendor = self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "")
                except openslide.OpenSlideError:  # the handle failed an earlier read
                    vendor = ""
                reader = open_direct(self.read_path, self.level_dimensions, vendor, self.background)
                if reader is not None:
                    self._check_direct(reader)
                self._direct = reader if reader is not None and reader.levels else None
                self._direct_tried = True
        return self._direct

    def _check_direct(self, reader: DirectTiffReader) -> None:
        """Drop each level whose direct pixels differ from OpenSlide's on a sample region: exactly where OpenSlide
        reads whole pixels too, in 8-px block means where it resamples a fractional offset."""
        for level in reader.levels:
            w, h = self.level_dimensions[level]
            size = (min(64, w), min(64, h))
            l_xy = ((w - size[0]) // 2, (h - size[1]) // 2)
            ds = self.level_downsamples[level]  # OpenSlide's, to ask it for the same level pixels
            try:
                mine = np.asarray(reader.read(level, l_xy, size), dtype=np.float32)
                ref = np.asarray(self.read_region((round(l_xy[0] * ds), round(l_xy[1] * ds)), level, size),
                                 dtype=np.float32)
                tolerance = DIRECT_CHECK_TOLERANCE
                if ds != round(ds):
                    mine, ref, tolerance = _block_means(mine, 8), _block_means(ref, 8), DIRECT_CHECK_BLOCK_TOLERANCE
                ok = float(np.abs(mine - ref).mean()) <= tolerance
            except Exception as exc:  # noqa: BLE001
                log.info("%s: level %d not read directly (%s)", self.path, level, exc)
                ok = False
            if not ok:
                reader.drop_level(level)
        if not reader.levels:
            reader.close()

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._osr.close()


def dz_tile_size(level_dims: tuple[int, int], col: int, row: int, tile_size: int = DZ_TILE_SIZE,
                 overlap: int = DZ_OVERLAP) -> tuple[int, int]:
    """Pixel size of Deep Zoom tile (col, row) on a level of ``level_dims`` (overlap only on inner edges)."""
    def one(n: int, i: int) -> int:
        start = i * tile_size - (overlap if i > 0 else 0)
        return min(n, (i + 1) * tile_size + overlap) - start

    return one(level_dims[0], col), one(level_dims[1], row)


def image_id_for(path: str | Path) -> str:
    """The id a slide is known by: its file name without extension (DICOM: the folder name)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    if path.suffix.lower() in (".tif", ".tiff") and path.stem.lower().endswith(".ome"):
        return path.stem[:-4]  # x.ome.tiff -> x
    return path.stem


def _background_of(osr: openslide.OpenSlide) -> tuple[int, int, int]:
    raw = osr.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    try:
        return int(raw[0:2], 16), int(raw[2:4], 16), int(raw[4:6], 16)
    except ValueError:
        return 255, 255, 255


def _block_means(img: np.ndarray, block: int) -> np.ndarray:
    h, w = img.shape[0] // block * block, img.shape[1] // block * block
    return img[:h, :w].reshape(h // block, block, w // block, block, -1).mean(axis=(1, 3))


def _rgba_to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB on ``background``; an opaque image (the common case) is only converted, not composited."""
    if img.mode == "RGB":
        return img
    if img.mode != "RGBA":
        return img.convert("RGB")
    alpha = img.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return img.convert("RGB")
    bg = Image.new("RGB", img.size, background)
    bg.paste(img, mask=alpha)
    return bg


def _validate(slide: Slide) -> None:
    """Read a little from the smallest level so truncated files fail at open, not mid-review."""
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    if w * h <= 4_000_000:
        slide.read_region((0, 0), level, (w, h))
    else:
        ds = slide.level_downsamples[level]
        for fx, fy in ((0, 0), (1, 1), (0, 1), (1, 0)):
            x, y = int(fx * (w - 256) * ds), int(fy * (h - 256) * ds)
            slide.read_region((max(0, x), max(0, y)), level, (min(w, 256), min(h, 256)))


def default_cache_dir(cache_dir: str | Path | None) -> Path:
    """Where converted pyramids go: ``cache_dir`` or ``data/.cache``."""
    return Path(cache_dir) if cache_dir else Path("data/.cache")


def open_slide(path: str | Path, *, mpp: float | None = None, cache_dir: str | Path | None = None,
               progress: ProgressFn | None = None, validate: bool = True) -> Slide:
    """Open any supported slide, raising ``SlideError`` with a one-line reason on failure.

    ``mpp`` overrides the file's value. Plain PNG/JPEG images and TIFFs OpenSlide cannot read are streamed once
    into a pyramid under ``cache_dir`` (default: ``data/.cache``), with ``mpp`` in its resolution tags;
    ``progress(fraction, message)`` reports that conversion. Tiled OME-TIFF pyramids are read directly.
    """
    path = Path(path)
    check_file(path)
    if mpp is not None and not (mpp > 0):
        raise SlideError(path, f"invalid mpp override {mpp}")
    read_path = path
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        from core.slides.pyramid import ensure_pyramid

        read_path = ensure_pyramid(path, default_cache_dir(cache_dir), progress, mpp=mpp)
        osr = _openslide(read_path, path)
    else:
        header = read_header(path)  # corrupt, truncated, unsupported format or compression: SlideError
        if header.route == DIRECT:
            from core.slides.ome_tiff import OmeTiffSlide

            try:
                osr = OmeTiffSlide(path, mpp=header.mpp)
            except Exception as exc:  # noqa: BLE001 (tifffile's many parse errors)
                raise SlideError(path, f"corrupt or truncated OME-TIFF ({exc})") from None
        else:
            if header.route == CONVERT:
                from core.slides.pyramid import ensure_pyramid

                read_path = ensure_pyramid(path, default_cache_dir(cache_dir), progress, mpp=mpp or header.mpp)
            osr = _openslide(read_path, path)
    slide = Slide(read_path, osr, mpp_override=mpp, source_path=path)
    if validate:
        try:
            _validate(slide)
        except SlideError:
            slide.close()
            raise
    return slide


def _openslide(read_path: Path, path: Path) -> openslide.OpenSlide:
    try:
        return openslide.OpenSlide(str(read_path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(path, "unsupported format: not a slide OpenSlide can read") from exc
    except openslide.OpenSlideError as exc:
        raise SlideError(path, f"corrupt or truncated slide ({exc})") from exc
    except (OSError, ValueError) as exc:
        raise SlideError(path, f"cannot open ({exc})") from exc


def needs_conversion(path: str | Path, cache_dir: str | Path | None = None) -> bool:
    """Whether opening ``path`` would first convert it (a PNG/JPEG or other TIFF whose pyramid is not cached yet).

    Reads the header only; False for unreadable files (opening them reports why)."""
    from core.slides.pyramid import has_pyramid

    path = Path(path)
    try:
        route = CONVERT if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES else read_header(path).route
    except SlideError:
        return False
    return route == CONVERT and not has_pyramid(path, default_cache_dir(cache_dir))


def find_slides(root: str | Path) -> dict[str, Path]:
    """Map image_id -> path for every slide file under ``root`` (one file per DICOM folder)."""
    root = Path(root)
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES or p.name.startswith("."):
            continue
        if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES and p.stem.endswith(THUMBNAIL_SUFFIX):
            continue  # a slide's ready-made thumbnail (UBC-OCEAN), not a slide
        image_id = image_id_for(p)
        if p.suffix.lower() == ".dcm" and image_id in found:
            continue
        found.setdefault(image_id, p)
    return found
