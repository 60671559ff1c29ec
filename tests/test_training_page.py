"""The training page (AppTest): per-class curves, the lagging-classes table, two versions side by side, and an
ensemble built with the button."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest
from test_analysis_page import CLASSES, ROOT, ROWS, build_cohort

from core.model.versions import read_model_meta
from ui.safe import md

PAGE = str(ROOT / "pages" / "training.py")


def _history(lag: str) -> pd.DataFrame:
    """2 folds x 6 epochs; ``lag`` stays at recall 0 until epoch 5, the others reach 0.9 by epoch 3."""
    rows = []
    for f in range(2):
        for e in range(1, 7):
            row = {"fold": f, "epoch": e, "train_loss": 1.2 / e, "val_loss": 1.0 / e + 0.1 * f, "stop_loss": None,
                   "balanced_accuracy": 0.5, "chosen": e == 5 + f}
            for c in CLASSES:
                row[f"recall_{c}"] = (0.0 if e < 5 else 0.3) if c == lag else min(0.9, 0.3 * e)
                row[f"precision_{c}"] = row[f"f1_{c}"] = 0.5
            rows.append(row)
    rows.append({"fold": -1, "epoch": 1, "train_loss": 1.1, "chosen": False})
    return pd.DataFrame(rows)


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    toml = build_cohort(tmp_path, versions=2, slides=True)  # the analysis page needs the slides
    for v, lag in ((1, "HGSC"), (2, "EC")):
        mdir = tmp_path / "models" / f"v00{v}-abmil"
        _history(lag).to_csv(mdir / "history.csv", index=False)
        (mdir / "weights.safetensors").write_bytes(b"")  # only its presence is checked here
        meta = json.loads((mdir / "model.json").read_text())
        (mdir / "model.json").write_text(json.dumps({**meta, "feature_dim": 16, "backbone": "toy"}))
        pd.DataFrame({"image_id": [r[0] for r in ROWS], "label": [r[1] for r in ROWS], "fold": 0}).to_csv(
            mdir / "folds.csv", index=False)
    return toml


def run_page(monkeypatch: pytest.MonkeyPatch, toml: Path, **params: str) -> AppTest:
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    at = AppTest.from_file(PAGE, default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def test_page_renders_per_class_curves_and_the_lagging_class(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, model="v001-abmil")
    assert at.selectbox(key="tr_version").value == "v001-abmil"
    charts = _charts(at)
    assert len(charts) == 2  # per-class curves + losses
    fig = plotly.io.from_json(charts[0].proto.spec)
    names = [t.name for t in fig.data if t.mode == "lines+markers"]
    assert names == CLASSES
    hgsc = next(t for t in fig.data if t.name == "HGSC")
    assert list(hgsc.y) == [0.0] * 4 + [0.3, 0.3]  # the mean over folds, epoch by epoch
    assert any("chosen" in (a.text or "") for a in fig.layout.annotations)
    lag = at.dataframe[0].value
    assert lag.iloc[0]["class"] == "HGSC" and bool(lag.iloc[0]["lagging"])
    assert lag.set_index("class").loc["CC", "first_epoch_recall_0.5"] == 2


def test_two_versions_side_by_side(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort, model="v001-abmil", compare="v002-abmil")
    assert len(_charts(at)) == 4 and len(at.dataframe) == 2
    assert at.dataframe[1].value.iloc[0]["class"] == "EC"  # v002's lagging class


def test_ensemble_button_registers_a_version(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    at = run_page(monkeypatch, cohort)
    at.multiselect(key="tr_members").set_value(["v001-abmil", "v002-abmil"])
    at.radio(key="tr_method").set_value("hard")
    at.button(key="tr_build").click().run()
    assert not at.exception and not at.error, at.error
    meta = read_model_meta(cohort.parent / "models" / "v003-ensemble")
    assert meta["ensemble"]["method"] == "hard"
    assert any(s.value == md("saved ensemble v003-ensemble") for s in at.success)
    # the analysis page opens the ensemble like any version, and compares it with a member
    an = AppTest.from_file(str(ROOT / "pages" / "analysis.py"), default_timeout=60)
    an.query_params["model"] = "v003-ensemble"
    an.run()
    assert not an.exception and an.selectbox(key="an_version").value == "v003-ensemble"
    assert {m.label for m in an.metric} >= {"Balanced accuracy", "Slides scored"}
    an.query_params["tab"] = "Compare"
    an.run()
    assert not an.exception


def test_member_with_other_classes_is_one_line_in_the_page(monkeypatch: pytest.MonkeyPatch, cohort: Path) -> None:
    mj = cohort.parent / "models" / "v002-abmil" / "model.json"
    mj.write_text(mj.read_text().replace('"HGSC"', '"Serous"'))
    at = run_page(monkeypatch, cohort)
    at.multiselect(key="tr_members").set_value(["v001-abmil", "v002-abmil"])
    at.button(key="tr_build").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "same classes" in at.error[0].value and "\n" not in at.error[0].value


def test_no_history_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = build_cohort(tmp_path, versions=1, slides=False)
    at = run_page(monkeypatch, toml)
    assert any("No training history yet" in i.value for i in at.info)
