"""The slide viewer widget: OpenSeadragon in a Streamlit components-v2 element, fed by the app's tile routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import streamlit as st

from core import overlay
from core.slides import DZ_OVERLAP, DZ_TILE_SIZE, Slide
from core.tiles import OverlayStyle

_FRONTEND = Path(__file__).parent / "frontend" / "viewer"


@st.cache_resource(show_spinner=False)
def _component() -> Any:
    return st.components.v2.component(
        "slidelens.viewer",
        js=(_FRONTEND / "viewer.js").read_text(),
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

    Colour map, rescaling and top fraction are chosen in the viewer itself (no rerun of the page): it appends
    ``cmap``, ``scale`` and ``top`` to ``query``. ``legends`` holds a CSS gradient per colour map.
    """
    base = f"/tiles/attention/{quote(version)}/{quote(image_id)}"
    cq = f"cohort={quote(cohort_name)}"
    default = OverlayStyle()
    return {"url": f"{base}_files/", "query": f"?cls={int(cls)}&{cq}&t={stamp}", "at_url": f"{base}/at.json?{cq}",
            "cmaps": list(overlay.COLORMAPS), "scales": list(overlay.RESCALE_METHODS),
            "default": {"cmap": default.cmap, "scale": default.scale, "top": default.top},
            "legends": {name: _gradient(name) for name in overlay.COLORMAPS}}


def _gradient(cmap: str, stops: int = 9) -> str:
    lut = overlay.colormap_lut(cmap)
    idx = [round(i * (len(lut) - 1) / (stops - 1)) for i in range(stops)]
    colours = ", ".join("#" + "".join(f"{int(v):02x}" for v in lut[i][:3]) for i in idx)
    return f"linear-gradient(to right, {colours})"


def slide_viewer(slide: dict[str, Any], overlay: dict[str, Any] | None = None, goto: dict[str, Any] | None = None,
                 height: int = 600, key: str = "slide_viewer") -> dict[str, Any] | None:
    """Show the viewer; returns the last viewport the browser reported ({image_id, x, y, zoom, bounds}) or None.

    ``goto`` = {x, y, w, h, nonce} (level-0 box) pans and zooms to that box once per new ``nonce``.
    """
    data = {**slide, "overlay": overlay, "goto": goto, "view_height": height}
    result = _component()(data=data, key=key, default={"viewport": None}, on_viewport_change=lambda: None)
    return result.get("viewport") if hasattr(result, "get") else getattr(result, "viewport", None)
