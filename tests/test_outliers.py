"""OOD scores: outliers score higher than in-distribution slides; the threshold meets its target FPR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.errors import InputError
from core.outliers import (
    OTHER_LABEL,
    display_label,
    fit_ood,
    is_outlier,
    load_reference,
    ood_meta,
    ood_scores,
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
    meta = {"ood": ood_meta(scores, "mahalanobis", 0.05)}
    assert meta["ood"]["threshold"] == pytest.approx(thr)
    assert is_outlier(thr + 0.1, meta) and not is_outlier(thr - 0.1, meta)
    assert display_label("HGSC", thr + 1, meta) == OTHER_LABEL and display_label("HGSC", thr - 1, meta) == "HGSC"
    assert not is_outlier(99.0, {})  # a model without an OOD block flags nothing


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

    from core.features import FeatureBag
    from core.infer import infer_slide, load_model
    from core.train import train_model

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
