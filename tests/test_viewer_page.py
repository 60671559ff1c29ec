"""The viewer page through Streamlit's AppTest: URL <-> slide choice, filters, facts, gallery, bad slides."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import tiles
from core.tiles import read_attention

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


def test_link_selects_the_slide_and_a_choice_updates_the_link(app):
    app.query_params["slide"] = "synth_odd"
    app.run()
    assert not app.exception
    assert app.selectbox(key="viewer_slide").value == "synth_odd"
    assert tiles.resolve_slide("synth_odd")[1].name == "synth_odd.tiff"  # the page registered its cohort
    app.selectbox(key="viewer_slide").select("synth_a").run()
    assert app.query_params["slide"] == ["synth_a"] or app.query_params["slide"] == "synth_a"
    assert app.selectbox(key="viewer_slide").value == "synth_a"


def test_filters_by_label_prediction_and_outcome(app):
    app.run()
    assert app.selectbox(key="viewer_slide").options == ["CMU-1-Small-Region", "broken", "synth_a", "synth_odd"]
    app.radio(key="viewer_f_correct").set_value("Incorrect").run()
    # synth_odd is labelled tumor and predicted benign; the open slide stays listed first even when filtered out
    assert app.selectbox(key="viewer_slide").options == ["CMU-1-Small-Region", "synth_odd"]
    app.radio(key="viewer_f_correct").set_value("All")
    app.multiselect(key="viewer_f_pred").set_value(["tumor"]).run()
    assert app.selectbox(key="viewer_slide").options == ["CMU-1-Small-Region", "synth_a"]
    app.multiselect(key="viewer_f_label").set_value(["tumor"])
    app.selectbox(key="viewer_slide").select("synth_a").run()
    assert app.selectbox(key="viewer_slide").options == ["synth_a"]


def test_facts_overlay_controls_and_gallery(app, cohort_root):
    app.query_params["slide"] = "synth_a"
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox(key="viewer_cls").options == ["benign", "tumor"]
    assert not [s for s in app.selectbox if s.key == "viewer_cmap"]  # colour map etc. are the viewer's own controls
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Given label"] == "tumor" and metrics["Prediction"].startswith("tumor")
    app.selectbox(key="viewer_cls").select("tumor").run()
    app.button(key="viewer_goto_Most_0").click().run()
    goto = app.session_state["viewer_goto"]
    att, coords, size, _ = read_attention(cohort_root / "results" / "v001-abmil" / "attention" / "synth_a.h5")
    top = int(np.argmax(att[:, 1]))  # the gallery follows the chosen class
    assert (goto["x"], goto["y"], goto["w"], goto["image_id"]) == (coords[top, 0], coords[top, 1], size, "synth_a")


def test_outlier_flag_from_the_model_threshold(app, cohort_root):
    model = cohort_root / "models" / "v001-abmil"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.json").write_text('{"model": "abmil", "classes": ["benign", "tumor"], "feature_dim": 8,'
                                      ' "ood": {"threshold": 0.5}}')
    (model / "weights.safetensors").write_bytes(b"")
    try:
        app.query_params["slide"] = "synth_odd"  # ood_score 0.9 > 0.5
        app.run()
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Prediction"].startswith("Other?")
    finally:
        shutil.rmtree(cohort_root / "models")


def test_slide_without_attention_and_broken_slide(app):
    app.query_params["slide"] = "CMU-1-Small-Region"
    app.run()
    assert not app.exception and not app.error
    assert not [s for s in app.selectbox if s.key == "viewer_cls"]  # no overlay controls without attention
    assert any("No trained model yet" in i.value for i in app.info)
    app.selectbox(key="viewer_slide").select("broken").run()
    assert not app.exception
    assert len(app.error) == 1 and "broken.svs" in app.error[0].value
    assert app.selectbox(key="viewer_slide").value == "broken"  # the rest of the page still works


def test_compute_attention_button_extracts_features_and_shows_the_overlay(tmp_path, monkeypatch):
    """A slide without features: the button extracts them with the model's backbone (efficientnet_lite0, its
    packaged weights, on the CPU), runs the model, and the page comes back with the overlay and the gallery."""
    import pandas as pd
    from _viewer_data import write_pyramid

    from core.features import FeatureBag, write_features
    from core.train import train_model

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
