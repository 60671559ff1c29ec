"""``train``: fit a MIL head on slide labels (k-fold out-of-fold predictions + a final model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import InputError


def _tqdm_progress(desc: str):  # noqa: ANN202 - returns (callback, bar)
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def progress(frac: float, msg: str) -> None:
        bar.n = int(frac * 1000)
        bar.set_postfix_str(msg, refresh=False)
        bar.refresh()

    return progress, bar


def _epoch_printer(bar, every: int):  # noqa: ANN001, ANN202 - tqdm bar -> history callback
    """Print a fold's per-class recall line every ``every`` epochs under the bar (header once per fold)."""
    from core.model.history import FINAL_FOLD, format_epoch

    seen: set[int] = set()

    def show(row: dict) -> None:
        if every <= 0 or row["fold"] == FINAL_FOLD or row["epoch"] % every:
            return
        classes = [k.removeprefix("recall_") for k in row if k.startswith("recall_")]
        bar.write(format_epoch(row, classes, header=row["fold"] not in seen))
        seen.add(row["fold"])

    return show


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a MIL model (abmil, transmil, dsmil) on slide labels")
    p.add_argument("--features", type=Path, help="folder of <image_id>.h5 features files")
    p.add_argument("--labels", type=Path, help="labels CSV (image_id,label,...)")
    p.add_argument("--cohort", type=Path, help="cohort.toml (instead of --features/--labels/--out)")
    p.add_argument("--model", default="abmil", help="abmil | transmil | dsmil (default abmil)")
    p.add_argument("--out", type=Path, help="models folder; the model is saved in a new vNNN-<model> folder in it")
    p.add_argument("--folds", type=int, default=5, help="stratified folds for out-of-fold predictions (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: per model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--every", type=int, default=5,
                   help="print the per-class validation table every N epochs of each fold (0: never; default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.model.train import train_model

    features, labels, out, results = args.features, args.labels, args.out, None
    if args.cohort is not None:
        from core.cohort.cohort_file import load_cohort

        cohort = load_cohort(args.cohort)
        features, labels, out = features or cohort.features, labels or cohort.labels, out or cohort.models
        results = cohort.results
    if features is None or labels is None:
        raise InputError("train: give --features and --labels (or --cohort)")
    progress, bar = _tqdm_progress(f"train {args.model}")
    try:
        path = train_model(features, labels, model=args.model, out_dir=out, folds=args.folds, epochs=args.epochs,
                           seed=args.seed, progress=progress, device=args.device,
                           on_epoch=_epoch_printer(bar, args.every))
    finally:
        bar.close()
    from core.model.versions import read_model_meta

    meta = read_model_meta(path)
    m = meta["metrics"]
    print(f"saved {path} (out-of-fold balanced accuracy {m['oof_balanced_accuracy']:.3f} on {m['n_slides']} slides, "
          f"{m['n_folds']} folds; OOD threshold {meta['ood']['threshold']:.3g})")
    if meta.get("skipped_no_features"):
        print(f"left out {len(meta['skipped_no_features'])} labelled slide(s) with no features file: "
              f"{', '.join(meta['skipped_no_features'][:10])}")
    print_health(path, meta, results)
    return 0


def print_health(path: Path, meta: dict, results: Path | None) -> None:
    """One ``warning: <version>: ...`` line per health warning (core/model/health.py), then whether it is the default."""
    from core.model.health import health_warnings
    from core.model.versions import default_version

    warnings = health_warnings(meta)
    if not warnings:
        return
    version = str(meta.get("version") or path.name)
    for w in warnings:
        print(f"warning: {version}: {w}")
    chosen = default_version(path.parent, results)
    if chosen == version:
        print(f"warning: {version}: it is the default only because no healthy version exists; check the labels "
              "and features before trusting it")
    else:
        print(f"warning: {version}: not made the default (pages keep opening {chosen}); it is kept for comparison")
