"""Files for error analysis: reading predictions, finding a cohort's model versions, writing the report folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from core.analysis import classes_of, compute_metrics, confusion, error_impact, join_predictions, metrics_by
from core.analysis_issues import rank_label_issues
from core.errors import InputError

Source = Literal["oof", "final"]
ProgressFn = Callable[[float, str], None]


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions CSV (``image_id,pred,prob_<class>...``), raising ``InputError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "pred": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from exc
    try:
        classes = classes_of(df)
        join_predictions(df, pd.DataFrame({"image_id": [], "label": []}), classes)  # validates columns and values
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return df


def model_classes(model_dir: Path) -> list[str] | None:
    """The class list from ``model.json`` if the folder has one."""
    f = model_dir / "model.json"
    if not f.is_file():
        return None
    try:
        classes = json.loads(f.read_text()).get("classes")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{f}: invalid JSON ({exc})") from exc
    return [str(c) for c in classes] if classes else None


def predictions_path(models_dir: Path, results_dir: Path, version: str, source: Source) -> Path:
    """Where a version's out-of-fold ("oof") or final-model ("final") predictions live."""
    return models_dir / version / "oof_predictions.csv" if source == "oof" else results_dir / version / "predictions.csv"


def load_joined(pred_path: str | Path, labels: pd.DataFrame, classes: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read predictions and join them with a labels table; returns (joined, classes)."""
    preds = read_predictions(pred_path)
    classes = classes or classes_of(preds)
    try:
        return join_predictions(preds, labels, classes), classes
    except InputError as exc:
        raise InputError(f"{pred_path}: {exc}") from None


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then ``os.replace`` (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def analysis_report(df: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """metrics.json content: overall metrics, per class, per slide kind."""
    overall = compute_metrics(df, classes)
    per_class = overall.pop("per_class")
    kinds = metrics_by(df, classes, "slide_kind")
    return _clean({"overall": overall, "per_class": per_class,
                   "per_slide_kind": {r["slide_kind"]: {k: r[k] for k in kinds.columns if k != "slide_kind"}
                                      for r in kinds.to_dict("records")}})


def write_report(df: pd.DataFrame, classes: list[str], out_dir: str | Path,
                 progress: ProgressFn | None = None) -> dict[str, Path]:
    """Write metrics.json, confusion.csv, impact.csv and label_issues.csv into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    steps: list[tuple[str, Callable[[Path], None]]] = [
        ("metrics.json", lambda p: p.write_text(json.dumps(analysis_report(df, classes), indent=2) + "\n")),
        ("confusion.csv", lambda p: confusion(df, classes).to_csv(p)),
        ("impact.csv", lambda p: error_impact(df, classes).to_csv(p, index=False)),
        ("label_issues.csv", lambda p: rank_label_issues(df, classes).to_csv(p, index=False)),
    ]
    written = {}
    for i, (name, fn) in enumerate(steps):
        if progress:
            progress(i / len(steps), f"writing {name}")
        atomic_write(out / name, fn)
        written[name] = out / name
    if progress:
        progress(1.0, "done")
    return written
