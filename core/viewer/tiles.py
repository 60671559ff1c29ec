"""Deep Zoom tiles, attention overlay tiles and OpenSeadragon's files, served by the app's own process.

Routes (all GET, all under ``/tiles/``; anything else under ``/tiles/`` is a 4xx, never a file):

- ``/tiles/<image_id>.dzi``                                   Deep Zoom descriptor (XML)
- ``/tiles/<image_id>_files/<level>/<col>_<row>.jpeg``        slide tiles (254 px, overlap 1, limit_bounds=False)
- ``/tiles/attention/<version>/<image_id>_files/<level>/<col>_<row>.png``   overlay tiles (RGBA PNG, same grid),
  query ``cls`` (class index), ``cmap`` (``core.viewer.overlay.COLORMAPS``), ``scale`` (percentile|rank|minmax),
  ``top`` (fraction of patches shown, 0..1]
- ``/tiles/attention/<version>/<image_id>/at.json?x=&y=``     the patch under a level-0 point and its raw values
- ``/tiles/_static/osd/<file>``                               OpenSeadragon's build (from node_modules)
- ``/tiles/_static/annotorious/<file>``                       Annotorious for OpenSeadragon's build (UMD + CSS)

Every route accepts ``?cohort=<name>`` when two registered cohorts share an image id. Slides are found only
among the cohorts the app registered (``register_cohort``): an id is a dictionary key, never a path.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from core.cohort.cohort_file import Cohort, default_cohort_path, load_cohort
from core.errors import SlideLensError
from core.slides.cache import SlideCache
from core.slides.slide import DZ_OVERLAP, DZ_TILE_SIZE, Slide
from core.viewer.attention_layers import (  # noqa: F401  (re-exported: the page and tests use them from here)
    AttentionLayer,
    OverlayStyle,
    TileError,
    _check_name,
    attention_at,
    attention_path,
    check_tile,
    layer_colors,
    load_attention_layer,
    overlay_tile_png,
    read_attention,
)

JPEG_QUALITY = 80
SLIDE_CACHE_CONTROL = "public, max-age=86400"
OVERLAY_CACHE_CONTROL = "public, max-age=3600"
OSD_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "openseadragon" / "build" / "openseadragon"
ANNO_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "@annotorious" / "openseadragon" / "dist"

_cohorts: OrderedDict[str, Cohort] = OrderedDict()
_cohorts_lock = threading.Lock()
_slide_cache: SlideCache | None = None
_slide_cache_lock = threading.Lock()


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
    return shared_slide_cache().get(cohort.slide_path(image_id), cohort.mpp_for(image_id), cohort.cache_dir)


def _slide(image_id: str, cohort_name: str | None) -> Slide:
    cohort, path = resolve_slide(image_id, cohort_name)
    try:
        return shared_slide_cache().get(path, cohort.mpp_for(image_id), cohort.cache_dir)
    except SlideLensError as exc:
        raise TileError(500, str(exc)) from exc


# --- slide tiles --------------------------------------------------------------------------------------
def dzi_xml(slide: Slide, tile_size: int = DZ_TILE_SIZE, overlap: int = DZ_OVERLAP) -> str:
    """The Deep Zoom descriptor of a slide (JPEG tiles, level-0 size)."""
    return slide.deepzoom(tile_size, overlap).get_dzi("jpeg")


def slide_tile_jpeg(slide: Slide, level: int, col: int, row: int, quality: int = JPEG_QUALITY) -> bytes:
    """One Deep Zoom tile of the slide, JPEG-encoded."""
    check_tile(slide.dimensions, level, col, row)
    buf = io.BytesIO()
    slide.deepzoom_tile(level, col, row).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


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


_anno_files: dict[str, Path] | None = None


def _anno_file(rel: str) -> Path:
    """A file of Annotorious's build: only its top-level .js/.css files (an allow-list built once)."""
    global _anno_files
    if _anno_files is None:
        _anno_files = ({p.name: p for p in ANNO_DIR.iterdir() if p.is_file() and p.suffix in (".js", ".css")}
                       if ANNO_DIR.is_dir() else {})
    path = _anno_files.get(rel)
    if path is None:
        hint = "" if _anno_files else " (Annotorious is not installed: run `make install`)"
        raise TileError(404, f"no such file {rel!r}{hint}")
    return path


@_answer
def _anno_static(request: Request, path: str) -> Response:
    file = _anno_file(path)
    media = "text/css" if file.suffix == ".css" else "text/javascript"
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
        Route("/tiles/_static/annotorious/{path:path}", _anno_static, methods=["GET"]),
        Route("/tiles/attention/{version}/{image_id}_files/" + tile + ".png", _overlay_tile, methods=["GET"]),
        Route("/tiles/attention/{version}/{image_id}/at.json", _attention_at, methods=["GET"]),
        Route("/tiles/{image_id}.dzi", _dzi, methods=["GET"]),
        Route("/tiles/{image_id}_files/" + tile + ".jpeg", _slide_tile, methods=["GET"]),
        Route("/tiles/{rest:path}", _not_found, methods=["GET"]),
    ]
