"""Training history: per fold and epoch, the losses and the per-class validation metrics (``history.csv``).

Each fold's model is scored after every epoch on the fold's held-out slides (the slides its out-of-fold predictions
are made on; they never steer training or early stopping). ``chosen`` marks the epoch early stopping kept, so the
metrics of that row are the fold's out-of-fold metrics. Rows with ``fold == -1`` are the final model (training loss
only: it has no held-out slides).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

HISTORY_CSV = "history.csv"
FINAL_FOLD = -1
METRICS = ("recall", "precision", "f1")
BASE_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "stop_loss", "balanced_accuracy", "chosen"]


def class_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Held-out loss, balanced accuracy and per-class recall / precision / F1 (NaN where undefined: a class with no
    slides has no recall, a class never predicted has no precision)."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(y), len(classes))
    pred = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=int)
    out: dict[str, float] = {}
    p_true = probs[np.arange(len(y)), y] if len(y) else np.zeros(0)
    out["val_loss"] = float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()) if len(y) else float("nan")
    recalls = []
    for c, name in enumerate(classes):
        tp = int(((pred == c) & (y == c)).sum())
        n_true, n_pred = int((y == c).sum()), int((pred == c).sum())
        rec = tp / n_true if n_true else float("nan")
        prec = tp / n_pred if n_pred else float("nan")
        if n_true and n_pred:
            f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        elif n_true:
            f1 = 0.0
        else:
            f1 = float("nan")
        out[f"recall_{name}"], out[f"precision_{name}"], out[f"f1_{name}"] = rec, prec, f1
        if n_true:
            recalls.append(rec)
    out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
    return out


def history_columns(classes: Sequence[str]) -> list[str]:
    """The columns of ``history.csv`` in order."""
    return BASE_COLUMNS + [f"{m}_{c}" for m in METRICS for c in classes]


def history_frame(rows: list[dict[str, Any]], classes: Sequence[str]) -> pd.DataFrame:
    """The history table from the rows recorded during training (missing metrics as NaN)."""
    df = pd.DataFrame(rows).reindex(columns=history_columns(classes))
    df["chosen"] = df["chosen"].fillna(False).astype(bool)
    return df


def read_history(model_dir: str | Path) -> pd.DataFrame | None:
    """``history.csv`` of a model version, or None when it has none (ensembles, models trained before it existed)."""
    path = Path(model_dir) / HISTORY_CSV
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable history table ({exc})") from exc
    missing = [c for c in ("fold", "epoch", "train_loss") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    df["chosen"] = df.get("chosen", False)
    df["chosen"] = df["chosen"].astype(str).str.lower().isin(("true", "1"))
    return df


def history_classes(hist: pd.DataFrame) -> list[str]:
    """Class names of a history table, from its ``recall_<class>`` columns."""
    return [c.removeprefix("recall_") for c in hist.columns if c.startswith("recall_")]


def fold_rows(hist: pd.DataFrame) -> pd.DataFrame:
    """The k folds' rows (the final model's left out)."""
    return hist[hist["fold"] != FINAL_FOLD]


def curves(hist: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Long table ``series, epoch, mean, lo, hi, n_folds``: each column's mean over the folds that ran that epoch,
    with the min-max band (folds that stopped early drop out of later epochs)."""
    folds = fold_rows(hist)
    parts = []
    for col in columns:
        if col not in folds.columns:
            continue
        g = folds.groupby("epoch")[col]
        part = pd.DataFrame({"mean": g.mean(), "lo": g.min(), "hi": g.max(), "n_folds": g.count()}).reset_index()
        part.insert(0, "series", col)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["series", "epoch", "mean", "lo", "hi", "n_folds"])
    return pd.concat(parts, ignore_index=True)


def chosen_epochs(hist: pd.DataFrame) -> dict[int, int]:
    """fold -> the epoch early stopping kept."""
    folds = fold_rows(hist)
    picked = folds[folds["chosen"]]
    return {int(f): int(e) for f, e in zip(picked["fold"], picked["epoch"], strict=True)}


def lagging_classes(hist: pd.DataFrame, margin: float = 0.1, threshold: float = 0.5) -> pd.DataFrame:
    """Per class: mean recall over the folds at each fold's chosen epoch, the mean of the other classes, whether it
    trails them by more than ``margin``, and the first epoch the fold-mean recall reached ``threshold`` (None: never).

    Sorted with the most lagging class first."""
    classes = history_classes(hist)
    folds = fold_rows(hist)
    at_chosen = folds[folds["chosen"]]
    rec = {c: float(at_chosen[f"recall_{c}"].mean()) for c in classes}
    mean_curve = folds.groupby("epoch")[[f"recall_{c}" for c in classes]].mean()
    rows = []
    for c in classes:
        others = [rec[o] for o in classes if o != c and np.isfinite(rec[o])]
        others_mean = float(np.mean(others)) if others else float("nan")
        passed = mean_curve.index[mean_curve[f"recall_{c}"] >= threshold]
        rows.append({"class": c, "recall_at_chosen": rec[c], "others_mean": others_mean,
                     "gap": others_mean - rec[c] if np.isfinite(rec[c]) else float("nan"),
                     "lagging": bool(np.isfinite(rec[c]) and np.isfinite(others_mean)
                                     and rec[c] < others_mean - margin),
                     f"first_epoch_recall_{threshold:g}": int(passed[0]) if len(passed) else None})
    out = pd.DataFrame(rows)
    if len(out):
        out[f"first_epoch_recall_{threshold:g}"] = out[f"first_epoch_recall_{threshold:g}"].astype("Int64")
    return out.sort_values("gap", ascending=False, na_position="last", ignore_index=True) if len(out) else out


def format_epoch(row: dict[str, Any], classes: Sequence[str], header: bool = False) -> str:
    """One compact line of the CLI's per-class table (recall per class), with a header line when ``header``."""
    width = max(6, *(len(c) for c in classes)) if classes else 6
    cells = "".join(f"{c[:width]:>{width + 1}}" for c in classes)
    head = f"{'fold':>4} {'epoch':>5} {'train':>7} {'val':>7} {'bal.acc':>7} |{cells}   (recall per class)"

    def num(v: Any, w: int) -> str:
        return f"{v:>{w}.3f}" if v is not None and np.isfinite(v) else f"{'-':>{w}}"

    fold = "final" if row["fold"] == FINAL_FOLD else str(int(row["fold"]) + 1)
    line = (f"{fold:>4} {int(row['epoch']):>5} {num(row.get('train_loss'), 7)} {num(row.get('val_loss'), 7)} "
            f"{num(row.get('balanced_accuracy'), 7)} |"
            + "".join(" " + num(row.get(f"recall_{c}"), width) for c in classes))
    return f"{head}\n{line}" if header else line
