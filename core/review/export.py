"""Export the reviewed labels as a labels CSV for retraining, with a manifest of where it came from.

Excluded slides are left out; outliers are kept with ``is_outlier=1`` (label as reviewed, or 'Other'), so
``LabelTable.training_rows`` drops them while the file still records them. The manifest names the audit-log
position the export was made from, so the exact state can be replayed with ``derive_state_from_audit(up_to_id)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.atomic import write_bytes_atomic
from core.cohort.cohort_file import Cohort
from core.review.store import OTHER, Store, now_iso

ProgressFn = Callable[[float, str], None]
EXPORT_COLUMNS = ["image_id", "label", "is_outlier", "second_opinion", "original_label", "reviewed_by", "note"]


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it holds."""

    path: Path
    manifest_path: Path
    rows: int
    excluded: int
    outliers: int
    changed: int
    audit_max_id: int

    def summary(self) -> str:
        return (f"wrote {self.rows} labels to {self.path} ({self.changed} changed, {self.outliers} outliers, "
                f"{self.excluded} excluded slides left out; audit position {self.audit_max_id})")


def sha256_of(path: str | Path | None) -> str | None:
    """Hex sha256 of a file, or None if there is none."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path_for(out: str | Path) -> Path:
    """``labels_v2.csv`` -> ``labels_v2.manifest.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json")


def export_table(cohort: Cohort | None, store: Store) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The export rows (sorted by image_id) and the manifest, from one consistent snapshot of the store."""
    states, max_id, reviewers = store.snapshot()
    extra = pd.DataFrame()
    if cohort is not None and cohort.labels is not None and Path(cohort.labels).is_file():
        src = pd.read_csv(cohort.labels, dtype=str, keep_default_na=False)
        keep = [c for c in src.columns if c == "image_id" or c not in {*EXPORT_COLUMNS, "exclude"}]
        extra = src[keep].drop_duplicates("image_id").set_index("image_id") if "image_id" in src else pd.DataFrame()
    original = store.source_labels()
    rows, excluded, unlabelled = [], 0, 0
    for image_id in sorted(states):
        s = states[image_id]
        if s.exclude:
            excluded += 1
            continue
        label = s.label or (OTHER if s.outlier else None)
        if not label:
            unlabelled += 1
            continue
        reviewed = s.updated_by if s.updated_by not in (None, "import") else ""
        rows.append({"image_id": image_id, "label": label, "is_outlier": int(s.outlier),
                     "second_opinion": int(s.second_opinion), "original_label": original.get(image_id) or "",
                     "reviewed_by": reviewed, "note": s.note})
    df = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    if not extra.empty and len(df):
        df = df.join(extra, on="image_id")
        df[extra.columns] = df[extra.columns].fillna("")
    changed = int((df["label"] != df["original_label"]).sum()) if len(df) else 0
    manifest = {
        "created": now_iso(), "audit_max_id": max_id, "reviewer_edits": reviewers,
        "cohort": cohort.name if cohort is not None else None,
        "cohort_file": str(cohort.source) if cohort is not None and cohort.source else None,
        "database": store.url,
        "source_labels": str(cohort.labels) if cohort is not None and cohort.labels else None,
        "source_labels_sha256": sha256_of(cohort.labels) if cohort is not None else None,
        "rows": len(df), "excluded": excluded, "unlabelled_left_out": unlabelled,
        "outliers": int(df["is_outlier"].sum()) if len(df) else 0, "changed_labels": changed,
    }
    return df, manifest


def export_labels(cohort: Cohort | None, store: Store, out: str | Path,
                  progress: ProgressFn | None = None) -> ExportResult:
    """Write the corrected labels CSV and its manifest (both atomically); returns what was written."""
    out = Path(out)
    if progress:
        progress(0.0, "reading the review database")
    df, manifest = export_table(cohort, store)
    if progress:
        progress(0.5, f"writing {len(df)} rows")
    data = df.to_csv(index=False).encode()
    manifest["labels_file"] = str(out)
    manifest["labels_sha256"] = hashlib.sha256(data).hexdigest()
    mpath = manifest_path_for(out)
    write_bytes_atomic(out, data)
    write_bytes_atomic(mpath, (json.dumps(manifest, indent=2) + "\n").encode())
    if progress:
        progress(1.0, "done")
    return ExportResult(out, mpath, len(df), manifest["excluded"], manifest["outliers"], manifest["changed_labels"],
                        manifest["audit_max_id"])
