"""Does the model look where the pathologist drew? Attention against tumour annotations.

A patch is inside when its centre lies inside the union of the slide's tumour-class polygons. For one slide:
the share of the model's attention mass on inside patches, the AUROC of attention for inside against outside
patches (0.5 = no better than chance), and whether the single most-attended patch is inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
from scipy.stats import rankdata

from core.review.annotations import is_tumour, union_of
from core.review.store_annotations import Annotation

LOW_SHARE = 0.5  # below this share of attention inside the tumour, the review queue lists the slide


@dataclass(frozen=True)
class InsideFigures:
    """Attention against an annotated region of one slide."""

    share: float  # attention mass inside / total, 0..1
    auroc: float | None  # attention of inside vs outside patches; None when either side has no patch
    n_inside: int
    n_outside: int
    top_inside: bool  # the most-attended patch is inside

    def caption(self, region: str = "your tumour outline") -> str:
        """'62% of the model's attention is inside your tumour outline (AUROC 0.91 inside vs outside, ...)'."""
        s = f"{self.share * 100:.0f}% of the model's attention is inside {region}"
        extra = [f"{self.n_inside} of {self.n_inside + self.n_outside} patches inside"]
        if self.auroc is not None:
            extra.append(f"AUROC {self.auroc:.2f} for attention inside against outside")
        if not self.top_inside:
            extra.append("its most-attended patch is outside")
        return f"{s} ({'; '.join(extra)})"


def patches_inside(coords: np.ndarray, patch_size: int, region: Any) -> np.ndarray:
    """Boolean per patch: its centre (top-left + size/2, level-0) lies inside ``region`` (a shapely geometry)."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    if region is None or region.is_empty or len(coords) == 0:
        return np.zeros(len(coords), dtype=bool)
    c = coords + patch_size / 2.0
    return np.asarray(shapely.contains_xy(region, c[:, 0], c[:, 1]), dtype=bool)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney AUROC of ``scores`` for positives against negatives (ties count half); None if one is empty."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def attention_inside(values: np.ndarray, coords: np.ndarray, patch_size: int, region: Any) -> InsideFigures | None:
    """The figures for one slide (None when there is no region or no patch)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    if region is None or region.is_empty or len(values) == 0:
        return None
    inside = patches_inside(coords, patch_size, region)
    total = float(values.sum())
    share = float(values[inside].sum() / total) if total > 0 else 0.0
    return InsideFigures(share=share, auroc=auroc(values, inside), n_inside=int(inside.sum()),
                         n_outside=int((~inside).sum()), top_inside=bool(inside[int(np.argmax(values))]))


def tumour_region(annotations: Sequence[Annotation]) -> Any:
    """The union of a slide's tumour-class polygons (None when it has none)."""
    return union_of(a.geometry for a in annotations if is_tumour(a.cls))


def class_region(annotations: Sequence[Annotation], cls: str) -> Any:
    """The union of a slide's polygons of one class (case-insensitive; None when it has none)."""
    return union_of(a.geometry for a in annotations if a.cls.lower() == cls.lower())


def slide_figures(annotations: Sequence[Annotation], values: np.ndarray, coords: np.ndarray,
                  patch_size: int) -> InsideFigures | None:
    """Attention against the slide's tumour annotations (None when it has none)."""
    return attention_inside(values, coords, patch_size, tumour_region(annotations))


def cohort_inside_table(store: Any, read_attention_of: Any) -> pd.DataFrame:
    """One row per slide with tumour annotations: share, AUROC, patches inside, whether the top patch is inside,
    sorted so slides where the model looks elsewhere first (top patch outside, then lowest share) come first.
    ``read_attention_of(image_id)`` gives (values N, coords N x 2, patch_size) or None when there is no attention."""
    by_slide: dict[str, list[Annotation]] = {}
    for a in store.annotations():
        if is_tumour(a.cls):
            by_slide.setdefault(a.image_id, []).append(a)
    rows = []
    for image_id, anns in sorted(by_slide.items()):
        att = read_attention_of(image_id)
        fig = None if att is None else slide_figures(anns, *att)
        if fig is None:
            continue
        rows.append({"image_id": image_id, "attention_inside": round(fig.share, 4),
                     "auroc_inside_vs_outside": None if fig.auroc is None else round(fig.auroc, 4),
                     "top_patch_inside": fig.top_inside, "patches_inside": fig.n_inside,
                     "patches_outside": fig.n_outside, "tumour_annotations": len(anns)})
    cols = ["image_id", "attention_inside", "auroc_inside_vs_outside", "top_patch_inside", "patches_inside",
            "patches_outside", "tumour_annotations"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["top_patch_inside", "attention_inside"], kind="stable").reset_index(drop=True)


def looks_elsewhere(row: Any) -> bool:
    """The queue's rule: the most-attended patch is outside the tumour, or under half the attention is inside."""
    return (not bool(row["top_patch_inside"])) or float(row["attention_inside"]) < LOW_SHARE


def attention_reader(cohort: Any, version: str | None) -> Any:
    """``image_id -> (values, coords, patch_size)`` of a model version's attention (max over heads; None when the
    slide has no attention file)."""
    from core.errors import InputError
    from core.viewer.attention_layers import attention_path, read_attention

    def read(image_id: str) -> tuple[np.ndarray, np.ndarray, int] | None:
        if version is None:
            return None
        try:
            path = attention_path(cohort, version, image_id)
        except Exception:  # noqa: BLE001 - an id that cannot name a file has no attention
            return None
        if not path.is_file():
            return None
        try:
            v, c, size, _ = read_attention(path)
        except InputError:
            return None
        return v.max(axis=1), c, size

    return read


def cohort_inside_for_version(cohort: Any, store: Any, version: str | None) -> pd.DataFrame:
    """``cohort_inside_table`` for a model version's attention files (empty without tumour annotations)."""
    return cohort_inside_table(store, attention_reader(cohort, version))


def outside_reason(row: Any) -> str:
    """The review queue's words for a slide whose model looks elsewhere."""
    s = f"attends outside the annotated tumour: {float(row['attention_inside']) * 100:.0f}% of attention inside"
    return s + ("; its most-attended patch is outside" if not bool(row["top_patch_inside"]) else "")
