"""The viewer page through Streamlit's AppTest: URL <-> slide choice, filters, facts, gallery, bad slides."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.viewer import tiles
from core.viewer.tiles import read_attention
from ui.safe import md

sys.path.insert(0, str(Path(__file__).parent))
from _viewer_data import build_cohort  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "viewer.py")


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("page_cohort")
    build_cohort(root)
    (root / "slides" / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 64)
    return root


@pytest.fixture
def app(cohort_root, monkeypatch):
    monkeypatch.setenv("SLIDELENS_COHORT", str(cohort_root / "cohort.toml"))
    tiles.unregister_all()
    yield AppTest.from_file(PAGE, default_timeout=60)
    tiles.unregister_all()


def _qp(app, name):
    v = app.query_params.get(name)
    return v[0] if isinstance(v, list) else v


def listed(app) -> list[str]:
    """The slide ids the chooser lists, in order."""
    return list(app.dataframe(key="viewer_pick").value["slide"])


def pick(app, image_id: str):
    """Choose a slide in the chooser the way a click does: select its row."""
    row = listed(app).index(image_id)
    app.session_state["viewer_pick"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return app.run()


def metrics(app) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def test_link_selects_the_slide_and_a_choice_updates_the_link(app):
    app.query_params["slide"] = "synth_odd"
    app.run()
    assert not app.exception
    assert app.session_state["viewer_open"] == "synth_odd"
    assert app.session_state["viewer_pick"]["selection"]["rows"] == [listed(app).index("synth_odd")]
    assert tiles.resolve_slide("synth_odd")[1].name == "synth_odd.tiff"  # the page registered its cohort
    pick(app, "synth_a")
    assert _qp(app, "slide") == "synth_a" and app.session_state["viewer_open"] == "synth_a"
    assert app.session_state["viewer_pick"]["selection"]["rows"] == [listed(app).index("synth_a")]


def test_chooser_lists_thumbnail_label_prediction_and_outcome(app):
    app.run()
    table = app.dataframe(key="viewer_pick").value
    assert list(table.columns) == ["thumb", "slide", "label", "prediction", "ok"]
    assert list(table["slide"]) == ["CMU-1-Small-Region", "broken", "synth_a", "synth_odd"]
    row = table.set_index("slide").loc["synth_a"]
    assert (row["label"], row["prediction"], row["ok"]) == ("tumor", "benign", "✗")  # out-of-fold
    assert table.set_index("slide").loc["synth_odd", "ok"] == "✓"
    assert str(row["thumb"]).startswith("data:image/jpeg;base64,")
    assert pd.isna(table.set_index("slide").loc["broken", "thumb"])  # unreadable: no thumbnail, still listed
    app.text_input(key="viewer_f_text").input("ODD").run()  # the search box: id, label or prediction
    assert listed(app) == ["synth_odd"]


def test_filters_judge_errors_out_of_fold_like_the_analysis_page(app):
    """Issue 12: the 'Incorrect' filter used the final model (synth_odd); errors are judged out-of-fold."""
    app.run()
    app.radio(key="viewer_f_correct").set_value("Incorrect").run()
    assert listed(app) == ["synth_a"]
    app.radio(key="viewer_f_correct").set_value("Not judged").run()
    assert listed(app) == ["CMU-1-Small-Region", "broken"]  # no out-of-fold prediction
    app.radio(key="viewer_f_correct").set_value("All")
    app.multiselect(key="viewer_f_pred").set_value(["tumor"]).run()  # out-of-fold predictions
    assert listed(app) == ["synth_odd"]
    assert "Out-of-fold" in app.radio(key="viewer_f_correct").help


def test_prediction_says_which_model(app):
    app.query_params["slide"] = "synth_a"
    app.run()
    m = metrics(app)
    assert m["Label (reviewed)"] == "tumor"
    assert m["Prediction (out-of-fold)"] == "benign ✗"  # judged: out-of-fold, against the reviewed label
    assert m["Final model (attention shown)"] == "tumor"  # the model whose attention is drawn
    assert "Given label" not in m


def test_facts_overlay_controls_and_gallery(app, cohort_root):
    app.query_params["slide"] = "synth_a"
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox(key="viewer_cls").options == ["benign", "tumor"]
    assert not [s for s in app.selectbox if s.key == "viewer_cmap"]  # colour map etc. are the viewer's own controls
    app.selectbox(key="viewer_cls").select("tumor").run()
    first = app.button(key="viewer_goto_Most_0")
    assert first.label.startswith("#") and "%" in first.label and "of attention" in first.help  # rank and share
    first.click().run()
    goto = app.session_state["viewer_goto"]
    att, coords, size, _ = read_attention(cohort_root / "results" / "v001-abmil" / "attention" / "synth_a.h5")
    shown = [int(i) for i in np.argsort(-att[:, 1], kind="stable")
             if (coords[i, 0], coords[i, 1]) == (goto["x"], goto["y"])]
    assert shown and goto["w"] == size and goto["image_id"] == "synth_a"  # the gallery follows the chosen class
    rank = int(first.label[1:].split(" ")[0].replace(",", ""))
    assert rank == 1 + int(np.sum(att[:, 1] > att[shown[0], 1]))


def test_outlier_flag_from_the_model_threshold(app, cohort_root):
    model = cohort_root / "models" / "v001-abmil"
    (model / "model.json").write_text('{"model": "abmil", "classes": ["benign", "tumor"], "feature_dim": 8,'
                                      ' "ood": {"threshold": 0.5}}')
    (model / "weights.safetensors").write_bytes(b"")
    try:
        app.query_params["slide"] = "synth_odd"  # ood_score 0.9 > 0.5
        app.run()
        assert metrics(app)["Final model (attention shown)"].startswith("Other?")
    finally:
        (model / "model.json").unlink()
        (model / "weights.safetensors").unlink()


def test_slide_without_attention_and_broken_slide(app):
    app.query_params["slide"] = "CMU-1-Small-Region"
    app.run()
    assert not app.exception and not app.error
    assert not [s for s in app.selectbox if s.key == "viewer_cls"]  # no overlay controls without attention
    assert any("No trained model yet" in i.value for i in app.info)
    pick(app, "broken")
    assert not app.exception
    assert len(app.error) == 1 and "broken.svs" in app.error[0].value
    assert app.session_state["viewer_open"] == "broken"  # the rest of the page still works


def test_compute_attention_button_extracts_features_and_shows_the_overlay(tmp_path, monkeypatch):
    """A slide without features: the button extracts them with the model's backbone (efficientnet_lite0, its
    packaged weights, on the CPU), runs the model, and the page comes back with the overlay and the gallery."""
    import pandas as pd
    from _viewer_data import write_pyramid

    from core.model.feature_files import FeatureBag, write_features
    from core.model.train import train_model

    # the model: trained on stand-in features of the backbone's name and width (training is not under test here)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(8):
        x = rng.normal(0, 1, (12, 1280)).astype(np.float32)
        x[:4, k % 2] += 3.0
        coords = np.stack([np.arange(12) * 256, np.zeros(12)], axis=1).astype(np.int64)
        write_features(tmp_path / "train_features" / f"t{k}.h5",
                       FeatureBag(x, coords, patch_size_level0=256, mpp=0.5, backbone="efficientnet_lite0"))
        rows.append({"image_id": f"t{k}", "label": ["benign", "tumor"][k % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "train_labels.csv", index=False)
    train_model(tmp_path / "train_features", tmp_path / "train_labels.csv", model="abmil",
                out_dir=tmp_path / "models", folds=2, epochs=2, seed=0)
    # the cohort: one slide, no features yet
    (tmp_path / "slides").mkdir()
    write_pyramid(tmp_path / "slides" / "fresh.tiff", 900, 700, seed=7)
    (tmp_path / "labels.csv").write_text("image_id,label\nfresh,tumor\n")
    (tmp_path / "cohort.toml").write_text('name = "computetest"\nslides = ["slides"]\nlabels = "labels.csv"\n'
                                          'patch_size = 128\ntarget_mpp = 0.5\nmin_tissue = 0.1\n'
                                          'database = "sqlite:///slidelens.db"\n')
    monkeypatch.setenv("SLIDELENS_COHORT", str(tmp_path / "cohort.toml"))
    tiles.unregister_all()
    app = AppTest.from_file(PAGE, default_timeout=180)
    app.query_params["slide"] = "fresh"
    app.run()
    assert not app.exception and not app.error
    assert not [s for s in app.selectbox if s.key == "viewer_cls"]
    app.button(key="viewer_compute").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert (tmp_path / "features" / "fresh.h5").is_file()
    att, coords, _, _ = read_attention(tmp_path / "results" / "v001-abmil" / "attention" / "fresh.h5")
    assert len(att) == len(coords) > 0
    assert not [b for b in app.button if b.key == "viewer_compute"]
    assert [b for b in app.button if b.key.startswith("viewer_goto_Most")]  # the gallery of attended patches
    tiles.unregister_all()


# --- issue 12: bad input is named, never replaced by another slide ---------------------------------------
@pytest.mark.parametrize("bad", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%252e%252e%252fetc",
                                 "<script>alert(1)</script>", "no_such_slide", ""])
def test_unknown_slide_is_named_and_nothing_else_opens(app, bad):
    app.query_params["slide"] = bad
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and f"No slide '{md(bad)}' in cohort 'viewertest'" in app.error[0].value
    assert _qp(app, "slide") == bad  # the URL is left as it was
    assert not app.metric and not [b for b in app.button if b.key.startswith("viewer_goto")]  # no slide opened
    assert listed(app) == ["CMU-1-Small-Region", "broken", "synth_a", "synth_odd"]  # the list to choose from
    assert app.session_state["viewer_pick"]["selection"]["rows"] == []
    pick(app, "synth_a")  # choosing from the list opens it and fixes the URL
    assert _qp(app, "slide") == "synth_a" and not app.error and metrics(app)["Label (reviewed)"] == "tumor"


@pytest.mark.parametrize("bad", ["v999-bogus", "<b>x</b>", ""])
def test_unknown_model_version_is_named_and_offered(app, bad):
    app.query_params["slide"] = "synth_a"
    app.query_params["model"] = bad
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and f"No model version '{md(bad)}' in cohort 'viewertest'" in app.error[0].value
    assert f"'{md('v001-abmil')}'" in app.error[0].value and _qp(app, "model") == bad
    assert not app.metric  # nothing shown under another model's name
    box = app.selectbox(key="viewer_version")
    assert box.options == ["v001-abmil"] and box.value is None
    box.select("v001-abmil").run()
    assert _qp(app, "model") == "v001-abmil" and not app.error
    assert "Final model (attention shown)" in metrics(app)
    assert any("Model v001\\-abmil, trained on every labelled slide" in c.value for c in app.caption)


# --- issue 12: one rule for labels on every page ----------------------------------------------------------
def test_relabel_shows_at_once_in_the_header_and_the_filters(tmp_path, monkeypatch):
    from core.cohort.cohort_file import load_cohort
    from core.review.queue import open_cohort_store

    toml = build_cohort(tmp_path, with_svs=False)
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    tiles.unregister_all()
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.query_params["slide"] = "synth_odd"
    app.run()
    assert metrics(app)["Label (reviewed)"] == "tumor"
    assert app.dataframe(key="viewer_pick").value.set_index("slide").loc["synth_odd", "ok"] == "✓"
    store = open_cohort_store(load_cohort(toml))
    store.set_classes(["benign", "tumor"])  # the model's classes (the labels file only has tumor)
    store.edit("synth_odd", {"label": "benign"}, "Dr Test", "re-read", store.state("synth_odd").version)
    app.run()
    m = metrics(app)
    assert m["Label (reviewed)"] == "benign" and m["Label"] == "benign"  # the header agrees with the panel
    assert any("labels file: tumor" in c.value for c in app.caption)  # the original, since it differs
    assert m["Prediction (out-of-fold)"] == "tumor ✗"
    app.radio(key="viewer_f_correct").set_value("Incorrect").run()
    assert listed(app) == ["synth_a", "synth_odd"]
    app.multiselect(key="viewer_f_label").set_value(["benign"]).run()
    assert listed(app) == ["synth_odd"]
    tiles.unregister_all()


def test_without_the_review_database_the_labels_file_stands_in(tmp_path, monkeypatch):
    toml = build_cohort(tmp_path, with_svs=False)
    (tmp_path / "db_is_a_folder").mkdir()
    toml.write_text(toml.read_text().replace('sqlite:///slidelens.db', 'sqlite:///db_is_a_folder'))
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    tiles.unregister_all()
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.query_params["slide"] = "synth_a"
    app.run()
    assert not app.exception
    notes = [c.value for c in app.caption if "review database cannot be read" in c.value]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert metrics(app)["Label (reviewed)"] == "tumor" and metrics(app)["Prediction (out-of-fold)"] == "benign ✗"
    tiles.unregister_all()


# --- issue 12: the gallery leaves out near-empty patches and speaks in ranks and shares ------------------
def test_gallery_leaves_out_glass_and_shows_rank_and_share(tmp_path, monkeypatch):
    from _viewer_data import PATCH, grid_coords, write_attention

    from core.review.viewer_data import patch_tissue_fractions
    from core.slides.slide import open_slide
    from core.slides.tiling import tissue_mask

    toml = build_cohort(tmp_path, with_svs=False)
    coords = grid_coords(1000, 700)
    frac = patch_tissue_fractions(tissue_mask(open_slide(tmp_path / "slides" / "synth_a.tiff")), coords, PATCH)
    glass, tissue = int(np.argmin(frac)), int(np.argmax(frac))
    assert frac[glass] < 0.1 and frac[tissue] > 0.9
    att = np.full((len(coords), 1), 1.0)
    att[glass], att[tissue] = 27.0, 20.0  # the brightest patch is glass (wsi_018's top patch)
    write_attention(tmp_path / "results" / "v001-abmil" / "attention" / "synth_a.h5", coords, att / att.sum())
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    tiles.unregister_all()
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.query_params["slide"] = "synth_a"
    app.run()
    assert not app.exception and not app.error
    first = app.button(key="viewer_goto_Most_0")
    share = 20.0 / (len(coords) - 2 + 47.0)
    assert first.label == f"#2 · {100 * share:.1f}%"  # rank and share of the attention mass, not 0.0123
    first.click().run()
    assert (app.session_state["viewer_goto"]["x"], app.session_state["viewer_goto"]["y"]) == tuple(coords[tissue])
    assert any(c.value.startswith("Left out as mostly glass: #1 (") for c in app.caption)
    tiles.unregister_all()


def test_uncertainty_of_the_final_prediction_is_shown(app, cohort_root):
    """With MC-dropout draws or ensemble members, the viewer says how uncertain the final prediction is."""
    path = cohort_root / "results" / "v001-abmil" / "predictions.csv"
    before = path.read_text()
    preds = pd.read_csv(path)
    preds["uncertainty"] = [0.3 if i == "synth_odd" else 0.02 for i in preds["image_id"]]
    preds.to_csv(path, index=False)
    try:
        app.query_params["slide"] = "synth_odd"
        app.run()
        said = [c.value for c in app.caption if c.value.startswith("Uncertainty")]
        assert len(said) == 1 and "±0.30" in said[0] and "uncertain, in the review queue" in said[0]
        pick(app, "synth_a")
        said = [c.value for c in app.caption if c.value.startswith("Uncertainty")]
        assert len(said) == 1 and "±0.02" in said[0] and "settled" in said[0]
    finally:
        path.write_text(before)
    app.run()
    assert not [c for c in app.caption if c.value.startswith("Uncertainty")]  # without draws: nothing said
