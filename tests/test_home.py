"""Home page figures (checked by hand on a tiny cohort) and one-click switching between cohorts."""

from __future__ import annotations

from pathlib import Path

import pytest
from _review_data import make_review_cohort
from streamlit.testing.v1 import AppTest

from core.cohort.cohort_file import load_cohort
from core.review.queue import open_cohort_store
from core.review.summary import cohort_summary
from ui.safe import md

ROOT = Path(__file__).resolve().parents[1]


def test_summary_figures_and_their_change_after_a_relabel(tmp_path: Path) -> None:
    cohort = load_cohort(make_review_cohort(tmp_path / "c"))
    s = cohort_summary(cohort)
    assert s.problems == []
    assert (s.n_slides, s.n_labelled, s.classes) == (8, 8, ("normal", "tumor"))
    assert s.version == "v001-abmil" and s.model == "abmil"
    # out-of-fold: normal recall 3/4 (s01 called tumor), tumor recall 4/4
    assert s.balanced_accuracy == pytest.approx(0.875)
    assert s.likely_outliers == 1  # s02: OOD score 9 over the threshold 5
    assert s.disagreements == 1  # s01: labelled normal, predicted tumor
    assert s.queue_size >= 3 and s.reviewed == 0  # label issue s01, outlier s02, low confidence s03
    store = open_cohort_store(cohort)
    store.set_label("s01", "tumor", "ann", "model is right", store.state("s01").version)
    s = cohort_summary(cohort)
    assert s.disagreements == 0 and s.reviewed == 1
    assert s.balanced_accuracy == pytest.approx(1.0)


def test_summary_scores_the_newest_version_with_predictions_against_flags(tmp_path: Path) -> None:
    """Issue 12: home scored the newest model folder (even one still without predictions) and ignored the reviewer's
    outlier / exclude flags, so it disagreed with the analysis page."""
    toml = make_review_cohort(tmp_path / "c")
    v1 = tmp_path / "c" / "models" / "v001-abmil"
    v2 = tmp_path / "c" / "models" / "v002-abmil"  # a retrain that has not written predictions yet
    v2.mkdir()
    for f in ("model.json", "weights.safetensors"):
        (v2 / f).write_bytes((v1 / f).read_bytes())
    cohort = load_cohort(toml)
    s = cohort_summary(cohort)
    assert s.version == "v001-abmil" and s.balanced_accuracy == pytest.approx(0.875) and s.n_scored == 8
    store = open_cohort_store(cohort)
    store.set_flag("s01", "exclude", True, "ann", "blurred scan", store.state("s01").version)
    s = cohort_summary(cohort, store)
    assert s.n_scored == 7 and s.balanced_accuracy == pytest.approx(1.0) and s.disagreements == 0


def test_home_page_says_what_its_score_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = make_review_cohort(tmp_path / "c")
    monkeypatch.setenv("SLIDELENS_COHORT", str(toml))
    monkeypatch.setenv("SLIDELENS_DEMO_DIR", str(tmp_path / "no-demo"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    cards = {m.label: m.value for m in at.metric}
    assert cards["Balanced accuracy"] == "0.875"  # written as the analysis page writes it
    assert cards["Errors (out-of-fold)"] == "1"
    assert md("out-of-fold, against reviewed labels (8 slides)") in [c.value for c in at.caption]


def test_summary_reports_a_broken_labels_file_instead_of_failing(tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path / "c", with_model=False)
    (tmp_path / "c" / "labels.csv").write_text("image_id,label\ns00,normal\ns00,tumor\n")
    s = cohort_summary(load_cohort(toml))
    assert s.n_slides == 8 and s.version is None
    assert any("duplicate id 's00'" in p for p in s.problems)


def test_switching_cohorts_is_one_click(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_review_cohort(tmp_path / "study_a")
    b = make_review_cohort(tmp_path / "demo")
    b.write_text(b.read_text().replace('name = "review-test"', 'name = "second-study"'))
    a.write_text(a.read_text().replace('name = "review-test"', 'name = "first-study"'))
    monkeypatch.setenv("SLIDELENS_COHORT", str(a))
    monkeypatch.setenv("SLIDELENS_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "SlideLens · " + md("first-study")  # the cohort's name shown as text
    select = at.selectbox(key="cohort_select")
    assert [o.split()[0] for o in select.options] == ["study_a", "demo"]  # labels: folder name (path)
    select.select_index(1).run()
    assert not at.exception
    assert at.title[0].value == "SlideLens · " + md("second-study")
    # each cohort keeps its own database
    assert load_cohort(a).database != load_cohort(b).database
