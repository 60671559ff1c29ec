"""The review queue: one row per slide that needs a look, with every reason it was picked.

Sources: suspected label issues (out-of-fold predictions, ``core.analysis.label_issues.rank_label_issues``), likely
outliers (OOD score over the model's threshold), low-confidence predictions, and second-opinion flags from the store.
Labels and predictions follow ``core.review.slide_table``'s rule: the label is the reviewed label, ``pred`` / ``confidence``
are out-of-fold where the slide has one (``pred_source`` says which), the final model's prediction is ``final_pred``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.cohort.cohort_file import Cohort
from core.review.store import Store, SyncReport, open_store

LOW_CONFIDENCE = 0.6
UNCERTAIN = 0.15  # spread (std) of the predicted class's probability over MC dropout draws or ensemble members


def uncertainty_text(spread: float, uncertain: float = UNCERTAIN) -> str:
    """How the viewer states a slide's uncertainty: the spread of the final model's probability for its class over
    Monte-Carlo dropout draws (``infer --mc-samples``) or an ensemble's members, and whether the queue calls it
    uncertain."""
    verdict = f"over {uncertain:.2f}: uncertain, in the review queue" if spread > uncertain else \
        f"at most {uncertain:.2f}: settled"
    return (f"Uncertainty ±{spread:.2f} (spread of the predicted class's probability over dropout draws or ensemble "
            f"members; {verdict})")
ISSUE_SCORE = 0.5  # normalized margin above 0.5: another class is more likely than the given one
SOURCES = ("label_issue", "outlier", "low_confidence", "second_opinion", "attends_outside")
QUEUE_COLUMNS = ["image_id", "label", "pred", "pred_source", "confidence", "final_pred", "ood_score", "reasons",
                 "n_reasons", "priority", "suggested_label", "issue_rank", *SOURCES, "flagged_outlier", "exclude",
                 "reviewed", "version"]


@dataclass(frozen=True)
class ModelView:
    """What the queue knows of one model version: its metadata, final and out-of-fold predictions."""

    version: str | None
    meta: dict[str, Any]
    predictions: pd.DataFrame  # final model on every slide (may be empty)
    oof: pd.DataFrame  # out-of-fold predictions of the training slides (may be empty)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta.get("classes", [])]

    @property
    def ood_threshold(self) -> float | None:
        thr = (self.meta.get("ood") or {}).get("threshold")
        return None if thr is None else float(thr)


def model_versions(cohort: Cohort) -> list[str]:
    """Model versions of the cohort, oldest first."""
    from core.model.versions import list_versions

    return [str(m["version"]) for m in list_versions(cohort.models)]


def default_model_version(cohort: Cohort) -> str | None:
    """The model version pages open by default: the newest with predictions (``core.model.versions.default_version``), so a
    newer version still without predictions (a retrain in progress, failed or killed) is never the default."""
    from core.model.versions import default_version

    return default_version(cohort.models, cohort.results, among=model_versions(cohort))


def load_model_view(cohort: Cohort, version: str | None = None) -> ModelView:
    """Read a version's model.json and predictions (:func:`default_model_version` when ``None``; empty when there is
    no model)."""
    if version is None:
        version = default_model_version(cohort)
        if version is None:
            return ModelView(None, {}, pd.DataFrame(), pd.DataFrame())
    from core.model.versions import read_model_meta

    mdir = Path(cohort.models) / version
    meta = read_model_meta(mdir)
    return ModelView(version, meta, _read_csv(Path(cohort.results) / version / "predictions.csv"),
                     _read_csv(mdir / "oof_predictions.csv"))


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    from core.analysis.files import read_predictions

    return read_predictions(path)


def ensure_synced(cohort: Cohort, store: Store) -> SyncReport:
    """Import the cohort's slides and labels into the store once (idempotent; bad labels raise, nothing imported)."""
    return store.sync_slides(cohort)


def open_cohort_store(cohort: Cohort, sync: bool = True) -> Store:
    """The cohort's review database (``cohort.database``), with its slides and labels imported when ``sync``."""
    store = open_store(cohort.database)
    if sync:
        ensure_synced(cohort, store)
    return store


def build_queue(cohort: Cohort, store: Store, version: str | None = None, *,
                low_confidence: float = LOW_CONFIDENCE, issue_score: float = ISSUE_SCORE,
                view: ModelView | None = None, uncertain: float = UNCERTAIN) -> pd.DataFrame:
    """All slides with their queue reasons, most urgent first (filter ``n_reasons > 0`` for the queue proper)."""
    view = view or load_model_view(cohort, version)
    states = store.state_table()
    if states.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    q = states.rename(columns={"outlier": "flagged_outlier"}).set_index("image_id")
    q["reviewed"] = q["updated_by"].notna() & (q["updated_by"] != "import")
    from core.review.slide_table import reviewed_labels, slide_table

    table = slide_table(list(q.index), reviewed_labels(store, states=states), view).set_index("image_id")
    for col in ("pred", "pred_source", "confidence", "final_pred", "ood_score"):
        q[col] = table[col]
    q["suggested_label"], q["issue_rank"], q["issue_score"] = None, np.nan, np.nan
    if not view.oof.empty and len(view.classes) >= 2:
        from core.analysis.label_issues import rank_label_issues
        from core.analysis.metrics import join_predictions

        labels = states.loc[states["label"].notna(), ["image_id", "label", "outlier", "exclude"]]
        labels = labels.rename(columns={"outlier": "is_outlier"})
        issues = rank_label_issues(join_predictions(view.oof, labels, view.classes), view.classes)
        issues = issues.set_index(issues["image_id"].astype(str))
        common = q.index.intersection(issues.index)
        q.loc[common, "suggested_label"] = issues.loc[common, "suggested_label"]
        q.loc[common, "issue_rank"] = issues.loc[common, "rank"]
        q.loc[common, "issue_score"] = issues.loc[common, "score"]
    thr = view.ood_threshold
    q["label_issue"] = q["issue_score"].fillna(0) > issue_score
    q["outlier"] = (q["ood_score"] > thr).fillna(False) if thr is not None else False
    q.loc[~q["label_issue"], "suggested_label"] = None
    q["low_confidence"] = q["confidence"].notna() & (q["confidence"] < low_confidence)
    spread = pd.to_numeric(table["uncertainty"], errors="coerce") if "uncertainty" in table else None
    q["uncertain"] = (spread > uncertain).fillna(False) if spread is not None else False
    q["second_opinion"] = q["second_opinion"].astype(bool)
    outside = _attends_outside(cohort, store, view.version)
    q["attends_outside"] = [i in outside for i in q.index]
    reasons, priority = [], []
    cols = ["label_issue", "issue_rank", "suggested_label", "issue_score", "outlier", "ood_score", "low_confidence",
            "pred_source", "confidence", "second_opinion", "uncertain", "attends_outside"]
    for image_id, *vals in q[cols].itertuples(name=None):  # itertuples: iterrows builds a Series per row
        r = dict(zip(cols, vals, strict=True))
        why, score = [], 0.0
        if r["label_issue"]:
            why.append(f"label issue #{int(r['issue_rank'])}: out-of-fold prediction suggests "
                       f"{r['suggested_label']!r} (score {r['issue_score']:.2f})")
            score += 1.0 + float(r["issue_score"])
        if r["outlier"]:
            why.append(f"likely outlier: OOD score {r['ood_score']:.3g} > threshold {thr:.3g}")
            score += 1.5
        if r["low_confidence"]:
            why.append(f"low confidence ({r['pred_source']}): {r['confidence']:.2f} < {low_confidence:.2f}")
            score += 0.5 + (low_confidence - float(r["confidence"]))
        if r["uncertain"]:
            why.append(f"uncertain: the final model's probability spreads {spread[image_id]:.2f} > {uncertain:.2f} "
                       "over its MC dropout draws or ensemble members")
            score += 0.5 + float(spread[image_id])
        if r["second_opinion"]:
            who = store_last_flagger(store, str(image_id))
            why.append("second opinion requested" + (f" by {who}" if who else ""))
            score += 2.0
        if r["attends_outside"]:
            why.append(outside[image_id])
            score += 1.0
        reasons.append("; ".join(why))
        priority.append(round(score, 4))
    q["reasons"], q["priority"] = reasons, priority
    q["low_confidence"] = q["low_confidence"] | q["uncertain"]  # shown under "Low confidence"
    q["n_reasons"] = q[list(SOURCES)].sum(axis=1).astype(int)
    q = q.reset_index().sort_values(["priority", "image_id"], ascending=[False, True], ignore_index=True)
    return q[QUEUE_COLUMNS]


def _attends_outside(cohort: Cohort, store: Store, version: str | None) -> dict[str, str]:
    """Slides whose model looks elsewhere than the annotated tumour (``core.review.annotation_metrics``), with the words."""
    if version is None or not store.annotations():
        return {}
    from core.review.annotation_metrics import cohort_inside_for_version, looks_elsewhere, outside_reason

    table = cohort_inside_for_version(cohort, store, version)
    return {str(r["image_id"]): outside_reason(r) for _, r in table.iterrows() if looks_elsewhere(r)}


def store_last_flagger(store: Store, image_id: str) -> str | None:
    """Who last set the slide's second-opinion flag."""
    rows = [r for r in store.history(image_id) if r.field == "second_opinion" and r.new_value == "1"]
    return rows[-1].reviewer if rows else None


def filter_queue(q: pd.DataFrame, sources: list[str] | None = None, hide_reviewed: bool = False,
                 text: str = "") -> pd.DataFrame:
    """Rows with at least one of ``sources`` (all sources when None), optionally unreviewed only, id containing text."""
    sources = list(SOURCES) if sources is None else [s for s in sources if s in SOURCES]
    keep = q[sources].any(axis=1) if sources else pd.Series(False, index=q.index)
    if hide_reviewed:
        keep &= ~q["reviewed"]
    if text.strip():
        keep &= q["image_id"].str.contains(text.strip(), case=False, regex=False)
    return q[keep].reset_index(drop=True)


TRAIN_SHARE = 0.8  # of a retrain's progress bar; the rest is the new version's predictions and attention


def _scaled(progress: Any, lo: float, hi: float, label: str) -> Any:
    if progress is None:
        return None
    return lambda f, m="": progress(lo + (hi - lo) * min(max(float(f), 0.0), 1.0), f"{label} · {m}" if m else label)


def retrain(cohort: Cohort, store: Store, labels_csv: str | Path, model: str = "abmil",
            progress: Any = None, predict: bool = True, **train_kw: Any) -> str:
    """Train a new model version on a labels file, compute its predictions and attention on every slide with
    features (``core.model.infer.ensure_results``; skipped when not ``predict``), then register it and record its
    out-of-fold predictions; returns the version.

    When the predictions fail the version is still registered, and ``InputError`` says how to compute them.
    """
    from core.errors import InputError, SlideLensError
    from core.model.infer import ensure_results
    from core.model.train import train_model

    labels_csv = Path(labels_csv)
    out = Path(train_model(cohort.features, labels_csv, model=model, out_dir=cohort.models,
                           progress=_scaled(progress, 0.0, TRAIN_SHARE if predict else 1.0, "training"), **train_kw))
    meta = json.loads((out / "model.json").read_text())
    meta["version"] = version = str(meta.get("version") or out.name)
    try:
        if predict:
            ensure_results(cohort, version, progress=_scaled(progress, TRAIN_SHARE, 1.0, "predictions and attention"))
    except SlideLensError as exc:
        args = (f"--cohort {cohort.source} --version {version}" if cohort.source else
                f"--model {out} --features {cohort.features} --out {Path(cohort.results) / version}")
        raise InputError(f"{version} was trained but its predictions failed ({exc}); compute them with "
                         f"`python -m core infer {args}`") from exc
    finally:
        store.register_model_version(meta)
        oof = out / "oof_predictions.csv"
        if oof.is_file():
            store.record_predictions(version, pd.read_csv(oof, dtype={"image_id": str}))
    return version
