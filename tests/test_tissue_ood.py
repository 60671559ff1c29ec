"""The patch-feature outlier score (core/model/tissue_ood.py): tissue seen in fewer than M training slides is rare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.errors import InputError
from core.model import tissue_ood

D = 48


def _tissues(rng: np.random.Generator, n_kinds: int = 4) -> np.ndarray:
    """Centres of ``n_kinds`` tissue kinds in feature space (the last one is the outlier tissue)."""
    return rng.normal(0, 4.0, (n_kinds, D))


def _slide(rng: np.random.Generator, centres: np.ndarray, kinds: list[int], n: int = 80) -> np.ndarray:
    """A slide of ``n`` patches drawn around the centres of ``kinds``."""
    pick = rng.choice(kinds, n)
    return (centres[pick] + rng.normal(0, 1.0, (n, D))).astype(np.float32)


def _cohort(rng: np.random.Generator, centres: np.ndarray, n_normal: int, n_outlier: int) -> tuple[list, np.ndarray]:
    normal = [_slide(rng, centres, [0, 1, 2] if i % 2 else [0, 1]) for i in range(n_normal)]
    outliers = [_slide(rng, centres, [3]) for _ in range(n_outlier)]
    return normal + outliers, np.array([0] * n_normal + [1] * n_outlier)


def test_outliers_hidden_in_the_training_set_do_not_make_their_kind_familiar() -> None:
    """Two outlier slides sit in the training set under some label (as in a real cohort): a nearest-slide score
    (M = 1) finds their kind familiar; the M-th nearest slide (M = 5) still calls new slides of that kind rare."""
    rng = np.random.default_rng(0)
    centres = _tissues(rng)
    train, _ = _cohort(rng, centres, n_normal=30, n_outlier=2)
    test, y = _cohort(rng, centres, n_normal=20, n_outlier=4)
    ref = tissue_ood.fit_reference(train, per_slide=32, dims=16)
    scores = np.array([tissue_ood.slide_score(f, ref) for f in test])
    assert ref.m == tissue_ood.M and roc_auc_score(y, scores) == 1.0
    assert scores[y == 1].min() > 4 * scores[y == 0].max()  # far apart (about 8x here)
    nearest = tissue_ood.TissueReference(ref.mean, ref.components, ref.bank, m=1)
    near = np.array([tissue_ood.slide_score(f, nearest) for f in test])
    assert near[y == 1].min() < 1.3 * near[y == 0].max()  # the hidden two make the outlier kind look familiar


def test_a_training_slide_is_scored_without_its_own_patches() -> None:
    rng = np.random.default_rng(1)
    centres = _tissues(rng)
    train, _ = _cohort(rng, centres, n_normal=8, n_outlier=0)
    ref = tissue_ood.fit_reference(train, per_slide=200, dims=16, m=1)  # every patch of every slide in the bank
    assert tissue_ood.slide_score(train[3], ref) == pytest.approx(0.0, abs=1e-2)  # it finds itself
    assert tissue_ood.slide_score(train[3], ref, leave_out=3) > 1.0


def test_reference_round_trip_and_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    centres = _tissues(rng)
    train, _ = _cohort(rng, centres, n_normal=6, n_outlier=1)
    ref = tissue_ood.fit_reference(train, dims=8)
    assert ref.bank.shape == (7, tissue_ood.PER_SLIDE, 8) and ref.m == 5  # small slides' rows repeated to fill
    tissue_ood.save_reference(ref, tmp_path / "t.safetensors")
    back = tissue_ood.load_reference(tmp_path / "t.safetensors")
    assert back.m == ref.m
    assert tissue_ood.slide_score(train[0], back) == pytest.approx(tissue_ood.slide_score(train[0], ref))
    with pytest.raises(ValueError, match="dimension"):
        tissue_ood.slide_score(np.zeros((3, D + 1), np.float32), ref)
    with pytest.raises(ValueError, match="at least two"):
        tissue_ood.fit_reference(train[:1])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors: unreadable"):
        tissue_ood.load_reference(tmp_path / "bad.safetensors")
