"""The labels file: ``image_id,label`` plus any extra columns, validated as a whole before use.

Classes come from the file (sorted unique labels) unless a fixed class list is given (a trained model's).
Rows with ``is_outlier`` true or an ``exclude`` flag are kept in the table but left out of ``training_rows``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.errors import InputError

REQUIRED = ("image_id", "label")
TRUTHY = {"1", "true", "yes", "y", "t"}
# UBC-OCEAN's train.csv: image_id,label,image_width,image_height,is_tma
TMA_MPP, WSI_MPP = 0.25, 0.5  # TMA cores scanned at 40x, whole slides at 20x


@dataclass(frozen=True)
class LabelTable:
    """A validated labels table and its class list (index = class id)."""

    df: pd.DataFrame
    classes: tuple[str, ...]
    path: Path | None = None

    def training_rows(self) -> pd.DataFrame:
        """Rows to train on: labelled, in the class list, not outliers, not excluded."""
        df = self.df[self.df["label"].isin(self.classes)]
        for col in ("is_outlier", "exclude"):
            if col in df.columns:
                df = df[~df[col].map(_truthy)]
        return df


def _truthy(v: object) -> bool:
    return str(v).strip().lower() in TRUTHY


def read_labels(path: str | Path, *, classes: Iterable[str] | None = None,
                slide_ids: Iterable[str] | None = None, ignore_classes: Iterable[str] = ("Other",)) -> LabelTable:
    """Read and validate a labels CSV, raising ``InputError`` that lists every bad row (nothing half-used).

    ``classes``: the allowed classes (e.g. a model's); labels outside it are errors. ``slide_ids``: ids that
    exist in the cohort; labels for other ids are errors. ``ignore_classes`` are allowed but never trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    try:
        df = pd.read_csv(path, dtype={"image_id": str, "label": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need image_id,label)")
    df["image_id"] = df["image_id"].astype(str).str.strip()
    df["label"] = df["label"].astype(str).str.strip()
    problems: list[str] = []
    empty_ids = df.index[df["image_id"] == ""].tolist()
    if empty_ids:
        problems.append(f"empty image_id on line(s) {_rows(empty_ids)}")
    dups = df[df["image_id"].duplicated(keep=False) & (df["image_id"] != "")]
    for image_id, grp in dups.groupby("image_id"):
        problems.append(f"duplicate id {image_id!r} on lines {_rows(grp.index)}")
    ignore = set(ignore_classes)
    if classes is not None:
        allowed = set(classes) | ignore
        bad = df[(df["label"] != "") & ~df["label"].isin(allowed)]
        for label, grp in bad.groupby("label"):
            problems.append(f"unknown class {label!r} on line(s) {_rows(grp.index)} "
                            f"(known: {', '.join(sorted(set(classes)))})")
        class_list = tuple(classes)
    else:
        class_list = tuple(sorted(set(df["label"]) - ignore - {""}))
    if slide_ids is not None:
        known = set(slide_ids)
        orphan = df[~df["image_id"].isin(known) & (df["image_id"] != "")]
        if len(orphan):
            problems.append(f"{len(orphan)} id(s) with no slide: {', '.join(orphan['image_id'].head(5))}"
                            f"{' ...' if len(orphan) > 5 else ''} (lines {_rows(orphan.index)})")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))
    if not class_list:
        raise InputError(f"{path}: no labelled rows")
    return LabelTable(df.reset_index(drop=True), class_list, path)


def _rows(index: Iterable[int], limit: int = 8) -> str:
    """File line numbers of data rows (line 1 is the header)."""
    nums = [str(i + 2) for i in index]  # +1 for the header, +1 for 1-based lines
    return ", ".join(nums[:limit]) + (" ..." if len(nums) > limit else "")


def _columns(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """Just ``image_id`` and ``columns`` of a labels CSV, or None when the file or a column is missing."""
    try:
        head = pd.read_csv(path, nrows=0)
        if "image_id" not in head.columns or not set(columns) <= set(head.columns):
            return None
        df = pd.read_csv(path, usecols=["image_id", *columns], dtype={"image_id": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None
    df["image_id"] = df["image_id"].astype(str).str.strip()
    return df


def mpps_from_labels(path: str | Path | None) -> dict[str, float]:
    """UBC-OCEAN style: each slide's mpp from an ``is_tma`` column (0.25 for TMA cores at 40x, 0.5 for whole slides
    at 20x); {} when the file has no such column or cannot be read (``read_labels`` reports why)."""
    df = _columns(path, ("is_tma",)) if path is not None else None
    if df is None:
        return {}
    out: dict[str, float] = {}
    for image_id, flag in zip(df["image_id"], df["is_tma"], strict=True):
        text = str(flag).strip().lower()
        if image_id and text in TRUTHY | {"0", "false", "no", "n", "f"}:
            out[image_id] = TMA_MPP if text in TRUTHY else WSI_MPP
    return out


def sizes_from_labels(path: str | Path | None) -> dict[str, tuple[int, int]]:
    """UBC-OCEAN style: each slide's (width, height) from ``image_width`` and ``image_height`` columns, or {}."""
    df = _columns(path, ("image_width", "image_height")) if path is not None else None
    if df is None:
        return {}
    w = pd.to_numeric(df["image_width"], errors="coerce")
    h = pd.to_numeric(df["image_height"], errors="coerce")
    return {i: (int(a), int(b)) for i, a, b in zip(df["image_id"], w, h, strict=True) if i and a > 0 and b > 0}
