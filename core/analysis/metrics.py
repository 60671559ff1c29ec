"""Error analysis of slide-level predictions: metrics, confusion, error impact on the score, calibration.

Inputs are predictions (``image_id,pred,prob_<class>...,ood_score``) joined with labels (``image_id,label,...``) by
``join_predictions``. Rows whose label is outside the classes ("Other") or flagged ``is_outlier``/``exclude`` stay
in the joined table with ``scored == False`` and are left out of every score (``compute_metrics`` counts them).
Pure numpy/pandas: scikit-learn is used only by the tests, as the reference.
Label-issue ranking lives in ``core/analysis/label_issues.py``; loading files and cohorts in ``core/analysis/files.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

PROB_PREFIX = "prob_"
TRUTHY = {"1", "true", "yes", "y", "t"}
EPS = 1e-15


def classes_of(preds: pd.DataFrame) -> list[str]:
    """The class list of a predictions table, in the order of its ``prob_<class>`` columns."""
    classes = [c[len(PROB_PREFIX):] for c in preds.columns if str(c).startswith(PROB_PREFIX)]
    if not classes:
        raise InputError("predictions: no prob_<class> columns")
    return classes


def join_predictions(preds: pd.DataFrame, labels: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Inner-join predictions with labels on ``image_id``; add ``confidence``, ``correct`` and ``scored`` columns.

    Extra label columns (``is_tma``, site, ...) are kept for breakdowns; ``slide_kind`` is "TMA"/"WSI" from ``is_tma``.
    """
    for name, df, need in (("predictions", preds, ("image_id", "pred")), ("labels", labels, ("image_id", "label"))):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise InputError(f"{name}: missing column(s) {', '.join(missing)}")
    classes = list(classes) if classes is not None else classes_of(preds)
    missing_p = [c for c in classes if PROB_PREFIX + c not in preds.columns]
    if missing_p:
        raise InputError(f"predictions: missing probability column(s) {', '.join(PROB_PREFIX + c for c in missing_p)}")
    p = preds.copy()
    p["image_id"] = p["image_id"].astype(str)
    p["pred"] = p["pred"].astype(str)
    bad = sorted(set(p["pred"]) - set(classes))
    if bad:
        raise InputError(f"predictions: pred value(s) {', '.join(bad[:5])} not in classes {', '.join(classes)}")
    probs = p[[PROB_PREFIX + c for c in classes]].apply(pd.to_numeric, errors="coerce")
    if probs.isna().any().any() or (probs.to_numpy() < 0).any():
        raise InputError("predictions: probabilities must be numbers >= 0")
    p[probs.columns] = probs
    lab = labels.copy()
    lab["image_id"] = lab["image_id"].astype(str)
    lab["label"] = lab["label"].astype(str)
    lab = lab.drop(columns=[c for c in lab.columns if c in p.columns and c != "image_id"])
    df = p.merge(lab, on="image_id", how="inner", validate="one_to_one")
    pm = df[[PROB_PREFIX + c for c in classes]].to_numpy(float)
    idx = {c: i for i, c in enumerate(classes)}
    df["confidence"] = pm[np.arange(len(df)), df["pred"].map(idx).to_numpy(int)] if len(df) else []
    df["correct"] = df["pred"] == df["label"]
    scored = df["label"].isin(classes)
    for col in ("is_outlier", "exclude"):
        if col in df.columns:
            scored &= ~df[col].map(_truthy)
    df["scored"] = scored
    df["slide_kind"] = df["is_tma"].map(lambda v: "TMA" if _truthy(v) else "WSI") if "is_tma" in df.columns else "WSI"
    return df.reset_index(drop=True)


def _truthy(v: object) -> bool:
    return str(v).strip().lower() in TRUTHY


def scored_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that count for the score (labelled with a class, not an outlier, not excluded)."""
    return df[df["scored"]] if "scored" in df.columns else df


def prob_matrix(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """N x C probabilities, rows renormalised to sum to 1."""
    pm = df[[PROB_PREFIX + c for c in classes]].to_numpy(float)
    s = pm.sum(axis=1, keepdims=True)
    return np.divide(pm, s, out=np.full_like(pm, 1.0 / max(len(classes), 1)), where=s > 0)


def _encode(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    return values.map(idx).to_numpy(int)


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (as scikit-learn's balanced_accuracy_score)."""
    present = np.unique(y)
    if len(present) == 0:
        return float("nan")
    return float(np.mean([np.mean(p[y == k] == k) for k in present]))


def auroc_binary(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def compute_metrics(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Balanced accuracy (the task's score), accuracy, macro AUROC, log loss and per-class P/R/F1/support.

    ``df`` is a ``join_predictions`` table; unscored rows are counted in ``n_excluded`` only.
    """
    classes = list(classes)
    sc = scored_rows(df)
    out: dict[str, Any] = {"n": int(len(sc)), "n_excluded": int(len(df) - len(sc)), "classes": classes}
    y, p = _encode(sc["label"], classes), _encode(sc["pred"], classes)
    pm = prob_matrix(sc, classes)
    n = len(y)
    out["balanced_accuracy"] = balanced_accuracy(y, p)
    out["accuracy"] = float(np.mean(y == p)) if n else float("nan")
    raw = sc[[PROB_PREFIX + c for c in classes]].to_numpy(float)  # raw scores: renormalising would break ties
    aucs = [auroc_binary((y == k).astype(int), raw[:, k]) for k in range(len(classes))]
    valid = [a for a in aucs if not np.isnan(a)]
    out["macro_auroc"] = float(np.mean(valid)) if valid else float("nan")
    out["log_loss"] = float(-np.mean(np.log(np.clip(pm[np.arange(n), y], EPS, 1.0)))) if n else float("nan")
    per: dict[str, dict[str, float]] = {}
    for k, c in enumerate(classes):
        tp = int(np.sum((p == k) & (y == k)))
        npred, support = int(np.sum(p == k)), int(np.sum(y == k))
        prec = tp / npred if npred else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = {"precision": prec, "recall": rec, "f1": f1, "support": support, "auroc": aucs[k]}
    out["per_class"] = per
    return out


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The ``per_class`` part of ``compute_metrics`` as a table (one row a class)."""
    t = pd.DataFrame.from_dict(metrics["per_class"], orient="index")
    t.index.name = "class"
    return t.reset_index()


SUMMARY_KEYS = ("n", "balanced_accuracy", "accuracy", "macro_auroc", "log_loss")


def metrics_by(df: pd.DataFrame, classes: Sequence[str], column: str) -> pd.DataFrame:
    """The summary metrics for each value of ``column`` (e.g. ``slide_kind``), one row a group."""
    if column not in df.columns:
        raise InputError(f"no column {column!r} to break the metrics down by")
    rows = []
    sc = scored_rows(df)
    for value, grp in sc.groupby(sc[column].astype(str), sort=True):
        m = compute_metrics(grp, classes)
        rows.append({column: value, **{k: m[k] for k in SUMMARY_KEYS}})
    return pd.DataFrame(rows, columns=[column, *SUMMARY_KEYS])


def confusion(df: pd.DataFrame, classes: Sequence[str], normalize: bool = False) -> pd.DataFrame:
    """Confusion matrix: rows = true label, columns = predicted; ``normalize`` divides each row by its total."""
    classes = list(classes)
    sc = scored_rows(df)
    y, p = _encode(sc["label"], classes), _encode(sc["pred"], classes)
    m = np.zeros((len(classes), len(classes)), dtype=float if normalize else int)
    np.add.at(m, (y, p), 1)
    if normalize:
        tot = m.sum(axis=1, keepdims=True)
        m = np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
    return pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="pred"))


def cell_slides(df: pd.DataFrame, true: str, pred: str) -> pd.DataFrame:
    """The scored slides with label ``true`` predicted as ``pred``, least confident first for errors."""
    sc = scored_rows(df)
    sel = sc[(sc["label"] == true) & (sc["pred"] == pred)]
    return sel.sort_values(["confidence", "image_id"], ascending=[true == pred, True]).reset_index(drop=True)


def parse_cell(value: str | None, classes: Sequence[str]) -> tuple[str, str] | None:
    """A confusion cell written ``true,pred`` (the analysis page's ``?cell=``) -> (true, pred), or None when it does not
    name two classes. Class names may hold commas: every split point is tried."""
    if not value:
        return None
    known = set(classes)
    for i, ch in enumerate(value):
        if ch == "," and value[:i] in known and value[i + 1:] in known:
            return value[:i], value[i + 1:]
    return None


def format_cell(true: str, pred: str) -> str:
    """The ``?cell=`` value of a confusion cell (inverse of :func:`parse_cell`)."""
    return f"{true},{pred}"


def error_impact(df: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """For each (true, pred) error pair: count and the rise in balanced accuracy if those errors were fixed.

    Balanced accuracy is the mean recall over present classes, so fixing ``count`` errors of class ``t``
    adds ``count / support(t) / n_present_classes``. Sorted by that gain, largest first.
    """
    cm = confusion(df, classes)
    support = cm.sum(axis=1)
    n_present = int((support > 0).sum())
    rows = []
    for t in cm.index:
        for p in cm.columns:
            cnt = int(cm.loc[t, p])
            if t != p and cnt > 0:
                rows.append({"true": t, "pred": p, "count": cnt, "ba_gain": cnt / support[t] / n_present})
    out = pd.DataFrame(rows, columns=["true", "pred", "count", "ba_gain"])
    return out.sort_values(["ba_gain", "count", "true", "pred"], ascending=[False, False, True, True],
                           ignore_index=True)


def calibration(df: pd.DataFrame, classes: Sequence[str], bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Reliability table of the top-class confidence in ``bins`` equal-width bins, and the expected calibration error.

    ECE = sum over bins of (bin share) x |accuracy - mean confidence|.
    """
    sc = scored_rows(df)
    conf = sc["confidence"].to_numpy(float)
    correct = sc["correct"].to_numpy(bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        cnt = int(m.sum())
        mc = float(conf[m].mean()) if cnt else float("nan")
        acc = float(correct[m].mean()) if cnt else float("nan")
        if cnt:
            ece += cnt / len(conf) * abs(acc - mc)
        rows.append({"bin": b, "lo": edges[b], "hi": edges[b + 1], "count": cnt, "mean_confidence": mc,
                     "accuracy": acc, "gap": acc - mc if cnt else float("nan")})
    return pd.DataFrame(rows), float(ece) if len(conf) else float("nan")


def coverage_curve(df: pd.DataFrame, classes: Sequence[str], thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """For each confidence threshold: coverage (share of slides kept) and balanced accuracy / accuracy on those kept."""
    sc = scored_rows(df)
    conf = sc["confidence"].to_numpy(float)
    y, p = _encode(sc["label"], classes), _encode(sc["pred"], classes)
    ts = np.round(np.linspace(0, 1, 101), 2) if thresholds is None else np.asarray(thresholds, float)
    rows = []
    for t in ts:
        keep = conf >= t
        k = int(keep.sum())
        rows.append({"threshold": float(t), "n_kept": k, "coverage": k / len(conf) if len(conf) else float("nan"),
                     "balanced_accuracy": balanced_accuracy(y[keep], p[keep]) if k else float("nan"),
                     "accuracy": float(np.mean(y[keep] == p[keep])) if k else float("nan")})
    return pd.DataFrame(rows)


def compare_versions(df_a: pd.DataFrame, df_b: pd.DataFrame, classes: Sequence[str],
                     names: tuple[str, str] = ("A", "B")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of two versions side by side (with the difference) and the slides whose prediction changed.

    Changed slides carry ``status``: "fixed" (B right, A wrong), "broken" (A right, B wrong) or "changed".
    """
    a, b = names
    ma, mb = compute_metrics(df_a, classes), compute_metrics(df_b, classes)
    metrics = pd.DataFrame({"metric": list(SUMMARY_KEYS), a: [ma[k] for k in SUMMARY_KEYS],
                            b: [mb[k] for k in SUMMARY_KEYS]})
    metrics["delta"] = metrics[b] - metrics[a]
    cols = ["image_id", "label", "pred", "confidence", "correct"]
    j = scored_rows(df_a)[cols].merge(scored_rows(df_b)[cols], on=["image_id", "label"], suffixes=(f"_{a}", f"_{b}"))
    ch = j[j[f"pred_{a}"] != j[f"pred_{b}"]].copy()
    ca, cb = ch[f"correct_{a}"], ch[f"correct_{b}"]
    ch["status"] = np.where(cb & ~ca, "fixed", np.where(ca & ~cb, "broken", "changed"))
    ch = ch.drop(columns=[f"correct_{a}", f"correct_{b}"])
    return metrics, ch.sort_values(["status", "image_id"], ignore_index=True)
