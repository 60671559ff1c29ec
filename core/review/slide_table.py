"""One rule for every page: what a slide's label is, what the model predicted, and whether that is an error.

- **Label** = the reviewed label: the review database's current state (the labels file's value until someone edits
  it), with the reviewer's outlier / exclude flags. ``given_label`` keeps the labels file's value for reference.
- **Errors are judged on out-of-fold predictions** (each slide predicted by a model that did not train on it); a slide
  without one (unlabelled, or added after training) shows the final model's prediction, never judged.
- **The final model** (what the attention overlay shows) is kept apart in ``final_pred`` / ``final_prob_<class>``.

Every page reads this table (or :func:`reviewed_labels`) so that the viewer, the analysis page, the review queue and
the home page agree about the same slide and model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.errors import InputError

if TYPE_CHECKING:
    from core.cohort.cohort_file import Cohort
    from core.review.queue import ModelView
    from core.review.store import Store

OOF = "out-of-fold"
FINAL = "final model"
TABLE_COLUMNS = ["image_id", "given_label", "label", "is_outlier", "exclude", "reviewed", "pred", "pred_source",
                 "confidence", "correct", "final_pred", "ood_score"]


def reviewed_labels(store: Store | None, given: pd.DataFrame | None = None,
                    states: pd.DataFrame | None = None) -> pd.DataFrame:
    """``image_id, label, is_outlier, exclude, reviewed`` from the store's current state (the truth on every page).

    Extra columns of ``given`` (the labels file: ``is_tma``, site, ...) are kept for breakdowns; its ``label`` is
    returned as ``given_label``. ``states`` is ``store.state_table()`` when the caller has read it already.
    """
    states = store.state_table() if states is None else states  # a caller that has the table passes it
    out = pd.DataFrame({
        "image_id": states["image_id"].astype(str),
        "label": states["label"],
        "is_outlier": states["outlier"].astype(bool),
        "exclude": states["exclude"].astype(bool),
        "reviewed": states["updated_by"].notna() & (states["updated_by"] != "import"),
    })
    if given is not None and not given.empty and "image_id" in given.columns:
        extra = given.drop_duplicates("image_id").copy()
        extra["image_id"] = extra["image_id"].astype(str)
        extra = extra.rename(columns={"label": "given_label"})
        extra = extra.drop(columns=[c for c in ("is_outlier", "exclude", "reviewed") if c in extra.columns])
        out = out.merge(extra, on="image_id", how="left")
    elif "given_label" not in out.columns:
        out["given_label"] = None
    return out.reset_index(drop=True)


def _preds(df: pd.DataFrame) -> pd.DataFrame:
    if df is None or df.empty or "image_id" not in df.columns:
        return pd.DataFrame(columns=["image_id", "pred"])
    p = df.copy()
    p["image_id"] = p["image_id"].astype(str)
    return p.drop_duplicates("image_id").set_index("image_id")


def slide_table(ids: list[str], labels: pd.DataFrame, view: ModelView | None) -> pd.DataFrame:
    """One row per slide in ``ids`` under the rule above.

    ``labels`` is :func:`reviewed_labels`' table; ``view`` the model version's predictions (or None). Columns:
    ``TABLE_COLUMNS`` plus ``prob_<class>`` (the judged prediction's probabilities) and ``final_prob_<class>``.
    """
    df = pd.DataFrame({"image_id": [str(i) for i in ids]})
    lab = labels.drop_duplicates("image_id")
    df = df.merge(lab, on="image_id", how="left")
    for col in ("given_label", "label"):
        if col not in df.columns:
            df[col] = None
    df[["is_outlier", "exclude", "reviewed"]] = df.reindex(columns=["is_outlier", "exclude", "reviewed"]) \
        .fillna(False).astype(bool)
    oof = _preds(view.oof if view is not None else None)
    final = _preds(view.predictions if view is not None else None)
    classes = list(view.classes) if view is not None else []
    idx = df["image_id"]
    in_oof = idx.isin(oof.index)
    in_final = idx.isin(final.index)
    df["pred"] = np.where(in_oof, idx.map(oof["pred"]) if "pred" in oof else None,
                          idx.map(final["pred"]) if "pred" in final else None)
    df["pred"] = df["pred"].where(in_oof | in_final, None)
    df["pred_source"] = np.where(in_oof, OOF, np.where(in_final, FINAL, None))
    df["pred_source"] = df["pred_source"].where(in_oof | in_final, None)
    for c in classes:
        col = f"prob_{c}"
        a = pd.to_numeric(idx.map(oof[col]), errors="coerce") if col in oof else pd.Series(np.nan, index=df.index)
        b = pd.to_numeric(idx.map(final[col]), errors="coerce") if col in final else pd.Series(np.nan, index=df.index)
        df[col] = a.where(in_oof, b)
        df[f"final_prob_{c}"] = b
    probs = df[[f"prob_{c}" for c in classes]] if classes else pd.DataFrame(index=df.index)
    df["confidence"] = probs.max(axis=1) if classes else np.nan
    df["final_pred"] = idx.map(final["pred"]) if "pred" in final else None
    ood = final["ood_score"] if "ood_score" in final else oof.get("ood_score")
    df["ood_score"] = pd.to_numeric(idx.map(ood), errors="coerce") if ood is not None else np.nan
    # spread of the final model's probability (MC dropout draws or ensemble members; NaN without draws)
    df["uncertainty"] = (pd.to_numeric(idx.map(final["uncertainty"]), errors="coerce") if "uncertainty" in final
                         else np.nan)
    judged = in_oof & df["label"].notna() & df["label"].isin(classes) & ~df["is_outlier"] & ~df["exclude"]
    df["correct"] = pd.Series(np.where(judged, df["pred"] == df["label"], None), index=df.index, dtype=object)
    first = [c for c in TABLE_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def cohort_slide_table(cohort: Cohort, store: Store, version: str | None) -> pd.DataFrame:
    """:func:`slide_table` for every slide of ``cohort`` and one model version (the latest when None)."""
    from core.cohort.labels import read_labels
    from core.review.queue import load_model_view

    given = read_labels(cohort.labels).df if cohort.labels is not None else None
    view = load_model_view(cohort, version)
    return slide_table(list(cohort.slide_paths), reviewed_labels(store, given), view)


def version_analysis(cohort: Cohort, store: Store, version: str, source: str = "oof",
                     given: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One version's predictions (out-of-fold by default) joined with the reviewed labels; (joined, classes).

    ``given`` is the labels file's table when the caller has read it already. Raises ``InputError`` naming the
    predictions file when it is missing or malformed.
    """
    from core.analysis.files import (
        cohort_given_labels,
        model_classes,
        predictions_path,
        read_predictions,
        reviewed_join,
    )
    from core.analysis.metrics import classes_of

    path = predictions_path(cohort.models, cohort.results, version, source)
    preds = read_predictions(path)
    classes = model_classes(cohort.models / version) or classes_of(preds)
    labels = reviewed_labels(store, cohort_given_labels(cohort) if given is None else given)
    try:
        return reviewed_join(preds, labels, classes), classes
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
