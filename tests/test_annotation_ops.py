"""Annotation changes drawn in the viewer (core.review.annotation_ops): each create / edit / delete / undo goes through the
store with the reviewer's name and is audited; bad shapes, unknown classes and stale edits are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.review.annotation_ops import apply_op
from core.review.store import Store, open_store

SQUARE = {"type": "Polygon", "coordinates": [[[10, 10], [50, 10], [50, 40], [10, 40], [10, 10]]]}
MOVED = {"type": "Polygon", "coordinates": [[[20, 10], [60, 10], [60, 40], [20, 40], [20, 10]]]}
DIMS = (1000, 700)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = open_store(f"sqlite:///{tmp_path / 'review.db'}")
    st.sync_slides(["s1", "s2"])
    return st


def test_create_edit_delete_from_the_viewer_are_audited(store: Store) -> None:
    undo: list = []
    r = apply_op(store, "s1", {"op": "create", "image_id": "s1", "geometry": SQUARE, "cls": "Tumour",
                               "note": "<b>x</b>"}, "ann", DIMS, undo)
    assert r.kind == "success", r.text
    (a,) = store.annotations("s1")
    assert (a.cls, a.note, a.author, a.geometry) == ("Tumour", "<b>x</b>", "ann", SQUARE)
    r = apply_op(store, "s1", {"op": "edit", "id": a.id, "version": 1, "changes": {"geometry": MOVED}}, "bob",
                 DIMS, undo)
    assert r.kind == "success" and store.annotation(a.id).geometry == MOVED
    apply_op(store, "s1", {"op": "edit", "id": a.id, "version": 2, "changes": {"cls": "Stroma", "note": "n"}},
             "bob", DIMS, undo)
    apply_op(store, "s1", {"op": "delete", "id": a.id, "version": 3}, "bob", DIMS, undo)
    assert store.annotations("s1") == []
    assert [(h.action, h.reviewer) for h in store.annotation_history("s1")] == [
        ("create", "ann"), ("edit", "bob"), ("edit", "bob"), ("delete", "bob")]
    point = {"type": "Point", "coordinates": [12.5, 30.25]}
    assert apply_op(store, "s1", {"op": "create", "geometry": point, "cls": "Other"}, "ann", DIMS, undo).kind == "success"
    assert store.annotations("s1")[0].geometry == point


def test_undo_reverts_create_edit_and_delete_through_the_store(store: Store) -> None:
    undo: list = []
    apply_op(store, "s1", {"op": "create", "geometry": SQUARE, "cls": "Tumour"}, "ann", DIMS, undo)
    (a,) = store.annotations("s1")
    apply_op(store, "s1", {"op": "edit", "id": a.id, "version": 1, "changes": {"geometry": MOVED}}, "ann", DIMS, undo)
    assert apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, undo).kind == "success"
    assert store.annotation(a.id).geometry == SQUARE and store.annotation(a.id).version == 3
    apply_op(store, "s1", {"op": "delete", "id": a.id, "version": 3}, "ann", DIMS, undo)
    apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, undo)
    (b,) = store.annotations("s1")
    assert (b.geometry, b.cls) == (SQUARE, "Tumour") and b.id != a.id
    assert store.annotation_history(annotation_id=b.id)[0].reason == "undo"
    apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, undo)  # the undo of the first edit is gone: pops the edit
    apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, undo)  # ...then the create: deletes #a (already gone)
    assert apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, []).text == "nothing to undo"


def test_stale_edit_from_the_viewer_is_refused_with_the_other_change_shown(store: Store) -> None:
    undo: list = []
    apply_op(store, "s1", {"op": "create", "geometry": SQUARE, "cls": "Tumour"}, "ann", DIMS, undo)
    (a,) = store.annotations("s1")
    store.edit_annotation(a.id, {"cls": "Necrosis"}, "bob", based_on_version=1)  # the other reviewer, first
    r = apply_op(store, "s1", {"op": "edit", "id": a.id, "version": 1, "changes": {"geometry": MOVED}}, "ann",
                 DIMS, undo)
    assert r.kind == "error" and "bob edited annotation" in r.text and "Necrosis" in r.text
    assert store.annotation(a.id).geometry == SQUARE
    r = apply_op(store, "s1", {"op": "undo"}, "ann", DIMS, undo)  # undoing the create over bob's edit: refused
    assert r.kind == "error" and "bob" in r.text and store.annotation(a.id) is not None


@pytest.mark.parametrize("op, match", [
    ({"op": "create", "geometry": SQUARE, "cls": "Fat"}, "class 'Fat' is not in this cohort's list"),
    ({"op": "create", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2000, 0], [0, 5], [0, 0]]]},
      "cls": "Tumour"}, "fall outside the slide"),
    ({"op": "create", "geometry": {"type": "Circle"}, "cls": "Tumour"}, "not supported"),
    ({"op": "create", "image_id": "s2", "geometry": SQUARE, "cls": "Tumour"}, "arrived on 's1'"),
    ({"op": "paint"}, "unknown op"),
])
def test_bad_viewer_ops_are_one_line_and_save_nothing(store: Store, op: dict, match: str) -> None:
    r = apply_op(store, "s1", op, "ann", DIMS, [])
    assert r.kind == "error" and match in r.text and "\n" not in r.text
    assert store.annotations() == []


def test_no_reviewer_name_is_refused(store: Store) -> None:
    r = apply_op(store, "s1", {"op": "create", "geometry": SQUARE, "cls": "Tumour"}, "", DIMS, [])
    assert r.kind == "error" and "reviewer name is required" in r.text


def test_self_intersecting_freehand_is_repaired_with_a_warning(store: Store) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [20, 20], [20, 0], [0, 20], [0, 0]]]}
    r = apply_op(store, "s1", {"op": "create", "geometry": bowtie, "cls": "Tumour"}, "ann", DIMS, [])
    assert r.kind == "warning" and "repaired" in r.text
    assert store.annotations("s1")[0].geometry["type"] == "MultiPolygon"


def test_annotorious_build_is_served_by_the_app_and_nothing_else_of_node_modules() -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from core.viewer import tiles

    if not tiles.ANNO_DIR.is_dir():
        pytest.skip("@annotorious/openseadragon is not installed (npm ci)")
    client = TestClient(Starlette(routes=tiles.tile_routes()))
    js = client.get("/tiles/_static/annotorious/annotorious-openseadragon.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"AnnotoriousOSD" in js.content[:2000]
    assert client.get("/tiles/_static/annotorious/annotorious-openseadragon.css").status_code == 200
    for bad in ("package.json", "../package.json", "themes/x.css", "annotorious-openseadragon.js.map"):
        assert client.get(f"/tiles/_static/annotorious/{bad}").status_code in (400, 404), bad
