"""OOD scores: outliers score higher than in-distribution slides; the threshold meets its target FPR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.errors import InputError
from core.model.outliers import (
    OTHER_LABEL,
    display_label,
    fit_ood,
    is_outlier,
    load_reference,
    ood_meta,
    ood_scores,
    robust_threshold,
    robust_z,
    save_reference,
    threshold_at_fpr,
)


def _embeddings(rng: np.random.Generator, n: int, centres: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, ...]:
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.normal(0, scale, (n, centres.shape[1])), y


def test_mahalanobis_separates_synthetic_outliers() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 32))
    train, y = _embeddings(rng, 60, centres)
    ref = fit_ood(train, y)
    inside, _ = _embeddings(rng, 40, centres)
    outside = rng.normal(0, 4, (15, 32)) + 6.0  # another tissue: away from every class
    scores = ood_scores(np.vstack([inside, outside]), ref=ref)
    auroc = roc_auc_score(np.r_[np.zeros(40), np.ones(15)], scores)
    assert auroc >= 0.95, auroc


def test_mahalanobis_uses_the_covariance() -> None:
    """A shift along a low-variance direction is stranger than the same shift along a high-variance one."""
    rng = np.random.default_rng(1)
    train = rng.normal(0, 1, (200, 2)) * np.array([10.0, 0.5])
    ref = fit_ood(train, np.zeros(200, dtype=int))
    s = ood_scores(np.array([[5.0, 0.0], [0.0, 5.0]]), ref=ref)
    assert s[1] > 3 * s[0]


def test_logit_scores_rank_uncertain_slides_higher() -> None:
    logits = np.array([[8.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
    assert np.all(np.diff(ood_scores(None, logits, method="msp")) > 0)  # type: ignore[arg-type]
    assert np.all(np.diff(ood_scores(None, logits, method="energy")) > 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs logits"):
        ood_scores(np.zeros((1, 3)), method="energy")


def test_threshold_meets_the_target_fpr_and_flags() -> None:
    scores = np.random.default_rng(2).normal(0, 1, 1000)
    thr = threshold_at_fpr(scores, 0.05)
    assert 0.03 <= np.mean(scores > thr) <= 0.05
    meta = {"ood": ood_meta(scores, "mahalanobis", 0.05, threshold_method="percentile")}
    assert meta["ood"]["threshold"] == pytest.approx(thr) and meta["ood"]["threshold_method"] == "percentile"
    assert is_outlier(thr + 0.1, meta) and not is_outlier(thr - 0.1, meta)
    assert display_label("HGSC", thr + 1, meta) == OTHER_LABEL and display_label("HGSC", thr - 1, meta) == "HGSC"
    assert not is_outlier(99.0, {})  # a model without an OOD block flags nothing


def test_robust_threshold_ignores_planted_outliers_in_the_reference() -> None:
    """Outliers hidden among the training slides must not lift the threshold above them (a plain percentile does)."""
    rng = np.random.default_rng(4)
    clean = rng.gamma(6.0, 0.5, 50)  # right-skewed, like Mahalanobis distances
    planted = np.array([9.0, 10.5, 12.0, 15.0])  # 4 of 54 (7%): more than the 5% a percentile tolerates
    dirty = np.r_[clean, planted]
    clean_thr = threshold_at_fpr(clean, 0.05)
    thr, dropped = robust_threshold(dirty, 0.05)
    assert dropped >= len(planted)
    assert abs(thr - clean_thr) <= 0.1 * clean_thr, (thr, clean_thr)
    assert np.all(planted > thr)  # every planted outlier is caught
    assert threshold_at_fpr(dirty, 0.05) >= planted.min()  # the plain percentile sits among them
    meta = ood_meta(dirty, "mahalanobis", 0.05)
    assert meta["threshold_method"] == "robust" and meta["robust_z"] == 3.5
    assert meta["threshold"] == pytest.approx(thr) and meta["n_excluded"] == dropped
    assert meta["train_fpr"] <= 0.05 + len(planted) / len(dirty)
    with pytest.raises(ValueError, match="threshold method"):
        ood_meta(dirty, "mahalanobis", threshold_method="median")  # type: ignore[arg-type]


def test_robust_z_is_scale_free_and_safe_on_constant_scores() -> None:
    s = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    np.testing.assert_allclose(robust_z(s * 7 + 3), robust_z(s))
    assert robust_z(s)[-1] > 3.5 and np.all(np.abs(robust_z(s)[:4]) < 3.5)
    assert np.all(robust_z(np.ones(6)) == 0)
    assert robust_threshold(np.ones(6))[0] == 1.0


def test_reference_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = fit_ood(rng.normal(0, 1, (20, 5)), rng.integers(0, 2, 20))
    save_reference(ref, tmp_path / "ood.safetensors")
    back = load_reference(tmp_path / "ood.safetensors")
    x = rng.normal(0, 1, (4, 5))
    np.testing.assert_allclose(ood_scores(x, ref=back), ood_scores(x, ref=ref), rtol=1e-4)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_reference(tmp_path / "bad.safetensors")


def test_trained_model_flags_bags_of_another_tissue(tmp_path: Path) -> None:
    """End to end: train on synthetic bags, then score new in-distribution bags and bags of another 'tissue'."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_infer import make_bag, write_cohort

    from core.model.feature_files import FeatureBag
    from core.model.infer import infer_slide, load_model
    from core.model.train import train_model

    write_cohort(tmp_path, per_class=4, seed=11)
    loaded = load_model(train_model(tmp_path / "features", tmp_path / "labels.csv", folds=2, epochs=10))
    rng = np.random.default_rng(12)
    scores, truth = [], []
    for k in range(12):
        x, coords, _ = make_bag(rng, k % 3, 40)
        if k % 2:  # outlier: a different texture, strong signal in dimensions no class uses
            x[:, 8:] += rng.normal(3.0, 1.0, (1, 8)).astype(np.float32)
        res = infer_slide(loaded, FeatureBag(x, coords, 256, 0.5, "toy"))
        scores.append(res.ood_score)
        truth.append(k % 2)
    assert roc_auc_score(truth, scores) >= 0.9
    assert sum(is_outlier(s, loaded.meta) for s, t in zip(scores, truth, strict=True) if t) >= 5


def test_ratio_threshold_keeps_a_minority_mode_that_median_mad_cuts_off() -> None:
    """Tissue scores of a cohort with a minority of TMA cores: two modes (WSIs near 4.8, cores near 6.5) and the
    outliers hidden in the training set near 9. Median/MAD drops the cores too and sets the threshold among them;
    the ratio rule drops only what is over 1.5x the median."""
    from core.model.outliers import MEDIAN_RATIO, ood_meta

    rng = np.random.default_rng(0)
    wsi, cores, hidden = rng.normal(4.8, 0.2, 40), rng.normal(6.5, 0.2, 10), rng.normal(9.0, 0.5, 4)
    scores = np.concatenate([wsi, cores, hidden])
    robust = ood_meta(scores, "patches", threshold_method="robust")
    ratio = ood_meta(scores, "patches", threshold_method="ratio")
    assert robust["n_excluded"] == 14 and robust["threshold"] < cores.max()
    assert ratio["n_excluded"] == 4 and ratio["median_ratio"] == MEDIAN_RATIO
    assert np.mean(cores > ratio["threshold"]) <= 0.2 and hidden.min() > ratio["threshold"]
    assert ratio["file"] == "tissue_ood.safetensors" and ratio["threshold_rule"].endswith("1.5 x their median")
