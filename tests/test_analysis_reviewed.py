"""Analysis against the reviewed labels (core.analysis.files) agrees with the one rule of core.review.slide_table, and the
confusion cell of the analysis page's URL parses back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _review_data import SLIDES, VERSION, make_review_cohort

from core.analysis.files import n_errors, reviewed_join, score_caption
from core.analysis.metrics import compute_metrics, format_cell, parse_cell
from core.cohort.cohort_file import load_cohort
from core.review.queue import load_model_view, open_cohort_store
from core.review.slide_table import reviewed_labels, slide_table, version_analysis


def test_reviewed_join_judges_errors_as_the_slide_table_does(tmp_path: Path) -> None:
    cohort = load_cohort(make_review_cohort(tmp_path / "c"))
    store = open_cohort_store(cohort)
    store.set_label("s01", "tumor", "ann", "model was right", store.state("s01").version)
    store.set_label("s04", "normal", "ann", "second section", store.state("s04").version)
    store.set_flag("s03", "exclude", True, "ann", "blurred", store.state("s03").version)
    view = load_model_view(cohort, VERSION)
    labels = reviewed_labels(store, pd.read_csv(cohort.labels, dtype=str))
    joined = reviewed_join(view.oof, labels, view.classes)
    table = slide_table(list(cohort.slide_paths), labels, view)
    wrong = set(table.loc[table["correct"].eq(False), "image_id"])
    assert wrong == {"s04"}  # s01 now agrees with the model; s03 is excluded
    assert n_errors(joined) == len(wrong)
    assert set(joined.loc[joined["scored"], "image_id"]) == set(table.loc[table["correct"].notna(), "image_id"])
    assert joined.set_index("image_id").loc["s04", "given_label"] == "tumor"  # the labels file, for reference
    assert "site" in joined.columns  # the labels file's extra columns stay for breakdowns
    # the cohort entry point reads the same files and gives the same table
    df, classes = version_analysis(cohort, store, VERSION)
    assert classes == ["normal", "tumor"] and n_errors(df) == 1
    m = compute_metrics(df, classes)
    assert m["n"] == len(SLIDES) - 1 and m["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 3) / 2)


def test_unlabelled_slides_are_never_scored(tmp_path: Path) -> None:
    cohort = load_cohort(make_review_cohort(tmp_path / "c"))
    store = open_cohort_store(cohort)
    labels = reviewed_labels(store)
    labels.loc[labels["image_id"] == "s00", "label"] = None
    joined = reviewed_join(load_model_view(cohort, VERSION).oof, labels, ["normal", "tumor"])
    row = joined.set_index("image_id").loc["s00"]
    assert row["label"] == "" and not row["scored"]


def test_cell_parameter_round_trip() -> None:
    classes = ["CC", "EC", "a,b"]
    assert parse_cell(format_cell("EC", "CC"), classes) == ("EC", "CC")
    assert parse_cell(format_cell("a,b", "CC"), classes) == ("a,b", "CC")  # class names may hold commas
    assert parse_cell(format_cell("CC", "a,b"), classes) == ("CC", "a,b")
    for bad in (None, "", "CC", "CC,XX", "CC;EC", ",CC"):
        assert parse_cell(bad, classes) is None


def test_every_score_says_what_it_is() -> None:
    assert score_caption("oof", 8) == "out-of-fold, against reviewed labels (8 slides)"
    assert "optimistic" in score_caption("final", 8)
