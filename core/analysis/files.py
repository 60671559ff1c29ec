"""Files for error analysis: reading predictions, joining them with the reviewed labels, writing the report folder.

The truth on every page is the reviewed label (``core.review.slide_table.reviewed_labels``: the review database's current
state, with the reviewer's outlier / exclude flags); :func:`reviewed_join` (and ``core.review.slide_table.version_analysis``,
which reads the labels from the store) is what the analysis page, Compare and the home page score with, so they
show the same numbers for the same version. Nothing here reads the review database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from core.analysis.label_issues import rank_label_issues
from core.analysis.metrics import classes_of, compute_metrics, confusion, error_impact, join_predictions, metrics_by
from core.atomic import atomic_write
from core.errors import InputError

if TYPE_CHECKING:
    from core.cohort.cohort_file import Cohort

Source = Literal["oof", "final"]
ProgressFn = Callable[[float, str], None]
# what each kind of prediction is called wherever a number is shown
SOURCE_NAMES: dict[str, str] = {"oof": "out-of-fold", "final": "final model, trained on these slides - optimistic"}


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


def reviewed_join(preds: pd.DataFrame, reviewed: pd.DataFrame, classes: list[str] | None = None) -> pd.DataFrame:
    """Predictions joined with the reviewed labels (:func:`core.review.slide_table.reviewed_labels`'s table).

    Slides without a label keep an empty one (never scored); outlier / excluded slides are not scored; the labels
    file's value stays in ``given_label`` and its extra columns (``is_tma``, site, ...) are kept for breakdowns.
    """
    lab = reviewed.copy()
    lab["label"] = lab["label"].where(lab["label"].notna(), "").astype(str)
    return join_predictions(preds, lab, classes)


def score_caption(source: Source, n: int) -> str:
    """What a score is computed on, said the same way on every page."""
    return f"{SOURCE_NAMES[source]}, against reviewed labels ({n} slides)"


def n_errors(df: pd.DataFrame) -> int:
    """Scored slides whose prediction differs from the reviewed label (a :func:`reviewed_join` table)."""
    return int((df["scored"] & ~df["correct"]).sum()) if len(df) else 0


def cohort_given_labels(cohort: Cohort) -> pd.DataFrame | None:
    """The cohort's labels file as a table (for ``given_label`` and breakdown columns), or None without one."""
    from core.cohort.labels import read_labels

    if cohort.labels is None or not Path(cohort.labels).is_file():
        return None
    return read_labels(cohort.labels).df


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


def resolve_predictions_arg(path: str | Path) -> tuple[Path, str | None]:
    """What a user means by ``--predictions``: a CSV as it is; a model version folder (its out-of-fold predictions)
    or a results version folder (its predictions.csv); for a folder of versions, the newest that has predictions.
    Returns (CSV, a note saying which was taken or None); ``InputError`` listing what is there otherwise."""
    path = Path(path)
    if path.is_file() or not path.is_dir():
        return path, None
    for name in ("oof_predictions.csv", "predictions.csv"):
        if (path / name).is_file():
            return path / name, f"using {path / name}"
    found = sorted((d for d in path.iterdir() if d.is_dir() and any((d / n).is_file() for n in
                                                                     ("oof_predictions.csv", "predictions.csv"))),
                   key=lambda d: d.name)
    if not found:
        raise InputError(f"{path}: no predictions CSV here, nor in a version folder below it")
    newest = found[-1]
    csv = newest / "oof_predictions.csv" if (newest / "oof_predictions.csv").is_file() else newest / "predictions.csv"
    others = f"; others: {', '.join(d.name for d in found[:-1])}" if len(found) > 1 else ""
    return csv, f"using the newest version's predictions, {csv}{others}"
