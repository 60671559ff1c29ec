"""Presenting a deck to clinicians: each case in plain words, with the regions the model looked at most.

The label shown is the reviewed label and the prediction is the final model's (the model whose attention is drawn),
both from :mod:`core.review.slide_table`. Class codes are shown by their plain names from the cohort file's optional
``[class_names]`` table (``HGSC = "high-grade serous carcinoma"``), falling back to the code. No jargon here: the
words a clinician reads are built in this module and nowhere else.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import SlideLensError
from core.viewer.regions import Region, top_regions

if TYPE_CHECKING:
    from core.cohort.cohort_file import Cohort
    from core.review.store import Store
    from core.review.store_decks import Deck

UNSURE_BELOW = 0.6  # a prediction this sure or less is called "unsure"
TOUR_REGIONS = 3  # regions visited by the automatic tour and shown as close-ups
GLOSSARY = ("Attention: how much each part of the slide counted towards the model's reading. "
            "Outlined regions hold the most of it.")


@dataclass(frozen=True)
class CaseView:
    """What presentation mode and the handout show for one case (all text plain words)."""

    image_id: str
    position: int
    talking_point: str
    lines: tuple[str, ...]  # the plain-words reading: prediction, diagnosis, agreement
    regions: tuple[Region, ...] = ()
    regions_note: str = ""  # why no regions are shown (no attention stored, ...), else ""
    width: int = 0
    height: int = 0
    unsure: bool = False
    disagrees: bool = False
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def class_names(cohort: Cohort) -> dict[str, str]:
    """code -> plain name from the cohort file's optional ``[class_names]`` table ({} when there is none)."""
    if cohort.source is None or not cohort.source.is_file():
        return {}
    try:
        data = tomllib.loads(cohort.source.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    table = data.get("class_names")
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}


def plain(code: Any, names: dict[str, str]) -> str:
    """A class code's plain name (the code itself when the cohort gives none)."""
    return names.get(str(code), str(code))


def _pct(p: float) -> str:
    return f"{int(round(100 * p))}%"


def reading_lines(row: dict[str, Any], classes: list[str], names: dict[str, str]) -> tuple[list[str], bool, bool]:
    """The plain sentences for one slide-table row: (lines, unsure, disagrees)."""
    pred = row.get("final_pred")
    label = row.get("label")
    has_pred = isinstance(pred, str) and bool(pred)
    has_label = isinstance(label, str) and bool(label)
    lines, unsure, disagrees = [], False, False
    if has_pred:
        probs = {c: float(row.get(f"final_prob_{c}") or 0.0) for c in classes}
        probs = {c: p for c, p in probs.items() if not math.isnan(p)}
        sure = probs.get(pred)
        if sure is not None:
            lines.append(f"The model reads this slide as {plain(pred, names)}, {_pct(sure)} sure.")
        else:
            lines.append(f"The model reads this slide as {plain(pred, names)}.")
        others = sorted(((p, c) for c, p in probs.items() if c != pred), reverse=True)
        if sure is not None and sure <= UNSURE_BELOW:
            unsure = True
            second = f" Its next choice is {plain(others[0][1], names)} ({_pct(others[0][0])})." if others else ""
            lines.append("The model is unsure about this slide." + second)
    else:
        lines.append("The model has not read this slide.")
    if has_label:
        lines.append(f"The pathologist's diagnosis: {plain(label, names)}.")
    else:
        lines.append("No pathologist's diagnosis is recorded for this slide.")
    if has_pred and has_label:
        if pred == label:
            lines.append("The model agrees with the pathologist.")
        else:
            disagrees = True
            lines.append(f"The model disagrees with the pathologist: it reads {plain(pred, names)} where the "
                         f"pathologist diagnosed {plain(label, names)}.")
    if row.get("is_outlier"):
        lines.append("A reviewer marked this slide as unusual.")
    return lines, unsure, disagrees


def case_regions(cohort: Cohort, version: str | None, image_id: str, pred: Any, classes: list[str],
                 limit: int = 5) -> tuple[list[Region], str]:
    """The slide's top regions for the final model's predicted class, or ([], why not) in plain words."""
    from core.viewer.attention_layers import attention_path, read_attention

    if not version:
        return [], "No model has been trained yet, so there is no map of where it looked."
    try:
        path = attention_path(cohort, version, image_id)
        if not path.is_file():
            return [], "No attention map is stored for this slide, so the regions the model looked at cannot be shown."
        att, coords, size, att_classes = read_attention(path)
    except SlideLensError:
        return [], "The attention map of this slide cannot be read, so the regions cannot be shown."
    order = att_classes or classes
    col = order.index(pred) if isinstance(pred, str) and pred in order and att.shape[1] == len(order) else 0
    values = att[:, min(col, att.shape[1] - 1)]
    if not np.isfinite(values).any():
        return [], "The attention map of this slide is empty, so the regions cannot be shown."
    return top_regions(values, coords, size, limit=limit), ""


def deck_cases(cohort: Cohort, store: Store, deck: Deck) -> list[CaseView]:
    """Every case of ``deck`` in order, read under the one rule of :mod:`core.review.slide_table`."""
    from core.cohort.labels import read_labels
    from core.review.slide_table import reviewed_labels, slide_table
    from core.review.viewer_data import model_view
    from core.viewer.tiles import open_cohort_slide

    view = model_view(cohort, deck.model_version)
    given = read_labels(cohort.labels).df if cohort.labels is not None else None
    table = slide_table(deck.image_ids, reviewed_labels(store, given), view).set_index("image_id")
    names = class_names(cohort)
    out = []
    for case in deck.cases:
        row = table.loc[case.image_id].to_dict() if case.image_id in table.index else {}
        lines, unsure, disagrees = reading_lines(row, view.classes, names)
        width = height = 0
        if case.image_id not in cohort.slide_paths:
            regions, note = [], "This slide is no longer in the cohort, so it cannot be shown."
        else:
            try:
                width, height = open_cohort_slide(cohort, case.image_id).dimensions
                regions, note = case_regions(cohort, view.version, case.image_id, row.get("final_pred"),
                                             view.classes)
            except SlideLensError:
                regions, note = [], "This slide cannot be opened, so it cannot be shown."
        out.append(CaseView(image_id=case.image_id, position=case.position, talking_point=case.talking_point,
                            lines=tuple(lines), regions=tuple(regions), regions_note=note, width=int(width),
                            height=int(height), unsure=unsure, disagrees=disagrees, version=view.version,
                            extra={"cls": _class_index(row.get("final_pred"), view.classes)}))
    return out


def _class_index(pred: Any, classes: list[str]) -> int:
    return classes.index(pred) if isinstance(pred, str) and pred in classes else 0


def region_line(region: Region) -> str:
    """'Region 1: 34% of the model's attention'."""
    return f"Region {region.rank}: {_pct(region.share)} of the model's attention"
