"""MC dropout / ensemble spread: a slide whose final prediction is uncertain is a review-queue reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _review_data import VERSION, make_review_cohort

from core.cohort.cohort_file import load_cohort
from core.review.queue import build_queue, open_cohort_store
from core.review.slide_table import cohort_slide_table


def test_uncertain_final_prediction_is_a_queue_reason(tmp_path: Path) -> None:
    toml = make_review_cohort(tmp_path)
    path = tmp_path / "results" / VERSION / "predictions.csv"
    preds = pd.read_csv(path)
    preds["uncertainty"] = [0.3 if i == "s05" else 0.01 for i in preds["image_id"]]  # s05: confident but spread
    preds.to_csv(path, index=False)
    cohort = load_cohort(toml)
    store = open_cohort_store(cohort)
    table = cohort_slide_table(cohort, store, VERSION).set_index("image_id")
    assert table.loc["s05", "uncertainty"] == 0.3
    q = build_queue(cohort, store, VERSION).set_index("image_id")
    assert q.loc["s05", "low_confidence"] and "uncertain" in q.loc["s05", "reasons"]
    assert "uncertain" not in q.loc["s04", "reasons"] and q.loc["s04", "n_reasons"] == 0
    preds.drop(columns="uncertainty").to_csv(path, index=False)  # without draws: no such reason
    assert "uncertain" not in build_queue(cohort, store, VERSION).set_index("image_id").loc["s05", "reasons"]
