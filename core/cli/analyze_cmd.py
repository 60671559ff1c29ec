"""``analyze``: error analysis of predictions against labels, written as a folder of JSON/CSV files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from core.errors import InputError, SlideLensError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="metrics, confusion, error impact and label issues for a model's predictions",
                       description="Writes metrics.json, confusion.csv, impact.csv and label_issues.csv into --out.")
    p.add_argument("--predictions", type=Path, help="predictions CSV (image_id,pred,prob_<class>...), or a model / "
                   "results version folder, or a folder of versions (the newest)")
    p.add_argument("--labels", type=Path, help="labels CSV (image_id,label,...)")
    p.add_argument("--cohort", type=Path, help="cohort.toml (instead of --predictions/--labels)")
    p.add_argument("--version", help="model version in the cohort (default: the latest)")
    p.add_argument("--source", choices=("oof", "final"), default="oof",
                   help="with --cohort: out-of-fold (default) or the final model's predictions")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def _joined(args: argparse.Namespace) -> tuple[pd.DataFrame, list[str], str]:
    """(predictions joined with labels, classes, where they came from). With ``--cohort`` the labels are the
    reviewed labels of the cohort's database, as on every page; with ``--labels`` that file as it is."""
    from core.analysis.files import load_joined, resolve_predictions_arg
    from core.cohort.labels import read_labels

    if args.cohort is None:
        if args.predictions is None or args.labels is None:
            raise InputError("analyze: give --predictions and --labels, or --cohort")
        pred, note = resolve_predictions_arg(args.predictions)
        if note:
            print(note, file=sys.stderr)
        df, classes = load_joined(pred, read_labels(args.labels).df)
        return df, classes, f"{pred} against {args.labels}"
    from core.analysis.files import model_classes, predictions_path
    from core.cohort.cohort_file import load_cohort
    from core.model.versions import versions_with_predictions
    from core.review.queue import open_cohort_store
    from core.review.slide_table import version_analysis

    cohort = load_cohort(args.cohort)
    if cohort.labels is None and args.labels is None:
        raise InputError(f"{cohort.source}: the cohort has no labels file")
    versions = versions_with_predictions(cohort.models, cohort.results)
    if not versions:
        raise InputError(f"{cohort.models}: no model versions with predictions yet (train a model first)")
    version = args.version or versions[-1]
    if version not in versions:
        raise InputError(f"{cohort.models}: no version {version!r} (have: {', '.join(versions)})")
    if args.predictions is not None or args.labels is not None:  # explicit files: used as they are
        pred, note = resolve_predictions_arg(args.predictions) if args.predictions else (None, None)
        pred = pred or predictions_path(cohort.models, cohort.results, version, args.source)
        labels = args.labels or cohort.labels
        df, classes = load_joined(pred, read_labels(labels).df, model_classes(cohort.models / version))
        return df, classes, f"{pred} against {labels}"
    source = "out-of-fold" if args.source == "oof" else "final model"
    try:
        store = open_cohort_store(cohort)
    except SlideLensError as exc:  # e.g. predictions made elsewhere for a cohort without its slides here
        print(f"note: no review database ({exc}); scoring against {cohort.labels} as it is", file=sys.stderr)
        pred = predictions_path(cohort.models, cohort.results, version, args.source)
        df, classes = load_joined(pred, read_labels(cohort.labels).df, model_classes(cohort.models / version))
        return df, classes, f"{version} ({source}) against {cohort.labels}"
    df, classes = version_analysis(cohort, store, version, args.source)
    return df, classes, f"{version} ({source}) against the reviewed labels of {cohort.name}"


def run(args: argparse.Namespace) -> int:
    from core.analysis.files import write_report

    df, classes, what = _joined(args)
    if not df["scored"].any():
        raise InputError(f"{what}: no prediction matches a labelled slide")
    print(f"scoring {what}", file=sys.stderr)
    with tqdm(total=100, desc="analyze", unit="%") as bar:
        def progress(frac: float, msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(round(frac * 100) - bar.n)

        written = write_report(df, classes, args.out, progress=progress)
    from core.analysis.metrics import compute_metrics

    m = compute_metrics(df, classes)
    print(f"balanced accuracy {m['balanced_accuracy']:.3f} on {m['n']} slides ({m['n_excluded']} excluded)")
    for path in written.values():
        print(f"wrote {path}")
    return 0
