"""What the home page says about a cohort: its make-up, its model, and what needs a reviewer's attention."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.cohort.cohort_file import Cohort
from core.cohort.labels import read_labels
from core.errors import SlideLensError

if TYPE_CHECKING:
    from core.review.queue import ModelView
    from core.review.store import Store


@dataclass
class CohortSummary:
    """Numbers for the home page; ``problems`` holds one-line messages for anything that could not be read."""

    name: str
    n_slides: int = 0
    n_labelled: int = 0
    classes: tuple[str, ...] = ()
    class_counts: dict[str, int] = field(default_factory=dict)
    n_wsi: int | None = None
    n_tma: int | None = None
    versions: list[str] = field(default_factory=list)
    version: str | None = None
    model: str | None = None
    balanced_accuracy: float | None = None  # out-of-fold, against the reviewed labels (as the analysis page)
    n_scored: int | None = None  # slides that balanced accuracy is computed on
    queue_size: int | None = None
    likely_outliers: int | None = None
    disagreements: int | None = None  # errors: out-of-fold prediction differs from the reviewed label
    reviewed: int | None = None
    problems: list[str] = field(default_factory=list)


def _kinds(df: pd.DataFrame) -> tuple[int | None, int | None]:
    if "is_tma" not in df.columns:
        return None, None
    tma = df["is_tma"].astype(str).str.strip().str.lower().isin({"1", "true", "yes", "t"})
    return int((~tma).sum()), int(tma.sum())


def cohort_summary(cohort: Cohort, store: Store | None = None) -> CohortSummary:
    """Collect the home page's figures; each part that fails adds a problem line instead of failing the page.

    ``store`` is the cohort's review database (opened here when None). The model figures are those of
    ``core.model.versions.default_version`` (the newest version with predictions, the analysis page's default), scored
    exactly as the analysis page scores them (``core.analysis.files.reviewed_join``).
    """
    s = CohortSummary(name=cohort.name, n_slides=len(cohort.slide_paths))
    labels_df = None
    if cohort.labels is not None:
        try:
            table = read_labels(cohort.labels)
            labels_df = table.df
            s.classes = table.classes
            s.n_labelled = int((labels_df["label"] != "").sum())
            s.class_counts = {str(k): int(v) for k, v in labels_df["label"].value_counts().sort_index().items()}
            s.n_wsi, s.n_tma = _kinds(labels_df)
        except SlideLensError as exc:
            s.problems.append(str(exc))
    view = _model_part(cohort, s)
    _review_part(cohort, s, view, labels_df, store)
    return s


def _model_part(cohort: Cohort, s: CohortSummary) -> ModelView | None:
    """Fill the model figures; returns the default version's view (read once, shared with the review part)."""
    from core.model.versions import default_version, versions_with_predictions
    from core.review.queue import load_model_view

    try:
        s.versions = versions_with_predictions(cohort.models, cohort.results)
        version = default_version(cohort.models, cohort.results, among=s.versions)
        if version is None:
            return None
        view = load_model_view(cohort, version)
    except SlideLensError as exc:
        s.problems.append(str(exc))
        return None
    s.version = view.version
    s.model = view.meta.get("model")
    thr = view.ood_threshold
    if thr is not None and not view.predictions.empty and "ood_score" in view.predictions.columns:
        s.likely_outliers = int((pd.to_numeric(view.predictions["ood_score"], errors="coerce") > thr).sum())
    return view


def _review_part(cohort: Cohort, s: CohortSummary, view: ModelView | None, given: pd.DataFrame | None,
                 store: Store | None) -> None:
    from core.analysis.files import n_errors, reviewed_join
    from core.analysis.metrics import compute_metrics
    from core.review.queue import build_queue, open_cohort_store
    from core.review.slide_table import reviewed_labels

    try:
        store = store if store is not None else open_cohort_store(cohort)
        states = store.state_table()
    except SlideLensError as exc:
        s.problems.append(str(exc))
        return
    if states.empty:
        return
    # reviewed = last changed by a reviewer (the queue's rule): an undone edit no longer counts, and no audit scan
    s.reviewed = int((states["updated_by"].notna() & (states["updated_by"] != "import")).sum())
    if view is None or view.version is None:
        return
    try:
        classes = view.classes
        labels = reviewed_labels(store, given, states=states)
        if not view.oof.empty:  # the same join and the same metric as the analysis page's default view
            joined = reviewed_join(view.oof, labels, classes)
            m = compute_metrics(joined, classes)
            s.balanced_accuracy = _float(m.get("balanced_accuracy")) if m["n"] else None
            s.n_scored = int(m["n"])
            s.disagreements = n_errors(joined)
        queue = build_queue(cohort, store, view.version, view=view)
        s.queue_size = int((queue["n_reasons"] > 0).sum()) if not queue.empty else 0
    except SlideLensError as exc:
        s.problems.append(str(exc))


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
