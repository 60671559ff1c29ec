"""Out-of-distribution score per slide (higher = more likely outside what the model was trained on).

The score is the Mahalanobis distance of the slide embedding (the MIL head's pooled representation) to the
nearest training-class mean, with one shrunk (Ledoit-Wolf) covariance shared by the classes; the energy or
max-softmax of the logits are available as alternatives. The threshold is set on the training slides'
out-of-fold scores for a target false-positive rate and stored in ``model.json["ood"]``; slides over it are
shown as 'Other?'. Outliers often sit in the training set under a class label, so by default the threshold is
robust: scores with a robust z (median/MAD) over ``ROBUST_Z`` are left out before the percentile is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import InputError
from core.model import tissue_ood
from core.model.versions import OOD_FILE, TISSUE_OOD_FILE

Method = Literal["mahalanobis", "energy", "msp"]
OTHER_LABEL = "Other?"
DEFAULT_FPR = 0.05
ROBUST_Z = 3.5  # Iglewicz-Hoaglin cut-off for the modified z-score
MAD_TO_SD = 1.4826  # MAD of a normal sample x this = its standard deviation
ThresholdMethod = Literal["robust", "percentile", "ratio"]
# "ratio": a training score over this many times the median is taken as an outlier hidden in the training set before
# the percentile (the tissue score, core/model/tissue_ood.py: a minority of TMA cores forms a second mode that the
# median/MAD rule cut off as outliers, flagging 10-13 of 50 held-out slides; this rule flagged 0-6, all outliers caught
# but one, on demo seeds 10-22)
MEDIAN_RATIO = 1.5


@dataclass
class OODReference:
    """What the score needs from the training slides: class means ``[K, E]`` and a precision matrix ``[E, E]``."""

    means: np.ndarray
    precision: np.ndarray
    method: str = "mahalanobis"

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}


def fit_ood(embeddings: np.ndarray, labels: np.ndarray, method: Method = "mahalanobis") -> OODReference:
    """Fit class means and a shared shrunk covariance on training-slide embeddings ``[n, E]`` with class ids ``[n]``."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"fit_ood: need >= 2 embeddings [n, E] with n labels, got {x.shape} and {y.shape}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])  # [K, E]
    centred = x - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_ if len(x) > 2 else np.eye(x.shape[1])
    return OODReference(means=means, precision=precision, method=method)


def ood_scores(embeddings: np.ndarray, logits: np.ndarray | None = None, ref: OODReference | None = None,
               method: Method = "mahalanobis") -> np.ndarray:
    """OOD score per slide from embeddings ``[n, E]`` (and logits ``[n, C]`` for energy/msp); higher = stranger."""
    if method == "mahalanobis":
        if ref is None:
            raise ValueError("ood_scores: the mahalanobis score needs a fitted OODReference")
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if x.shape[1] != ref.means.shape[1]:
            raise ValueError(f"ood_scores: embedding size {x.shape[1]} != reference size {ref.means.shape[1]}")
        d = x[:, None, :] - ref.means[None]  # [n, K, E]
        dist2 = np.einsum("nke,ef,nkf->nk", d, ref.precision, d)  # [n, K]
        return np.sqrt(np.maximum(dist2.min(axis=1), 0.0))
    if logits is None:
        raise ValueError(f"ood_scores: the {method} score needs logits")
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    zmax = z.max(axis=1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))[:, 0]
    if method == "energy":
        return -lse  # negative free energy: low total evidence = outlier
    if method == "msp":
        return 1.0 - np.exp(z.max(axis=1) - lse)
    raise ValueError(f"unknown OOD method {method!r}")


def threshold_at_fpr(in_scores: np.ndarray, target_fpr: float = DEFAULT_FPR) -> float:
    """The score above which at most ``target_fpr`` of in-distribution (training) slides fall."""
    s = np.asarray(in_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("threshold_at_fpr: no finite scores")
    return float(np.quantile(s, 1.0 - target_fpr, method="higher"))


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Modified z-score ``(s - median) / (1.4826 * MAD)`` (0 everywhere when the MAD is 0)."""
    s = np.asarray(scores, dtype=np.float64)
    med = np.median(s)
    mad = np.median(np.abs(s - med)) * MAD_TO_SD
    return (s - med) / mad if mad > 0 else np.zeros_like(s)


def robust_threshold(in_scores: np.ndarray, target_fpr: float = DEFAULT_FPR, z: float = ROBUST_Z
                     ) -> tuple[float, int]:
    """``threshold_at_fpr`` on the scores left after dropping high ones with robust z > ``z``.

    The training slides can hold the very outliers the threshold should catch (labelled as some class); a plain
    percentile then sits among them. Returns ``(threshold, number of scores left out)``.
    """
    s = np.asarray(in_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("robust_threshold: no finite scores")
    keep = robust_z(s) <= z
    return threshold_at_fpr(s[keep], target_fpr), int((~keep).sum())


def ood_meta(in_scores: np.ndarray, method: str, target_fpr: float = DEFAULT_FPR,
             threshold_method: ThresholdMethod = "robust", z: float = ROBUST_Z) -> dict[str, Any]:
    """The ``model.json["ood"]`` block: score method, threshold and how it was set, FPR on the training slides."""
    s = np.asarray(in_scores, dtype=np.float64)
    if threshold_method == "robust":
        thr, dropped = robust_threshold(s, target_fpr, z)
        how: dict[str, Any] = {"threshold_method": "robust", "robust_z": z, "n_excluded": dropped,
                               "threshold_rule": f"{1 - target_fpr:.0%} quantile of the training slides' "
                                                 f"out-of-fold scores after dropping robust z > {z} (median/MAD)"}
    elif threshold_method == "ratio":
        keep = s <= MEDIAN_RATIO * float(np.median(s))
        thr = threshold_at_fpr(s[keep], target_fpr)
        how = {"threshold_method": "ratio", "median_ratio": MEDIAN_RATIO, "n_excluded": int((~keep).sum()),
               "threshold_rule": f"{1 - target_fpr:.0%} quantile of the training slides' out-of-fold scores after "
                                 f"dropping those over {MEDIAN_RATIO:g} x their median"}
    elif threshold_method == "percentile":
        thr = threshold_at_fpr(s, target_fpr)
        how = {"threshold_method": "percentile", "n_excluded": 0,
               "threshold_rule": f"{1 - target_fpr:.0%} quantile of the training slides' out-of-fold scores"}
    else:
        raise ValueError(f"unknown threshold method {threshold_method!r} (robust, ratio or percentile)")
    return {"method": method, "threshold": thr, "target_fpr": target_fpr, **how,
            "train_fpr": float(np.mean(s > thr)), "n_train": int(s.size),
            "train_median": float(np.median(s)),
            "file": {"mahalanobis": OOD_FILE, tissue_ood.METHOD: TISSUE_OOD_FILE}.get(method)}


def is_outlier(score: float, model_meta: dict[str, Any]) -> bool:
    """True when ``score`` is over the model's OOD threshold (False when the model has none)."""
    ood = model_meta.get("ood") or {}
    thr = ood.get("threshold")
    return thr is not None and score is not None and np.isfinite(score) and float(score) > float(thr)


def display_label(pred: str, score: float, model_meta: dict[str, Any]) -> str:
    """The label to show for a slide: 'Other?' when it looks out of distribution, else the predicted class."""
    return OTHER_LABEL if is_outlier(score, model_meta) else pred


def save_reference(ref: OODReference, path: str | Path) -> None:
    """Write the reference arrays as safetensors (atomically)."""
    from safetensors.numpy import save_file

    from core.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(ref.to_arrays(), str(tmp), metadata={"method": ref.method})


def load_reference(path: str | Path) -> OODReference:
    """Read a reference written by ``save_reference``; ``InputError`` if it is missing or broken."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            return OODReference(means=f.get_tensor("means").astype(np.float64),
                                precision=f.get_tensor("precision").astype(np.float64),
                                method=meta.get("method", "mahalanobis"))
    except Exception as exc:  # safetensors raises its own error type for missing or corrupt files
        raise InputError(f"{path}: unreadable OOD reference ({exc})") from exc
