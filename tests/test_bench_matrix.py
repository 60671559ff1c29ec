"""bench quality --matrix on tiny demo cohorts: trained on one seed, scored on another, in the small-foci regime;
the cohorts are drawn and extracted once and reused (bench ensemble shares them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.bench.cohorts import cohort_dir, demo_cohort
from core.bench.quality_matrix import TARGETS, run_matrix, summarise


@pytest.mark.slow
def test_matrix_trains_on_one_seed_and_scores_on_the_other(tmp_path: Path) -> None:
    res = run_matrix(tmp_path, heads=("abmil",), regimes=("small",), seeds=(1, 2), folds=2, tiny=True,
                     overrides={"abmil": {"epochs": 8}})
    rows = res["rows"]
    assert [(r["train_seed"], r["test_seed"]) for r in rows] == [(1, 2), (2, 1)]
    for r in rows:
        assert 0.0 <= r["balanced_accuracy"] <= 1.0 and r["n_scored"] > 0
        assert r["attention_auroc"] is None or 0.0 <= r["attention_auroc"] <= 1.0
        assert 0.0 <= r["ood_auroc"] <= 1.0  # the tiny demo has an outlier per cohort
        assert "ood_auroc_head_embedding" in r and r["ood_caught"].endswith("/1")  # one outlier per tiny cohort
    # each model was trained in its seed's folder, and scored on the other seed's cohort
    assert (tmp_path / "matrix" / "models-small-seed1" / rows[0]["version"] / "model.json").is_file()
    assert (tmp_path / "matrix" / "results" / "small" / rows[0]["version"] / "seed2" / "predictions.csv").is_file()
    cell = res["summary"][0]
    assert (cell["head"], cell["regime"], cell["n_seeds"]) == ("abmil", "small", 2)
    assert set(cell["met"]) == set(TARGETS)
    # a second call reuses the drawn cohorts (same folder, features not redone)
    features = sorted((cohort_dir(tmp_path, 1, "small", tiny=True) / "features").glob("*.h5"))
    stamp = [p.stat().st_mtime_ns for p in features]
    demo_cohort(tmp_path, 1, "small", tiny=True)
    assert [p.stat().st_mtime_ns for p in features] == stamp


def test_summary_is_the_median_over_seeds() -> None:
    rows = [{"head": "dsmil", "regime": "large", "balanced_accuracy": b, "attention_auroc": 0.9, "ood_auroc": 1.0,
             "ood_auroc_head_embedding": 0.7} for b in (0.5, 0.95, 1.0)]
    cell = summarise(rows)[0]
    assert cell["balanced_accuracy"] == 0.95 and cell["met"] == {"balanced_accuracy": True, "attention_auroc": True,
                                                                "ood_auroc": True}
    rows[1]["balanced_accuracy"] = 0.6
    assert summarise(rows)[0]["met"]["balanced_accuracy"] is False
