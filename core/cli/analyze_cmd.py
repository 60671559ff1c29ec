"""``analyze``: error analysis of predictions against labels, written as a folder of JSON/CSV files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="metrics, confusion, error impact and label issues for a model's predictions",
                       description="Writes metrics.json, confusion.csv, impact.csv and label_issues.csv into --out.")
    p.add_argument("--predictions", type=Path, help="predictions CSV (image_id,pred,prob_<class>...)")
    p.add_argument("--labels", type=Path, help="labels CSV (image_id,label,...)")
    p.add_argument("--cohort", type=Path, help="cohort.toml (instead of --predictions/--labels)")
    p.add_argument("--version", help="model version in the cohort (default: the latest)")
    p.add_argument("--source", choices=("oof", "final"), default="oof",
                   help="with --cohort: out-of-fold (default) or the final model's predictions")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, list[str] | None]:
    """(predictions path, labels path, model classes or None) from the arguments."""
    if args.cohort is None:
        if args.predictions is None or args.labels is None:
            raise InputError("analyze: give --predictions and --labels, or --cohort")
        return args.predictions, args.labels, None
    from core.analysis_io import model_classes, predictions_path
    from core.cohort import load_cohort
    from core.models import versions_with_predictions

    cohort = load_cohort(args.cohort)
    if cohort.labels is None:
        raise InputError(f"{cohort.source}: the cohort has no labels file")
    versions = versions_with_predictions(cohort.models, cohort.results)
    if not versions:
        raise InputError(f"{cohort.models}: no model versions with predictions yet (train a model first)")
    version = args.version or versions[-1]
    if version not in versions:
        raise InputError(f"{cohort.models}: no version {version!r} (have: {', '.join(versions)})")
    pred = args.predictions or predictions_path(cohort.models, cohort.results, version, args.source)
    return pred, args.labels or cohort.labels, model_classes(cohort.models / version)


def run(args: argparse.Namespace) -> int:
    from core.analysis_io import load_joined, write_report
    from core.labels import read_labels

    pred_path, labels_path, classes = _inputs(args)
    labels: pd.DataFrame = read_labels(labels_path).df
    df, classes = load_joined(pred_path, labels, classes)
    if not df["scored"].any():
        raise InputError(f"{pred_path}: no prediction matches a labelled slide in {labels_path}")
    with tqdm(total=100, desc="analyze", unit="%") as bar:
        def progress(frac: float, msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(round(frac * 100) - bar.n)

        written = write_report(df, classes, args.out, progress=progress)
    from core.analysis import compute_metrics

    m = compute_metrics(df, classes)
    print(f"balanced accuracy {m['balanced_accuracy']:.3f} on {m['n']} slides ({m['n_excluded']} excluded)")
    for path in written.values():
        print(f"wrote {path}")
    return 0
