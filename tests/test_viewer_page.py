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
    assert app.selectbox(key="viewer_cmap").value == "inferno"
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
