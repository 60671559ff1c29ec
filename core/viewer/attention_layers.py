"""Attention layers for the overlay tiles: read an attention file once, paint its raster, colour it per style.

Used by the tile routes (``core.viewer.tiles``) and the viewer page; the numpy geometry lives in ``core.viewer.overlay``.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from core.cohort.cohort_file import Cohort
from core.errors import InputError, SlideLensError
from core.slides.slide import DZ_TILE_SIZE
from core.viewer import overlay

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +()=,-]*$")


class TileError(SlideLensError):
    """A tile request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _check_name(kind: str, name: str) -> str:
    if ".." in name or "/" in name or "\\" in name or not _SAFE_NAME.match(name):
        raise TileError(400, f"invalid {kind} {name!r}")
    return name


def check_tile(dims: tuple[int, int], level: int, col: int, row: int, tile_size: int = DZ_TILE_SIZE) -> None:
    """Raise ``TileError(404)`` unless (level, col, row) is a tile of a slide of level-0 size ``dims``."""
    sizes = overlay.dz_level_dimensions(dims)
    if not 0 <= level < len(sizes):
        raise TileError(404, f"level {level} out of range 0..{len(sizes) - 1}")
    w, h = sizes[level]
    cols, rows = -(-w // tile_size), -(-h // tile_size)
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileError(404, f"tile {col}_{row} out of range at level {level} ({cols}x{rows} tiles)")


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
    """How the overlay is drawn: class column, colour map, rescaling, top fraction shown, opacity that follows the
    value (``fade``: low attention fades into the tissue) and ``render`` (patch blocks or a smooth map).

    The defaults show where the model looks at a glance: the top 20% of patches by rank, the most attended the
    most opaque, so the tissue stays visible under everything else.
    """

    cls: int = 0
    cmap: str = "inferno"
    scale: str = "rank"
    top: float = 0.2
    fade: bool = True
    render: str = "blocks"

    @classmethod
    def from_query(cls, q: Any) -> OverlayStyle:
        d = cls()
        fade = str(q.get("fade", "1" if d.fade else "0")).lower()
        if fade not in ("1", "0", "true", "false"):
            raise TileError(400, f"fade must be 1 or 0, got {fade!r}")
        try:
            style = cls(int(q.get("cls", d.cls)), str(q.get("cmap", d.cmap)), str(q.get("scale", d.scale)),
                        float(q.get("top", d.top)), fade in ("1", "true"), str(q.get("render", d.render)))
        except ValueError as exc:
            raise TileError(400, f"invalid overlay parameter ({exc})") from None
        if style.cmap not in overlay.COLORMAPS:
            raise TileError(400, f"unknown colour map {style.cmap!r}")
        if style.scale not in overlay.RESCALE_METHODS:
            raise TileError(400, f"unknown rescaling {style.scale!r}")
        if not 0 < style.top <= 1:
            raise TileError(400, f"top must be in (0, 1], got {style.top}")
        if style.render not in overlay.RENDERINGS:
            raise TileError(400, f"unknown rendering {style.render!r}; choose one of {', '.join(overlay.RENDERINGS)}")
        return style

    def query(self) -> str:
        return (f"cls={self.cls}&cmap={self.cmap}&scale={self.scale}&top={self.top:g}&fade={int(self.fade)}"
                f"&render={self.render}")


def _display(layer: AttentionLayer, style: OverlayStyle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescaled values, visible mask and per-patch opacity (uint8) of a layer under a style."""
    scaled, visible = overlay.display_values(layer.column(style.cls), style.scale, style.top)
    alpha = overlay.fade_alpha(scaled) if style.fade else np.full(len(scaled), 255, np.uint8)
    return scaled, visible, alpha


def layer_colors(layer: AttentionLayer, style: OverlayStyle) -> np.ndarray:
    """(N+1) x 4 RGBA table of a layer under a style (cached)."""
    def make() -> np.ndarray:
        scaled, visible, alpha = _display(layer, style)
        return overlay.patch_colors(scaled, overlay.colormap_lut(style.cmap), visible, alpha)

    return _colors.get_or((layer.key, style), make)


def layer_smooth_grid(layer: AttentionLayer, style: OverlayStyle) -> overlay.SmoothGrid:
    """The smooth rendering's patch-sized grid of a layer under a style (cached)."""
    def make() -> overlay.SmoothGrid:
        scaled, visible, alpha = _display(layer, style)
        return overlay.smooth_grid(layer.raster, scaled, np.where(visible, alpha / 255.0, 0.0))

    return _colors.get_or(("smooth", layer.key, style), make)


def overlay_tile_png(layer: AttentionLayer, style: OverlayStyle, level: int, col: int, row: int) -> bytes:
    """One overlay tile as an RGBA PNG, on the slide's Deep Zoom grid."""
    check_tile(layer.raster.dimensions, level, col, row)
    if style.render == "smooth":
        rgba = overlay.smooth_tile(layer_smooth_grid(layer, style), overlay.colormap_lut(style.cmap), level, col, row)
    else:
        rgba = overlay.overlay_tile(layer.raster, layer_colors(layer, style), level, col, row)
    if not rgba[..., 3].any():
        h, w = rgba.shape[:2]
        return _blank_png.get_or((w, h), lambda: _png(np.zeros((h, w, 4), np.uint8)))
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
