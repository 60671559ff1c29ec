"""The viewer's annotation panel: how much attention falls inside the tumour outline, the slide's annotations,
and QuPath GeoJSON export and import buttons; and the drawing layer's data and its ops (``viewer_annotations``).
User text (notes, classes, authors, file names) is shown as text."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import SlideLensError
from core.review.annotation_metrics import slide_figures
from core.review.annotation_ops import apply_op
from core.review.annotations import feature_collection, loads_geojson, parse_features
from ui.safe import md

_DONE = "_ann_ops_done"  # op ids already applied (the browser resends its queue until they are acknowledged)
_UNDO = "_ann_undo"  # (cohort, slide) -> this session's undo stack
_MSG = "_ann_msg"  # the last op's result: shown in the viewer's toolbar and above the annotation table


def viewer_annotations(cohort: Any, image_id: str, dims: tuple[int, int] | None
                       ) -> tuple[dict[str, Any] | None, Any]:
    """The viewer's annotation layer data (see ``ui.viewer_component.annotation_data``) and the callback that
    stores the browser's ops; (None, None) when the review database cannot be read."""
    from ui.review_panel import cohort_store, current_reviewer
    from ui.viewer_component import annotation_data

    try:
        store = cohort_store(cohort)
        anns = store.annotations(image_id)
        classes = list(store.annotation_classes())
        viewer_only = store.actor is not None and store.role_of(store.actor) == "viewer"
    except SlideLensError:
        return None, None  # the panel below says why
    undo_key = f"{cohort.name}\x1f{image_id}"
    who = current_reviewer()
    why_not = ("your role is viewer: annotations are read-only" if viewer_only
               else "" if who else "enter your name (right) to draw and edit annotations")

    def on_ops(ops: list[dict[str, Any]]) -> None:
        done = st.session_state.setdefault(_DONE, [])
        undo = st.session_state.setdefault(_UNDO, {}).setdefault(undo_key, [])
        store = cohort_store(cohort)
        for op in ops:
            op_id = str(op.get("op_id") if isinstance(op, dict) else "")
            if not op_id or op_id in done:
                continue
            res = apply_op(store, image_id, op, current_reviewer(), dims, undo)
            done.append(op_id)
            st.session_state[_MSG] = {"kind": res.kind, "text": res.text, "nonce": op_id}
        del done[:-500]

    data = annotation_data(anns, classes, not why_not, why_not, list(st.session_state.get(_DONE, [])),
                           st.session_state.get(_MSG), bool(st.session_state.get(_UNDO, {}).get(undo_key)))
    return data, on_ops


def attention_caption(anns: list[Any], layer: Any) -> str | None:
    """'62% of the model's attention is inside your tumour outline (...)' or None without tumour annotations."""
    if layer is None:
        return None
    fig = slide_figures(anns, layer.values.max(axis=1), layer.coords, layer.patch_size_level0)
    return None if fig is None else fig.caption()


def annotation_table(anns: list[Any]) -> pd.DataFrame:
    """The slide's annotations as a table (class, shape, note, author, last change, version)."""
    return pd.DataFrame([{"id": a.id, "class": a.cls, "shape": a.geometry.get("type"), "note": a.note,
                          "author": a.author, "updated": a.updated_at[:19].replace("T", " "),
                          "updated_by": a.updated_by, "version": a.version} for a in anns],
                        columns=["id", "class", "shape", "note", "author", "updated", "updated_by", "version"])


def annotations_panel(cohort: Any, image_id: str, layer: Any, dims: tuple[int, int] | None) -> None:
    """Caption, table, export and import of one slide's annotations (below the viewer)."""
    from ui.review_panel import cohort_store, current_reviewer

    try:
        store = cohort_store(cohort)
        anns = store.annotations(image_id)
    except SlideLensError as exc:
        st.warning(md(exc))
        return
    msg = st.session_state.get(_MSG)
    if msg and msg["kind"] == "error" and st.session_state.get("_ann_msg_seen") != msg["nonce"]:
        st.session_state["_ann_msg_seen"] = msg["nonce"]  # a refused change (stale version, bad shape), once
        st.error(md(f"Annotation not saved: {msg['text']}"))
    cap = attention_caption(anns, layer)
    if cap:
        st.markdown(f"**{md(cap)}**")
    with st.expander(f"Annotations ({len(anns)})", expanded=bool(anns)):
        if anns:
            st.dataframe(annotation_table(anns), hide_index=True, key="ann_table")
        else:
            st.caption("No annotations on this slide yet: draw with the viewer's annotation toolbar, or import "
                       "QuPath GeoJSON below (or `python -m core annotations import`).")
        st.download_button("Export GeoJSON (QuPath)", json.dumps(feature_collection(anns), indent=1).encode(),
                           file_name=f"{image_id}.geojson", mime="application/geo+json", key="ann_export",
                           on_click="ignore", disabled=not anns)
        up = st.file_uploader("Import GeoJSON (QuPath)", type=["geojson", "json"], key="ann_import")
        add_new = st.checkbox("Add unknown classes to this cohort's list", key="ann_add_classes")
        if up is not None and st.button("Import", key="ann_import_go"):
            _import(store, image_id, up, add_new, dims, current_reviewer())


def _import(store: Any, image_id: str, up: Any, add_new: bool, dims: tuple[int, int] | None, who: str) -> None:
    try:
        doc = loads_geojson(up.getvalue(), up.name)
        known = list(store.annotation_classes())
        rep = parse_features(doc, up.name, known, image_id=image_id, dims=dims, add_classes=add_new)
        if any(f.image_id not in (None, image_id) for f in rep.features):
            raise SlideLensError(f"{up.name}: names other slides; import it with `python -m core annotations "
                                 "import` instead")
        if rep.new_classes:
            store.set_annotation_classes(known + rep.new_classes)
        store.add_annotations([(image_id, f.geometry, f.cls, f.note) for f in rep.features], who, reason="import")
    except SlideLensError as exc:
        st.error(md(exc))
        return
    for w in rep.warnings:
        st.warning(md(w))
    st.success(md(f"Imported {rep.summary()} from {up.name}"))
