"""The slide viewer widget (OpenSeadragon in a Streamlit components-v2 element, fed by the app's tile routes) and
the viewer page's cached data: its slide table, the chooser's thumbnails and the gallery's tissue fractions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import streamlit as st

from core.cohort.cohort_file import Cohort
from core.errors import SlideLensError
from core.review import viewer_data as vd
from core.slides.slide import DZ_OVERLAP, DZ_TILE_SIZE, Slide
from core.viewer import overlay
from core.viewer.tiles import OverlayStyle, open_cohort_slide

_FRONTEND = Path(__file__).parent / "frontend" / "viewer"


@st.cache_resource(show_spinner=False)
def _component() -> Any:
    return st.components.v2.component(
        "slidelens.viewer",
        js=(_FRONTEND / "annotate.js").read_text() + "\n" + (_FRONTEND / "viewer.js").read_text(),
        css=(_FRONTEND / "viewer.css").read_text(),
        isolate_styles=False,  # OpenSeadragon's full-screen mode and mouse handling need the real DOM
    )


def slide_data(slide: Slide, image_id: str, cohort_name: str) -> dict[str, Any]:
    """What the viewer needs to open a slide: level-0 size, tile grid, mpp, objective and tile URLs."""
    w, h = slide.dimensions
    return {"image_id": image_id, "cohort": cohort_name, "width": w, "height": h, "tile_size": DZ_TILE_SIZE,
            "overlap": DZ_OVERLAP, "mpp": slide.mpp, "objective": slide.objective_power,
            "tiles_url": f"/tiles/{quote(image_id)}_files/", "query": f"?cohort={quote(cohort_name)}"}


def overlay_data(version: str, image_id: str, cohort_name: str, cls: int = 0, stamp: int = 0) -> dict[str, Any]:
    """Overlay tile URLs for a (model version, slide) and attention column ``cls``; ``stamp`` busts browser caches.

    Colour map, rescaling, top fraction, fading and rendering are chosen in the viewer itself (no rerun of the
    page): it appends ``cmap``, ``scale``, ``top``, ``fade`` and ``render`` to ``query``. ``legends`` holds a CSS gradient per colour map.
    """
    base = f"/tiles/attention/{quote(version)}/{quote(image_id)}"
    cq = f"cohort={quote(cohort_name)}"
    default = OverlayStyle()
    return {"url": f"{base}_files/", "query": f"?cls={int(cls)}&{cq}&t={stamp}", "at_url": f"{base}/at.json?{cq}",
            "cmaps": list(overlay.COLORMAPS), "scales": list(overlay.RESCALE_METHODS),
            "renders": list(overlay.RENDERINGS),
            "default": {"cmap": default.cmap, "scale": default.scale, "top": default.top, "fade": default.fade,
                        "render": default.render},
            "legends": {name: _gradient(name) for name in overlay.COLORMAPS}}


def _gradient(cmap: str, stops: int = 9) -> str:
    lut = overlay.colormap_lut(cmap)
    idx = [round(i * (len(lut) - 1) / (stops - 1)) for i in range(stops)]
    colours = ", ".join("#" + "".join(f"{int(v):02x}" for v in lut[i][:3]) for i in idx)
    return f"linear-gradient(to right, {colours})"


def slide_viewer(slide: dict[str, Any], overlay: dict[str, Any] | None = None, goto: dict[str, Any] | None = None,
                 height: int = 600, key: str = "slide_viewer", annotations: dict[str, Any] | None = None,
                 on_annotation_ops: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any] | None:
    """Show the viewer; returns the last viewport the browser reported ({image_id, x, y, zoom, bounds}) or None.

    ``goto`` = {x, y, w, h, nonce} (level-0 box) pans and zooms to that box once per new ``nonce``.
    ``annotations`` (see ``annotation_data``) turns on the drawing toolbar; the browser's queue of annotation ops
    reaches ``on_annotation_ops`` before the next script run (a callback), so the run shows them stored.
    """
    data = {**slide, "overlay": overlay, "goto": goto, "view_height": height, "annotations": annotations}

    def ops_changed() -> None:
        state = st.session_state.get(key)
        ops = state.get("anno_ops") if hasattr(state, "get") else None
        if on_annotation_ops is not None and isinstance(ops, list):
            on_annotation_ops(ops)

    result = _component()(data=data, key=key, default={"viewport": None, "anno_ops": None},
                          on_viewport_change=lambda: None, on_anno_ops_change=ops_changed)
    return result.get("viewport") if hasattr(result, "get") else getattr(result, "viewport", None)


def annotation_data(anns: list[Any], classes: list[str], can_edit: bool, why_not: str, done: list[str],
                    message: dict[str, Any] | None, can_undo: bool) -> dict[str, Any]:
    """The viewer's annotation layer: the slide's annotations (GeoJSON, level-0), the cohort's classes and their
    fixed colours, whether this session may draw (and why not), the op ids already applied and the last result."""
    from core.review.annotations import colour_hex

    names = list(dict.fromkeys([*classes, *(a.cls for a in anns)]))
    return {"items": [{"id": a.id, "version": a.version, "cls": a.cls, "note": a.note, "author": a.author,
                       "geometry": a.geometry} for a in anns],
            "classes": list(classes), "colours": {c: colour_hex(c) for c in names}, "can_edit": can_edit,
            "why_not": why_not, "done": done, "message": message, "can_undo": can_undo}


# --- the page's cached data -------------------------------------------------------------------------------
def _store(cohort: Cohort) -> tuple[Any | None, str | None]:
    """The cohort's review database (the relabel panel's, so both see the same edits), or None and why not."""
    try:
        from ui.review_panel import cohort_store

        return cohort_store(cohort), None
    except Exception as exc:  # noqa: BLE001 (any driver error: the page falls back to the labels file)
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@st.cache_data(show_spinner=False, max_entries=16)
def _table(source: str, version: str | None, stamp: tuple[float, ...], position: int | None, _cohort: Cohort,
           _store: Any) -> pd.DataFrame:
    return vd.viewer_slide_table(_cohort, _store, version)


def viewer_table(cohort: Cohort, version: str | None) -> tuple[pd.DataFrame, str | None]:
    """The slide table (see core.review.slide_table) and, when the review database cannot be read, one line saying so.

    Cached until a labels, predictions or model file changes or the review database gets a new edit, so a
    relabel shows at once.
    """
    store, problem = _store(cohort)
    position = None
    if store is not None:
        try:
            position = int(store.snapshot()[1])  # the audit log's last id: moves with every edit
        except Exception as exc:  # noqa: BLE001
            store, problem = None, str(exc).splitlines()[0]
    table = _table(str(cohort.source or cohort.root), version, vd.table_stamp(cohort, version), position, cohort,
                   store)
    note = None if problem is None else (f"The review database cannot be read ({problem}): labels are the "
                                         "labels file's, without reviewers' changes.")
    return table, note


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumb(path: str, mtime: float, cache_dir: str, size: int) -> str | None:
    return vd.thumbnail_data_url(Path(path), Path(cache_dir), size)


def slide_thumbnails(cohort: Cohort, ids: list[str], size: int = 64) -> list[str | None]:
    """Small thumbnails (data URLs) for the chooser; None for a slide that has none yet."""
    out = []
    for image_id in ids:
        path = cohort.slide_paths.get(image_id)
        mtime = path.stat().st_mtime if path is not None and path.is_file() else 0.0
        out.append(_thumb(str(path), mtime, str(cohort.cache_dir), size) if path is not None else None)
    return out


@st.cache_data(show_spinner=False, max_entries=32)
def _tissue_mask(cohort_name: str, image_id: str, path: str, mtime: float, _cohort: Cohort) -> Any:
    from core.slides.tiling import tissue_mask

    return tissue_mask(open_cohort_slide(_cohort, image_id))


def tissue_fractions(cohort: Cohort, image_id: str, size: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """``coords -> tissue fractions`` of ``size``-pixel patches on the slide's tissue mask (cached per slide), or
    None when the slide cannot be read."""
    path = cohort.slide_paths.get(image_id)
    try:
        mask = _tissue_mask(cohort.name, image_id, str(path), path.stat().st_mtime if path else 0.0, cohort)
    except (SlideLensError, OSError):
        return None
    return lambda coords: vd.patch_tissue_fractions(mask, np.asarray(coords), size)
