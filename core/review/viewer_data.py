"""What the viewer page shows besides the tiles: its slide table, the slide chooser's rows and the patch gallery.

The slide table follows :mod:`core.review.slide_table` (reviewed labels, errors judged out-of-fold, the final model's
prediction apart), so the viewer agrees with every other page. Nothing here imports streamlit.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.errors import SlideLensError
from core.review.slide_table import OOF, reviewed_labels, slide_table

if TYPE_CHECKING:
    from core.cohort.cohort_file import Cohort
    from core.review.queue import ModelView
    from core.review.store import Store
    from core.slides.tiling import TissueMask

ALL = "All"
OUTCOMES = (ALL, "Correct", "Incorrect", "Not judged")
GALLERY_MIN_TISSUE = 0.5  # a top patch with less tissue than this is mostly glass: left out of the gallery
PICK_COLUMNS = ["thumb", "slide", "label", "prediction", "ok"]


# --- the slide table ------------------------------------------------------------------------------------
def model_view(cohort: Cohort, version: str | None) -> ModelView:
    """A version's metadata and predictions. A version without a complete model folder (predictions made
    elsewhere) still shows its final and out-of-fold predictions, with classes from their ``prob_`` columns."""
    from core.analysis.files import read_predictions
    from core.review.queue import ModelView, load_model_view

    try:
        return load_model_view(cohort, version)
    except SlideLensError:
        if not version:
            return ModelView(None, {}, pd.DataFrame(), pd.DataFrame())
        frames = []
        for path in (Path(cohort.results) / version / "predictions.csv",
                     Path(cohort.models) / version / "oof_predictions.csv"):
            frames.append(read_predictions(path) if path.is_file() else pd.DataFrame())
        classes = list(dict.fromkeys(str(c)[5:] for df in frames for c in df.columns if str(c).startswith("prob_")))
        return ModelView(version, {"classes": classes}, frames[0], frames[1])


def labels_file_table(given: pd.DataFrame | None) -> pd.DataFrame:
    """The labels file shaped like :func:`core.review.slide_table.reviewed_labels` (when the review database is down)."""
    cols = ["image_id", "label", "given_label", "is_outlier", "exclude", "reviewed"]
    if given is None or given.empty or "image_id" not in given.columns:
        return pd.DataFrame(columns=cols)
    df = given.drop_duplicates("image_id").copy()
    df["image_id"] = df["image_id"].astype(str)
    df["given_label"] = df["label"]
    for col in ("is_outlier", "exclude"):
        df[col] = df[col].map(lambda v: str(v).strip().lower() in {"1", "true", "yes", "y", "t"}) \
            if col in df.columns else False
    df["reviewed"] = False
    return df


def viewer_slide_table(cohort: Cohort, store: Store | None, version: str | None) -> pd.DataFrame:
    """:func:`core.review.slide_table.slide_table` for every slide of the cohort; with ``store`` None the labels file's
    labels stand in for the reviewed ones."""
    from core.cohort.labels import read_labels

    given = read_labels(cohort.labels).df if cohort.labels is not None and cohort.labels.is_file() else None
    labels = reviewed_labels(store, given) if store is not None else labels_file_table(given)
    return slide_table(list(cohort.slide_paths), labels, model_view(cohort, version))


def table_stamp(cohort: Cohort, version: str | None) -> tuple[float, ...]:
    """Modification times of every file the slide table reads (a cache key together with the store's position)."""
    files = [cohort.labels]
    if version:
        files += [cohort.results / version / "predictions.csv", cohort.models / version / "oof_predictions.csv",
                  cohort.models / version / "model.json"]
    return tuple(p.stat().st_mtime if p is not None and p.is_file() else 0.0 for p in files)


# --- the slide chooser ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlideFilter:
    """The chooser's filters: free text (slide id, label or prediction), labels, predictions, outcome."""

    text: str = ""
    labels: tuple[str, ...] = ()
    preds: tuple[str, ...] = ()
    outcome: str = ALL


def filter_slides(table: pd.DataFrame, f: SlideFilter) -> pd.DataFrame:
    """The rows of the slide table that pass the filters (outcome judged out-of-fold, see core.review.slide_table)."""
    rows = table
    text = f.text.strip().lower()
    if text:
        hay = (rows["image_id"].astype(str) + " " + rows["label"].fillna("").astype(str) + " "
               + rows["pred"].fillna("").astype(str)).str.lower()
        rows = rows[hay.str.contains(text, regex=False)]
    if f.labels:
        rows = rows[rows["label"].isin(f.labels)]
    if f.preds:
        rows = rows[rows["pred"].isin(f.preds)]
    if f.outcome == "Correct":
        rows = rows[rows["correct"].map(lambda v: v is True or v == True)]  # noqa: E712 (numpy bools)
    elif f.outcome == "Incorrect":
        rows = rows[rows["correct"].map(lambda v: v is False or v == False)]  # noqa: E712
    elif f.outcome == "Not judged":
        rows = rows[rows["correct"].isna()]
    return rows.reset_index(drop=True)


def outcome_mark(correct: object, pred_source: object) -> str:
    """✓ / ✗ for an out-of-fold judgement, '–' for a slide that is not judged."""
    if correct is None or (isinstance(correct, float) and math.isnan(correct)) or pred_source != OOF:
        return "–"
    return "✓" if bool(correct) else "✗"


def chooser_rows(rows: pd.DataFrame, thumbs: Sequence[str | None]) -> pd.DataFrame:
    """The chooser's table: thumbnail (data URL), slide id, reviewed label, out-of-fold prediction, outcome."""
    return pd.DataFrame({
        "thumb": list(thumbs),
        "slide": rows["image_id"].astype(str).to_numpy(),
        "label": rows["label"].fillna("").astype(str).to_numpy(),
        "prediction": rows["pred"].fillna("").astype(str).to_numpy(),
        "ok": [outcome_mark(c, s) for c, s in zip(rows["correct"], rows["pred_source"], strict=True)],
    }, columns=PICK_COLUMNS)


def thumbnail_data_url(path: Path, cache_dir: Path, size: int = 64) -> str | None:
    """A small JPEG thumbnail as a data URL, kept on disk under ``cache_dir/thumbs``; ``None`` when the slide
    cannot be read or has no thumbnail without a conversion (``core.slides.thumbnails.quick_thumbnail``: a list must not
    convert a cohort)."""
    from core.slides.thumbnails import quick_thumbnail

    try:
        stat = path.stat()
        out = cache_dir / "thumbs" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{size}.jpg"
        if not out.is_file():
            img = quick_thumbnail(path, size, cache_dir)
            if img is None:
                return None
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=75)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(out)
        return "data:image/jpeg;base64," + base64.b64encode(out.read_bytes()).decode()
    except (SlideLensError, OSError, ValueError):
        return None


# --- the gallery ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GalleryPatch:
    """One gallery patch: its index, level-0 box, raw value, rank (1 = most attended), share of the attention
    mass (None when the values are not a distribution) and tissue fraction (None when unknown)."""

    index: int
    x: int
    y: int
    size: int
    raw: float
    rank: int
    share: float | None
    tissue: float | None

    def caption(self, n: int) -> str:
        """'#3 of 1,204 · 4.1% of attention' (the button's text)."""
        share = "" if self.share is None else f" · {format_share(self.share)} of attention"
        return f"#{self.rank:,} of {n:,}{share}"


def format_share(share: float) -> str:
    """A share of the attention mass as a percentage with enough digits to tell small values apart."""
    pct = 100 * share
    return f"{pct:.1f}%" if pct >= 0.1 else f"{pct:.2g}%"


def patch_tissue_fractions(mask: TissueMask, coords: np.ndarray, size: int) -> np.ndarray:
    """Tissue fraction of each level-0 box (top-left ``coords``, side ``size``) from a thumbnail's tissue mask."""
    m = mask.mask
    out = np.zeros(len(coords), np.float32)
    for i, (x, y) in enumerate(np.asarray(coords, np.int64)):
        x0, y0 = int(x / mask.downsample), int(y / mask.downsample)
        x1 = max(x0 + 1, int(math.ceil((x + size) / mask.downsample)))
        y1 = max(y0 + 1, int(math.ceil((y + size) / mask.downsample)))
        cell = m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
        out[i] = float(cell.mean()) if cell.size else 0.0
    return out


def gallery_patches(values: np.ndarray, coords: np.ndarray, size: int, k: int,
                    tissue: Callable[[np.ndarray], np.ndarray] | None = None,
                    min_tissue: float = GALLERY_MIN_TISSUE) -> tuple[list[GalleryPatch], list[GalleryPatch],
                                                                       list[GalleryPatch]]:
    """(most attended, least attended, left out): the ``k`` most attended patches with at least ``min_tissue``
    tissue (``tissue(coords)`` gives fractions; near-empty ones are returned as left out), the ``k`` least."""
    v = np.asarray(values, np.float64).ravel()
    n = len(v)
    order = np.argsort(-v, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    total = float(v.sum())
    shares = v / total if n and (v >= 0).all() and total > 0 else None

    def patch(i: int, frac: float | None) -> GalleryPatch:
        return GalleryPatch(int(i), int(coords[i][0]), int(coords[i][1]), int(size), float(v[i]), int(rank[i]),
                            None if shares is None else float(shares[i]), frac)

    cand = order[:max(4 * k, k + 8)]
    fracs = tissue(np.asarray(coords)[cand]) if tissue is not None and len(cand) else None
    top: list[GalleryPatch] = []
    left_out: list[GalleryPatch] = []
    for j, i in enumerate(cand):
        frac = None if fracs is None else float(fracs[j])
        if frac is not None and frac < min_tissue:
            left_out.append(patch(i, frac))
        else:
            top.append(patch(i, frac))
        if len(top) == k:
            break
    bottom = [patch(i, None) for i in order[::-1][:k]]
    return top, bottom, left_out
