"""Region annotations: the store and its audit log (SQLite, and PostgreSQL when SLIDELENS_TEST_PG_URL names a server),
QuPath GeoJSON in and out with bad input, the attention-inside figures on a hand-computed case, and the CLI."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
from _db import BACKENDS, PG_URL, fresh_pg
from sqlalchemy import inspect

from core.cli import main
from core.errors import InputError
from core.review import annotations as A
from core.review.annotation_metrics import attention_inside, auroc, cohort_inside_table, patches_inside, tumour_region
from core.review.store import ConflictError, Store, open_store
from tests._review_data import make_review_cohort

SQUARE = {"type": "Polygon", "coordinates": [[[10, 10], [50, 10], [50, 40], [10, 40], [10, 10]]]}
BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [20, 20], [20, 0], [0, 20], [0, 0]]]}


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgresql":
        fresh_pg(PG_URL)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'review.db'}"
    st = open_store(url)
    st.sync_slides(["s1", "s2"])
    return st


def test_create_edit_delete_are_audited_and_replayable_at_any_position(store: Store) -> None:
    a = store.add_annotation("s1", SQUARE, "Tumour", "ann", note="<script>alert(1)</script>")
    assert (a.version, a.author, a.cls) == (1, "ann", "Tumour")
    assert store.annotations("s1")[0].note == "<script>alert(1)</script>"  # kept as text, shown escaped
    b = store.edit_annotation(a.id, {"cls": "Stroma", "geometry": BOWTIE}, "bob", based_on_version=1)
    assert (b.version, b.cls, b.updated_by, b.author) == (2, "Stroma", "bob", "ann")
    store.delete_annotation(a.id, "carol", based_on_version=2)
    assert store.annotations() == [] and store.annotation(a.id) is None
    hist = store.annotation_history("s1")
    assert [(r.action, r.reviewer, r.version) for r in hist] == [("create", "ann", 1), ("edit", "bob", 2),
                                                                 ("delete", "carol", 3)]
    assert store.annotations_at(hist[0].id)[a.id].cls == "Tumour"
    assert store.annotations_at(hist[1].id)[a.id].geometry == BOWTIE
    assert store.annotations_at(hist[2].id) == {} == store.annotations_at()
    assert store.states()["s1"].version == 0  # the labels' audit (and so "reviewed") is untouched


def test_stale_edit_is_refused_with_the_first_change_shown(store: Store) -> None:
    a = store.add_annotation("s1", SQUARE, "Tumour", "ann")
    store.edit_annotation(a.id, {"note": "first"}, "bob", 1)
    with pytest.raises(ConflictError, match=r"bob edited annotation #\d+ \(Tumour\)"):
        store.edit_annotation(a.id, {"note": "second"}, "carol", 1)
    with pytest.raises(ConflictError):
        store.delete_annotation(a.id, "carol", 1)
    assert store.annotation(a.id).note == "first"
    with pytest.raises(ConflictError, match="does not exist"):
        store.edit_annotation(999, {"note": "x"}, "carol", 1)


def test_two_reviewers_at_once_one_wins(store: Store) -> None:
    a = store.add_annotation("s1", SQUARE, "Tumour", "ann")
    results: list[str] = []

    def go(who: str) -> None:
        try:
            store.edit_annotation(a.id, {"note": who}, who, 1)
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=go, args=(w,)) for w in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict", "ok"]
    assert len(store.annotation_history(annotation_id=a.id)) == 2


def test_batch_import_is_all_or_nothing_and_needs_known_slides(store: Store) -> None:
    with pytest.raises(InputError, match="not in the review database: nope"):
        store.add_annotations([("s1", SQUARE, "Tumour", ""), ("nope", SQUARE, "Tumour", "")], "ann")
    assert store.annotations() == [] and store.annotation_history() == []
    with pytest.raises(InputError, match="reviewer name"):
        store.add_annotation("s1", SQUARE, "Tumour", "  ")


def test_annotation_classes_default_and_editable(store: Store) -> None:
    assert store.annotation_classes()[:3] == ("Tumour", "Stroma", "Necrosis")
    assert store.set_annotation_classes(["Tumour", " Tumour", "Lymph  node", ""]) == ("Tumour", "Lymph node")
    assert store.annotation_classes() == ("Tumour", "Lymph node")


def test_a_v5_database_gains_the_annotation_tables(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    st = open_store(f"sqlite:///{db}")
    st.sync_slides(["a"])
    with sqlite3.connect(db) as conn:  # make it look like a database from before annotations
        conn.execute("DROP TABLE annotation_audit")
        conn.execute("DROP TABLE annotations")
        conn.execute("DELETE FROM schema_version WHERE version = 6")
    st = open_store(f"sqlite:///{db}")
    assert {"annotations", "annotation_audit"} <= set(inspect(st.engine).get_table_names())
    assert st.add_annotation("a", SQUARE, "Tumour", "x").image_id == "a"


# -- GeoJSON ---------------------------------------------------------------------------------------------------
def qupath_export() -> list[dict]:
    """Shaped like QuPath 0.5's 'Export objects as GeoJSON' (a bare array, 'pretty' with ids, a detection)."""
    return [
        {"type": "Feature", "id": "6f0c0f6e-1", "geometry": {"type": "Polygon", "coordinates": [
            [[20.5, 10], [100, 10], [100, 80], [20.5, 80], [20.5, 10]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "isLocked": False}},
        {"type": "Feature", "id": "6f0c0f6e-2", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [5, 0], [5, 5], [0, 0]]], [[[110, 60], [120, 60], [120, 70], [110, 60]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [150, 200, 150]}}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[1, 1], [30, 30]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Other"}, "name": "margin"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [64, 48]},
         "properties": {"objectType": "annotation", "classification": {"name": "Necrosis"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [2, 1], [2, 2], [1, 1]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Tumor"}}},
    ]


def test_qupath_shaped_file_parses_and_skips_detections() -> None:
    rep = A.parse_features(qupath_export(), "qp.geojson", ["Tumour", "Stroma", "Necrosis", "Other"],
                           image_id="s1", dims=(128, 96), add_classes=True)
    assert [f.geometry["type"] for f in rep.features] == ["Polygon", "MultiPolygon", "LineString", "Point"]
    assert rep.skipped_detections == 1 and rep.new_classes == ["Tumor"]  # 'Tumor' is not 'Tumour'
    assert rep.features[2].note == "margin" and rep.features[0].image_id == "s1"


def test_export_then_import_round_trips_exactly(store: Store) -> None:
    rep = A.parse_features({"type": "FeatureCollection", "features": qupath_export()}, "qp", ["Tumor", "Stroma",
                           "Necrosis", "Other"], image_id="s1")
    store.add_annotations([(f.image_id, f.geometry, f.cls, f.note) for f in rep.features], "ann")
    first = A.feature_collection(store.annotations("s1"))
    doc = json.loads(json.dumps(first))
    back = A.parse_features(doc, "export", ["Tumor", "Stroma", "Necrosis", "Other"])
    store.add_annotations([(f.image_id, f.geometry, f.cls, f.note) for f in back.features], "bob")
    again = [a for a in store.annotations("s1") if a.author == "bob"]
    orig = [a for a in store.annotations("s1") if a.author == "ann"]
    assert [(a.geometry, a.cls, a.note, a.image_id) for a in again] == [
        (a.geometry, a.cls, a.note, a.image_id) for a in orig]
    assert first["features"][0]["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}


@pytest.mark.parametrize(("doc", "match"), [
    ({"type": "Feature", "properties": {"classification": {"name": "Tumour"}}}, "feature 0: no geometry"),
    ({"type": "Topology"}, "not a GeoJSON FeatureCollection"),
    ([{"type": "Feature", "geometry": SQUARE, "properties": {"classification": {"name": "Mystery"}}}],
     "unknown class 'Mystery'"),
    ([{"type": "Feature", "geometry": SQUARE, "properties": {}}], "no class"),
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [500, 0], [500, 9], [0, 0]]]},
       "properties": {"classification": {"name": "Tumour"}}}], "outside the slide"),
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 0]]]},
       "properties": {"classification": {"name": "Tumour"}}}], "malformed Polygon"),
    ([{"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []},
       "properties": {"classification": {"name": "Tumour"}}}], "'GeometryCollection' is not supported"),
])
def test_bad_features_are_one_clear_line(doc: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        A.parse_features(doc, "f.geojson", ["Tumour"], image_id="s1", dims=(128, 96))


def test_self_intersecting_polygon_is_repaired_with_a_warning_or_refused() -> None:
    feat = [{"type": "Feature", "geometry": BOWTIE, "properties": {"classification": {"name": "Tumour"}}}]
    rep = A.parse_features(feat, "f", ["Tumour"], image_id="s1")
    assert rep.warnings and "Self-intersection" in rep.warnings[0]
    fixed = shapely.geometry.shape(rep.features[0].geometry)
    assert fixed.is_valid and fixed.area == pytest.approx(200.0)
    with pytest.raises(InputError, match="invalid Polygon .*not imported"):
        A.parse_features(feat, "f", ["Tumour"], image_id="s1", repair=False)


def test_not_json_and_too_big_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.geojson"
    p.write_text("{not json")
    with pytest.raises(InputError, match=r"x.geojson: not JSON"):
        A.read_geojson_file(p)
    monkeypatch.setattr(A, "MAX_GEOJSON_BYTES", 1000)
    p.write_text(json.dumps({"type": "FeatureCollection", "features": [], "pad": "x" * 2000}))
    with pytest.raises(InputError, match="more than the 0 MB|is more than"):
        A.read_geojson_file(p)


# -- attention inside ------------------------------------------------------------------------------------------
def test_attention_inside_against_a_hand_computed_case() -> None:
    # four 10-px patches in a row; the tumour square covers the centres of patches 0 and 1 only
    coords = np.array([[0, 0], [10, 0], [20, 0], [30, 0]])
    values = np.array([0.4, 0.1, 0.3, 0.2])
    region = tumour_region([_ann({"type": "Polygon", "coordinates": [[[0, 0], [18, 0], [18, 10], [0, 10], [0, 0]]]},
                                 "Tumour"), _ann(SQUARE, "Stroma")])
    assert patches_inside(coords, 10, region).tolist() == [True, True, False, False]
    fig = attention_inside(values, coords, 10, region)
    assert fig.share == pytest.approx(0.5)
    # pairs (inside, outside): (0.4>0.3) (0.4>0.2) (0.1<0.3) (0.1<0.2) -> 2 of 4
    assert fig.auroc == pytest.approx(0.5) and fig.top_inside
    assert fig.caption().startswith("50% of the model's attention is inside your tumour outline")
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert attention_inside(values, coords, 10, None) is None


def _ann(geom: dict, cls: str, image_id: str = "s1"):  # noqa: ANN202
    from core.review.store_annotations import Annotation

    return Annotation(0, image_id, geom, cls, "", "t", "", "", "t", 1)


def test_mask_outline_matches_the_mask() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    polys = A.mask_polygons(mask, downsample=8)
    assert len(polys) == 1
    assert shapely.geometry.shape(polys[0]).bounds == (24.0, 16.0, 56.0, 40.0)


# -- command line ----------------------------------------------------------------------------------------------
def _cohort(tmp_path: Path) -> Path:
    toml = make_review_cohort(tmp_path / "c")
    root = toml.parent
    (root / "features").mkdir()
    coords = np.array([[x, y] for y in range(0, 96, 32) for x in range(0, 128, 32)])
    for sid, att in (("s04", np.linspace(1, 0.1, len(coords))), ("s06", np.linspace(0.1, 1, len(coords)))):
        with h5py.File(root / "features" / f"{sid}.h5", "w") as f:
            f["features"] = np.zeros((len(coords), 8), np.float32)
            f["coords"] = coords
            f.attrs["patch_size_level0"] = 32
        (root / "results" / "v001-abmil" / "attention").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "results" / "v001-abmil" / "attention" / f"{sid}.h5", "w") as f:
            f["attention"] = att.astype(np.float32)
            f["coords"] = coords
            f.attrs["patch_size_level0"] = 32
    return toml


def test_cli_import_export_patches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _cohort(tmp_path)
    top_left = {"type": "Polygon", "coordinates": [[[0, 0], [64, 0], [64, 32], [0, 32], [0, 0]]]}
    f = tmp_path / "s04.geojson"
    f.write_text(json.dumps([{"type": "Feature", "geometry": top_left, "properties": {
        "objectType": "annotation", "classification": {"name": "Tumour"}, "note": "<b>bold?</b>"}},
        {"type": "Feature", "geometry": top_left, "properties": {"objectType": "detection"}}]))
    assert main(["annotations", "import", str(f), "--reviewer", "ann", "--cohort", str(toml)]) == 0
    assert "imported 1 annotation(s); skipped 1 detection(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps([{"type": "Feature", "geometry": top_left, "properties": {"classification": {
        "name": "Tumour"}}}, {"type": "Feature", "geometry": top_left, "properties": {"classification": {
            "name": "Fat"}}}]))
    assert main(["annotations", "import", str(bad), "--slide", "s06", "--reviewer", "a", "--cohort", str(toml)]) == 2
    assert "unknown class 'Fat'" in capsys.readouterr().err
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Point", "coordinates": [500, 5]},
                                "properties": {"classification": {"name": "Tumour"}}}]))
    assert main(["annotations", "import", str(far), "--slide", "s06", "--reviewer", "a", "--cohort", str(toml)]) == 2
    assert "outside the slide (0, 0)-(128, 96)" in capsys.readouterr().err
    out = tmp_path / "exp"
    assert main(["annotations", "export", "--out", str(out), "--cohort", str(toml)]) == 0
    doc = json.loads((out / "s04.geojson").read_text())
    assert [x["geometry"] for x in doc["features"]] == [top_left]  # the bad files imported nothing
    assert doc["features"][0]["properties"]["note"] == "<b>bold?</b>"
    csv_out = tmp_path / "p.csv"
    assert main(["annotations", "patches", "--class", "tumour", "--out", str(csv_out), "--cohort", str(toml)]) == 0
    assert csv_out.read_text().splitlines()[1:] == ["s04,0,0,32,tumour", "s04,32,0,32,tumour"]
    assert main(["annotations", "patches", "--class", "Fat", "--cohort", str(toml)]) == 2


def test_cohort_table_puts_the_model_looking_elsewhere_first(tmp_path: Path) -> None:
    from core.cohort.cohort_file import load_cohort
    from core.review.annotation_metrics import looks_elsewhere
    from core.review.queue import open_cohort_store
    from core.viewer.attention_layers import attention_path, read_attention

    toml = _cohort(tmp_path)
    cohort = load_cohort(toml)
    store = open_cohort_store(cohort)
    top_left = {"type": "Polygon", "coordinates": [[[0, 0], [64, 0], [64, 32], [0, 32], [0, 0]]]}
    store.add_annotations([("s04", top_left, "Tumour", ""), ("s06", top_left, "Tumour", "")], "ann")

    def att(image_id: str):  # noqa: ANN202
        v, c, size, _ = read_attention(attention_path(cohort, "v001-abmil", image_id))
        return v.max(axis=1), c, size

    table = cohort_inside_table(store, att)
    assert table["image_id"].tolist() == ["s06", "s04"]  # s06's attention peaks bottom-right, outside
    assert table["top_patch_inside"].tolist() == [False, True]
    assert [looks_elsewhere(r) for _, r in table.iterrows()] == [True, True]  # s04: only 2 of 12 patches inside


def test_review_queue_lists_a_slide_whose_model_attends_outside_the_tumour(tmp_path: Path) -> None:
    from core.cohort.cohort_file import load_cohort
    from core.review.queue import build_queue, filter_queue, open_cohort_store

    cohort = load_cohort(_cohort(tmp_path))
    store = open_cohort_store(cohort)
    before = build_queue(cohort, store).set_index("image_id")
    assert not before["attends_outside"].any()
    whole_top = {"type": "Polygon", "coordinates": [[[0, 0], [128, 0], [128, 40], [0, 40], [0, 0]]]}
    store.add_annotations([("s04", whole_top, "Tumour", ""), ("s06", whole_top, "Tumour", "")], "ann")
    q = build_queue(cohort, store).set_index("image_id")
    assert bool(q.loc["s06", "attends_outside"]) and not bool(q.loc["s04", "attends_outside"])
    assert "attends outside the annotated tumour" in q.loc["s06", "reasons"]
    assert "most-attended patch is outside" in q.loc["s06", "reasons"]
    assert filter_queue(q.reset_index(), ["attends_outside"])["image_id"].tolist() == ["s06"]


def test_analysis_page_annotations_tab_lists_slides_looking_elsewhere(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    toml = _cohort(tmp_path)
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "analysis.py"), default_timeout=60)
    at.query_params["tab"] = "Annotations"
    at.run()
    assert not at.exception, at.exception
    assert any("No slide has tumour annotations" in i.value for i in at.info)
    store = open_cohort_store(load_cohort(toml))
    top = {"type": "Polygon", "coordinates": [[[0, 0], [128, 0], [128, 40], [0, 40], [0, 0]]]}
    store.add_annotations([("s04", top, "Tumour", ""), ("s06", top, "Tumour", "")], "ann")
    at.run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value
    assert shown["image_id"].tolist() == ["s06", "s04"] and shown["top_patch_inside"].tolist() == [False, True]


def test_viewer_says_how_much_attention_is_inside_the_tumour_outline(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from streamlit.testing.v1 import AppTest

    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store
    from core.viewer import tiles

    sys.path.insert(0, str(Path(__file__).parent))
    from _viewer_data import build_cohort

    toml = build_cohort(tmp_path / "v", with_svs=False)
    cohort = load_cohort(toml)
    left = {"type": "Polygon", "coordinates": [[[0, 0], [500, 0], [500, 700], [0, 700], [0, 0]]]}
    open_cohort_store(cohort).add_annotation("synth_a", left, "Tumour", "ann", note="<img src=x onerror=alert(1)>")
    att, coords, size, _ = tiles.read_attention(tmp_path / "v" / "results" / "v001-abmil" / "attention" /
                                                "synth_a.h5")
    v = att.max(axis=1)
    share = v[coords[:, 0] + size / 2 < 500].sum() / v.sum()  # by hand: patch centres left of x = 500
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    tiles.unregister_all()
    try:
        app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "viewer.py"), default_timeout=60)
        app.query_params["slide"] = "synth_a"
        app.run()
        assert not app.exception, app.exception
        from ui.safe import md

        want = md(f"{share * 100:.0f}% of the model's attention is inside your tumour outline")
        said = [m.value for m in app.markdown if want in m.value]
        assert said and said[0].startswith("**" + want), [m.value for m in app.markdown]
        table = next(d.value for d in app.dataframe if "note" in d.value.columns)
        assert table["note"].tolist() == ["<img src=x onerror=alert(1)>"]  # a dataframe cell: shown as text
    finally:
        tiles.unregister_all()


def test_demo_masks_import_as_tumour_outlines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    toml = _cohort(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((12, 16), np.uint8)
    m[0:4, 0:8] = 255  # level-0 (0, 0)-(64, 32) at 8 px per mask pixel
    Image.fromarray(m).save(masks / "s04.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(masks / "s06.png")  # empty: no outline
    assert main(["annotations", "import", str(masks), "--masks", "--downsample", "8", "--reviewer", "truth",
                 "--cohort", str(toml)]) == 0
    assert "imported 1 Tumour outline(s)" in capsys.readouterr().out
    (a,) = open_cohort_store(load_cohort(toml)).annotations()
    assert (a.image_id, a.cls) == ("s04", "Tumour")
    assert shapely.geometry.shape(a.geometry).equals(shapely.box(0, 0, 64, 32))
