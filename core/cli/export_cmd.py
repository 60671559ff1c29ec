"""``export``: write the reviewed labels (excluded slides left out, outliers marked) and a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from core.cohort.cohort_file import default_cohort_path, load_cohort
from core.review.export import export_labels
from core.review.queue import open_cohort_store
from core.review.store import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the reviewed labels CSV (+ .manifest.json) for retraining")
    p.add_argument("--cohort", type=Path, default=None, help="cohort TOML (default: $SLIDELENS_COHORT or the demo)")
    p.add_argument("--out", type=Path, required=True, help="labels CSV to write, e.g. labels_v2.csv (a folder: labels_reviewed.csv in it)")
    p.add_argument("--db", default=None, help="database URL (default: the cohort's)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    cohort = load_cohort(args.cohort or default_cohort_path())
    store = open_store(args.db) if args.db else open_cohort_store(cohort)
    with tqdm(total=100, desc="export", unit="%", leave=False) as bar:
        def progress(f: float, msg: str) -> None:
            bar.n = int(f * 100)
            bar.set_postfix_str(msg)
            bar.refresh()

        out = args.out
        if out.is_dir():
            out = out / "labels_reviewed.csv"
            print(f"{args.out} is a folder: writing {out}", file=sys.stderr)
        res = export_labels(cohort, store, out, progress=progress)
    print(res.summary())
    print(f"manifest: {res.manifest_path}")
    return 0
