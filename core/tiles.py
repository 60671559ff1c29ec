"""Deep Zoom tiles, attention overlay tiles and OpenSeadragon's files, served by the app's own process.

Routes (all GET, all under ``/tiles/``; anything else under ``/tiles/`` is a 4xx, never a file):

- ``/tiles/<image_id>.dzi``                                   Deep Zoom descriptor (XML)
- ``/tiles/<image_id>_files/<level>/<col>_<row>.jpeg``        slide tiles (254 px, overlap 1, limit_bounds=False)
- ``/tiles/attention/<version>/<image_id>_files/<level>/<col>_<row>.png``   overlay tiles (RGBA PNG, same grid),
  query ``cls`` (class index), ``cmap`` (``core.overlay.COLORMAPS``), ``scale`` (percentile|rank|minmax),
  ``top`` (fraction of patches shown, 0..1]
- ``/tiles/attention/<version>/<image_id>/at.json?x=&y=``     the patch under a level-0 point and its raw values
- ``/tiles/_static/osd/<file>``                               OpenSeadragon's build (from node_modules)

Every route accepts ``?cohort=<name>`` when two registered cohorts share an image id. Slides are found only
among the cohorts the app registered (``register_cohort``): an id is a dictionary key, never a path.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from core import overlay
from core.cohort import Cohort, default_cohort_path, load_cohort
from core.errors import InputError, SlideLensError
from core.slides import DZ_OVERLAP, DZ_TILE_SIZE, Slide, SlideCache

JPEG_QUALITY = 80
SLIDE_CACHE_CONTROL = "public, max-age=86400"
OVERLAY_CACHE_CONTROL = "public, max-age=3600"
OSD_DIR = Path(__file__).resolve().parents[1] / "node_modules" / "openseadragon" / "build" / "openseadragon"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +()=,-]*$")

_cohorts: OrderedDict[str, Cohort] = OrderedDict()
_cohorts_lock = threading.Lock()
_slide_cache: SlideCache | None = None
_slide_cache_lock = threading.Lock()


class TileError(SlideLensError):
    """A tile request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


# --- registry of cohorts and the shared slide cache ---------------------------------------------------
def shared_slide_cache() -> SlideCache:
    """The process-wide LRU of open slides, shared by the tile routes and the pages."""
    global _slide_cache
    with _slide_cache_lock:
        if _slide_cache is None:
            _slide_cache = SlideCache(maxsize=32)
        return _slide_cache


def register_cohort(cohort: Cohort) -> None:
    """Let the tile routes serve this cohort's slides (the page calls this when it opens a cohort)."""
    with _cohorts_lock:
        _cohorts[cohort.name] = cohort
        _cohorts.move_to_end(cohort.name)


def _register_default() -> None:
    """Before any page ran, serve the cohort the app opens by default (``$SLIDELENS_COHORT``), if it loads."""
    try:
        cohort = load_cohort(default_cohort_path())
    except SlideLensError:
        return
    _cohorts[cohort.name] = cohort


def unregister_all() -> None:
    """Forget every registered cohort (tests)."""
    with _cohorts_lock:
        _cohorts.clear()


def _check_name(kind: str, name: str) -> str:
    if ".." in name or "/" in name or "\\" in name or not _SAFE_NAME.match(name):
        raise TileError(400, f"invalid {kind} {name!r}")
    return name


def resolve_slide(image_id: str, cohort_name: str | None = None) -> tuple[Cohort, Path]:
    """The registered cohort and slide file for ``image_id`` (most recently registered cohort first)."""
    _check_name("slide id", image_id)
    with _cohorts_lock:
        if not _cohorts:
            _register_default()
        cohorts = list(reversed(_cohorts.values()))
    if cohort_name is not None:
        cohorts = [c for c in cohorts if c.name == cohort_name]
        if not cohorts:
            raise TileError(404, f"cohort {cohort_name!r} is not open")
    for cohort in cohorts:
        path = cohort.slide_paths.get(image_id)
        if path is not None:
            return cohort, path
    raise TileError(404, f"unknown slide {image_id!r}")


def open_cohort_slide(cohort: Cohort, image_id: str) -> Slide:
    """The cohort's slide through the shared cache (per-slide mpp override applied); raises ``SlideError``."""
    return shared_slide_cache().get(cohort.slide_path(image_id), cohort.mpp_for(image_id))


def _slide(image_id: str, cohort_name: str | None) -> Slide:
    cohort, path = resolve_slide(image_id, cohort_name)
    try:
        return shared_slide_cache().get(path, cohort.mpp_for(image_id))
    except SlideLensError as exc:
        raise TileError(500, str(exc)) from exc


# --- slide tiles --------------------------------------------------------------------------------------
def dzi_xml(slide: Slide, tile_size: int = DZ_TILE_SIZE, overlap: int = DZ_OVERLAP) -> str:
    """The Deep Zoom descriptor of a slide (JPEG tiles, level-0 size)."""
    return slide.deepzoom(tile_size, overlap).get_dzi("jpeg")


def check_tile(dims: tuple[int, int], level: int, col: int, row: int, tile_size: int = DZ_TILE_SIZE) -> None:
    """Raise ``TileError(404)`` unless (level, col, row) is a tile of a slide of level-0 size ``dims``."""
    sizes = overlay.dz_level_dimensions(dims)
    if not 0 <= level < len(sizes):
        raise TileError(404, f"level {level} out of range 0..{len(sizes) - 1}")
    w, h = sizes[level]
    cols, rows = -(-w // tile_size), -(-h // tile_size)
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileError(404, f"tile {col}_{row} out of range at level {level} ({cols}x{rows} tiles)")


def slide_tile_jpeg(slide: Slide, level: int, col: int, row: int, quality: int = JPEG_QUALITY) -> bytes:
    """One Deep Zoom tile of the slide, JPEG-encoded."""
    check_tile(slide.dimensions, level, col, row)
    buf = io.BytesIO()
    slide.deepzoom_tile(level, col, row).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --- attention layers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionLayer:
    """A (model version, slide) attention file made ready for display."""

    values: np.ndarray  # N x C raw attention (C = 1 for a single attention head)
    coords: np.ndarray  # N x 2 level-0 top-left
    patch_size_level0: int
    classes: list[str]
    raster: overlay.AttentionRaster
    path: Path
    key: tuple = ()  # (path, mtime, dims): identifies this version of the file in caches

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def column(self, cls: int) -> np.ndarray:
        """Raw attention for class ``cls`` (ignored for single-head attention)."""
        if self.n_heads == 1:
            return self.values[:, 0]
        if not 0 <= cls < self.n_heads:
            raise TileError(400, f"class index {cls} out of range 0..{self.n_heads - 1}")
        return self.values[:, cls]


def attention_path(cohort: Cohort, version: str, image_id: str) -> Path:
    """Where the attention of ``version`` for ``image_id`` lives (see CONTRACTS.md)."""
    _check_name("model version", version)
    _check_name("slide id", image_id)
    return cohort.results / version / "attention" / f"{image_id}.h5"


def read_attention(path: Path) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """(attention N x C, coords N x 2, patch_size_level0, classes) from an attention file."""
    try:
        with h5py.File(path, "r") as f:
            att = np.asarray(f["attention"], dtype=np.float32)
            coords = np.asarray(f["coords"], dtype=np.int64)
            size = int(f.attrs["patch_size_level0"])
            raw_classes = f.attrs.get("classes", "[]")
    except FileNotFoundError:
        raise InputError(f"{path}: attention file not found") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a readable attention file ({exc})") from exc
    if isinstance(raw_classes, bytes):
        raw_classes = raw_classes.decode()
    classes = json.loads(raw_classes) if isinstance(raw_classes, str) else [str(c) for c in raw_classes]
    att = att.reshape(len(att), -1) if att.ndim == 1 else att
    if att.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(att) != len(coords):
        raise InputError(f"{path}: attention {att.shape} does not match coords {coords.shape}")
    return att, coords, size, list(classes)


class _LRU:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or(self, key: Any, make: Any) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = make()  # computed outside the lock; two threads may both compute, both get a valid value
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        return value


_layers = _LRU(16)
_colors = _LRU(64)
_blank_png = _LRU(16)


def load_attention_layer(cohort: Cohort, version: str, image_id: str, dims: tuple[int, int]) -> AttentionLayer:
    """The cached attention layer of (version, slide); reloaded when the file changes."""
    path = attention_path(cohort, version, image_id)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise TileError(404, f"no attention for slide {image_id!r} from model {version!r}") from None

    def make() -> AttentionLayer:
        att, coords, size, classes = read_attention(path)
        raster = overlay.attention_raster(att.max(axis=1), coords, size, dims)
        return AttentionLayer(att, coords, size, classes, raster, path, key)

    key = (str(path), mtime, tuple(dims))
    return _layers.get_or(key, make)


@dataclass(frozen=True)
class OverlayStyle:
    """How the overlay is drawn: class column, colour map, rescaling and top fraction shown."""

    cls: int = 0
    cmap: str = "inferno"
    scale: str = "percentile"
    top: float = 1.0

    @classmethod
    def from_query(cls, q: Any) -> OverlayStyle:
        try:
            style = cls(int(q.get("cls", 0)), str(q.get("cmap", "inferno")), str(q.get("scale", "percentile")),
                        float(q.get("top", 1.0)))
        except ValueError as exc:
            raise TileError(400, f"invalid overlay parameter ({exc})") from None
        if style.cmap not in overlay.COLORMAPS:
            raise TileError(400, f"unknown colour map {style.cmap!r}")
        if style.scale not in overlay.RESCALE_METHODS:
            raise TileError(400, f"unknown rescaling {style.scale!r}")
        if not 0 < style.top <= 1:
            raise TileError(400, f"top must be in (0, 1], got {style.top}")
        return style

    def query(self) -> str:
        return f"cls={self.cls}&cmap={self.cmap}&scale={self.scale}&top={self.top:g}"


def layer_colors(layer: AttentionLayer, style: OverlayStyle) -> np.ndarray:
    """(N+1) x 4 RGBA table of a layer under a style (cached)."""
    def make() -> np.ndarray:
        raw = layer.column(style.cls)
        scaled, visible = overlay.display_values(raw, style.scale, style.top)
        return overlay.patch_colors(scaled, overlay.colormap_lut(style.cmap), visible)

    return _colors.get_or((layer.key, style), make)


def overlay_tile_png(layer: AttentionLayer, style: OverlayStyle, level: int, col: int, row: int) -> bytes:
    """One overlay tile as an RGBA PNG, on the slide's Deep Zoom grid."""
    check_tile(layer.raster.dimensions, level, col, row)
    rgba = overlay.overlay_tile(layer.raster, layer_colors(layer, style), level, col, row)
    if not rgba[..., 3].any():
        h, w = rgba.shape[:2]
        return _blank_png.get_or((w, h), lambda: _png(rgba))
    return _png(rgba)


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def attention_at(layer: AttentionLayer, l0_x: float, l0_y: float) -> dict[str, Any]:
    """The patch under a level-0 point: index, top-left, size and raw attention per class (JSON-ready)."""
    i = layer.raster.patch_at(l0_x, l0_y)
    if i < 0:
        return {"index": None}
    x, y = (int(v) for v in layer.coords[i])
    return {"index": i, "x": x, "y": y, "size": layer.patch_size_level0, "classes": layer.classes,
            "raw": [float(v) for v in layer.values[i]]}


# --- OpenSeadragon's files ----------------------------------------------------------------------------
_osd_files: dict[str, Path] | None = None


def _osd_file(rel: str) -> Path:
    global _osd_files
    if _osd_files is None:  # an allow-list built once: a request can only name a file that is there
        _osd_files = ({p.relative_to(OSD_DIR).as_posix(): p for p in OSD_DIR.rglob("*") if p.is_file()}
                      if OSD_DIR.is_dir() else {})
    if ".." in rel.split("/"):
        raise TileError(400, "invalid path")
    path = _osd_files.get(rel)
    if path is None:
        hint = "" if _osd_files else " (OpenSeadragon is not installed: run `make install`)"
        raise TileError(404, f"no such file {rel!r}{hint}")
    return path


# --- Starlette handlers (sync: Starlette runs them in its thread pool) -------------------------------
def _answer(fn):
    def handler(request: Request) -> Response:
        try:
            return fn(request, **request.path_params)
        except TileError as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        except SlideLensError as exc:
            return PlainTextResponse(str(exc), status_code=500)

    handler.__name__ = fn.__name__
    return handler


@_answer
def _dzi(request: Request, image_id: str) -> Response:
    slide = _slide(image_id, request.query_params.get("cohort"))
    return Response(dzi_xml(slide), media_type="application/xml", headers={"Cache-Control": SLIDE_CACHE_CONTROL})


def _timing(t0: float) -> str:
    return f"tile;dur={(time.perf_counter() - t0) * 1000:.2f}"  # Server-Timing: shown by browsers' dev tools


@_answer
def _slide_tile(request: Request, image_id: str, level: int, col: int, row: int) -> Response:
    t0 = time.perf_counter()
    slide = _slide(image_id, request.query_params.get("cohort"))
    body = slide_tile_jpeg(slide, level, col, row)
    return Response(body, media_type="image/jpeg",
                    headers={"Cache-Control": SLIDE_CACHE_CONTROL, "Server-Timing": _timing(t0)})


def _layer(request: Request, version: str, image_id: str) -> AttentionLayer:
    cohort, _ = resolve_slide(image_id, request.query_params.get("cohort"))
    _check_name("model version", version)
    slide = _slide(image_id, cohort.name)
    return load_attention_layer(cohort, version, image_id, slide.dimensions)


@_answer
def _overlay_tile(request: Request, version: str, image_id: str, level: int, col: int, row: int) -> Response:
    t0 = time.perf_counter()
    style = OverlayStyle.from_query(request.query_params)
    layer = _layer(request, version, image_id)
    body = overlay_tile_png(layer, style, level, col, row)
    return Response(body, media_type="image/png",
                    headers={"Cache-Control": OVERLAY_CACHE_CONTROL, "Server-Timing": _timing(t0)})


@_answer
def _attention_at(request: Request, version: str, image_id: str) -> Response:
    try:
        x, y = float(request.query_params["x"]), float(request.query_params["y"])
    except (KeyError, ValueError):
        raise TileError(400, "x and y (level-0 pixels) are required numbers") from None
    return JSONResponse(attention_at(_layer(request, version, image_id), x, y))


@_answer
def _osd_static(request: Request, path: str) -> Response:
    file = _osd_file(path)
    media = {".js": "text/javascript", ".png": "image/png", ".map": "application/json"}.get(file.suffix,
                                                                                          "application/octet-stream")
    return Response(file.read_bytes(), media_type=media, headers={"Cache-Control": "public, max-age=86400"})


@_answer
def _not_found(request: Request, rest: str) -> Response:
    if ".." in rest.split("/") or "\\" in rest:
        raise TileError(400, "invalid path")
    raise TileError(404, f"no tile route for /tiles/{rest}")


def enable_tcp_nodelay() -> None:
    """Send each response without waiting for the client's delayed ACK (~40 ms a request otherwise).

    Streamlit 1.67 pre-binds its listening socket with protocol 0, so asyncio's transport skips its usual
    TCP_NODELAY; uvicorn then writes a response's headers and body separately and Nagle's algorithm holds the
    body until the client acknowledges the headers. Setting TCP_NODELAY as uvicorn accepts each connection fixes
    every route of the process (tiles and Streamlit's own). Idempotent; a no-op where uvicorn is absent.
    """
    for module, name in (("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
                         ("uvicorn.protocols.http.h11_impl", "H11Protocol")):
        try:
            klass = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if getattr(klass, "_slidelens_nodelay", False):
            continue
        original = klass.connection_made

        def connection_made(self: Any, transport: Any, _original: Any = original) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _original(self, transport)

        klass.connection_made = connection_made
        klass._slidelens_nodelay = True


def tile_routes() -> list[Route]:
    """The Starlette routes to mount in ``st.App(..., routes=tile_routes())`` (also enables TCP_NODELAY)."""
    enable_tcp_nodelay()
    tile = "{level:int}/{col:int}_{row:int}"
    return [
        Route("/tiles/_static/osd/{path:path}", _osd_static, methods=["GET"]),
        Route("/tiles/attention/{version}/{image_id}_files/" + tile + ".png", _overlay_tile, methods=["GET"]),
        Route("/tiles/attention/{version}/{image_id}/at.json", _attention_at, methods=["GET"]),
        Route("/tiles/{image_id}.dzi", _dzi, methods=["GET"]),
        Route("/tiles/{image_id}_files/" + tile + ".jpeg", _slide_tile, methods=["GET"]),
        Route("/tiles/{rest:path}", _not_found, methods=["GET"]),
    ]
