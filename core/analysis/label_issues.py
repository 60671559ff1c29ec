"""Label-issue ranking from out-of-fold probabilities, in the style of confident learning (Northcutt et al.).

Each slide's given label is scored by how much the out-of-fold model believes another class: the normalised
margin (best other class minus given class), with probabilities first divided by per-class thresholds (the mean
self-confidence of each class) so that a model that is shy about a hard class does not flood the ranking with it.
Slides whose ``ood_score`` is far above the cohort's (robust z-score) look like outlier tissue rather than a
mislabelled class: their score is halved and their suggested label is "Other", so they do not crowd out the real
label errors (they belong in the outlier review). ``rank_label_issues`` is the one public entry point (the quality
benchmark calls it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from core.analysis.metrics import prob_matrix, scored_rows
from core.errors import InputError

Method = Literal["normalized_margin", "self_confidence", "confident_learning"]
ISSUE_COLUMNS = ["image_id", "given_label", "suggested_label", "score", "rank"]
OUTLIER_LABEL = "Other"


def class_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class threshold t_j = mean p_j over slides labelled j (confident learning); 1/C for an empty class."""
    c = probs.shape[1]
    t = np.full(c, 1.0 / c)
    for k in range(c):
        if np.any(y == k):
            t[k] = probs[y == k, k].mean()
    return np.clip(t, 1e-6, None)


def confident_joint_flags(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confident-learning flags: a slide is flagged when its most likely class above threshold is not its label.

    Returns (flagged bool N, confident class index N, -1 where no class clears its threshold).
    """
    t = class_thresholds(y, probs)
    above = probs >= t[None, :]
    masked = np.where(above, probs, -np.inf)
    conf_cls = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    return (conf_cls >= 0) & (conf_cls != y), conf_cls


def label_issue_scores(y: np.ndarray, probs: np.ndarray, method: Method = "normalized_margin") -> np.ndarray:
    """Score in [0, 1] per slide, higher = given label more likely wrong."""
    n, c = probs.shape
    rows = np.arange(n)
    if method == "self_confidence":
        return 1.0 - probs[rows, y]
    # Threshold-normalised probabilities, rescaled so each row sums to 1 again.
    adj = probs / class_thresholds(y, probs)[None, :]
    adj = adj / adj.sum(axis=1, keepdims=True)
    other = adj.copy()
    other[rows, y] = -np.inf
    margin = (1.0 + other.max(axis=1) - adj[rows, y]) / 2.0
    if method == "normalized_margin":
        return margin
    if method == "confident_learning":
        flagged, _ = confident_joint_flags(y, probs)
        return (margin + flagged) / 2.0  # flagged slides first, each group ordered by margin
    raise InputError(f"unknown label-issue method {method!r}")


def ood_outliers(ood: np.ndarray, z_max: float = 3.5) -> np.ndarray:
    """Slides whose OOD score is more than ``z_max`` robust standard deviations (MAD) above the median."""
    ood = np.asarray(ood, float)
    ok = np.isfinite(ood)
    if ok.sum() < 5:
        return np.zeros(len(ood), bool)
    med = np.median(ood[ok])
    mad = 1.4826 * np.median(np.abs(ood[ok] - med))
    if mad <= 0:
        return np.zeros(len(ood), bool)
    return ok & ((ood - med) / mad > z_max)


def rank_label_issues(oof_df: pd.DataFrame, classes: Sequence[str], method: Method = "normalized_margin",
                      ood_z: float | None = 3.5) -> pd.DataFrame:
    """Slides ordered by how likely their given label is wrong (rank 1 = most likely wrong).

    ``oof_df`` is a ``join_predictions`` table of out-of-fold predictions (columns ``image_id``, ``label``,
    ``prob_<class>``, optional ``ood_score``); unscored rows ("Other", outliers) are left out. ``suggested_label``
    is the most likely class other than the given one, or "Other" for slides whose ``ood_score`` is an outlier
    (robust z > ``ood_z``; ``None`` turns this off). Columns: image_id, given_label, suggested_label, score, rank.
    """
    classes = list(classes)
    sc = scored_rows(oof_df)
    sc = sc[sc["label"].isin(classes)]
    if sc.empty:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    probs = prob_matrix(sc, classes)
    y = sc["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(int)
    if len(classes) < 2:
        raise InputError("label issues need at least two classes")
    score = label_issue_scores(y, probs, method)
    other = probs.copy()
    other[np.arange(len(y)), y] = -np.inf
    suggested = np.asarray(classes, dtype=object)[other.argmax(axis=1)]
    if ood_z is not None and "ood_score" in sc.columns:
        odd = ood_outliers(pd.to_numeric(sc["ood_score"], errors="coerce").to_numpy(float), ood_z)
        score = np.where(odd, score / 2.0, score)
        suggested = np.where(odd, OUTLIER_LABEL, suggested)
    out = pd.DataFrame({"image_id": sc["image_id"].astype(str).to_numpy(), "given_label": sc["label"].to_numpy(),
                        "suggested_label": suggested,
                        "score": score, "_self": 1.0 - probs[np.arange(len(y)), y]})
    out = out.sort_values(["score", "_self", "image_id"], ascending=[False, False, True], ignore_index=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out[ISSUE_COLUMNS]


def planted_recall(issues: pd.DataFrame, planted: Sequence[str], factor: float = 1.5) -> float:
    """Share of the planted noisy ids found in the top ``factor`` x (number planted) of the ranking."""
    planted = set(map(str, planted))
    if not planted:
        return float("nan")
    top = set(issues.nsmallest(int(np.ceil(factor * len(planted))), "rank")["image_id"].astype(str))
    return len(planted & top) / len(planted)
