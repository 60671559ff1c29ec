"""``infer``: predictions.csv and attention/<image_id>.h5 for every slide with features (cached)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="predict slides with a trained model (probabilities, attention, OOD score)")
    p.add_argument("--model", type=Path, help="model folder (models/vNNN-<model>), or a folder of versions (the newest)")
    p.add_argument("--features", type=Path, help="folder of <image_id>.h5 features files")
    p.add_argument("--out", type=Path, help="output folder for predictions.csv and attention/")
    p.add_argument("--cohort", type=Path, help="cohort.toml: results go to <results>/<version>/")
    p.add_argument("--version", default=None, help="model version with --cohort (default: the latest)")
    p.add_argument("--force", action="store_true", help="recompute slides that are already done")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--mc-samples", type=int, default=0, metavar="K",
                   help="Monte-Carlo dropout: average K draws with dropout on; adds the spread as 'uncertainty'")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="predict on a Ray cluster (auto: the one this machine joined, else a one-node cluster; "
                        "ADDRESS: host:port of its head; --device cuda: one model per GPU); the model, features and "
                        "output folders must be on storage every node sees")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.cli.train_cmd import _tqdm_progress
    from core.cohort.settings import resolve_device
    from core.model.infer import infer_features, load_model
    from core.model.versions import resolve_model_arg, resolve_model_dir

    if args.cohort is not None:
        from core.cohort.cohort_file import load_cohort

        cohort = load_cohort(args.cohort)
        model_dir, note = resolve_model_arg(args.model) if args.model else \
            (resolve_model_dir(cohort.models, args.version), None)
        if note:
            print(note, file=sys.stderr)
        features = args.features or cohort.features
        loaded = load_model(model_dir, mc_samples=args.mc_samples, device="cpu" if args.ray else resolve_device(args.device))
        out = args.out or Path(cohort.results) / loaded.version
    else:
        if args.model is None or args.features is None or args.out is None:
            raise InputError("infer: give --model, --features and --out (or --cohort)")
        model_dir, note = resolve_model_arg(args.model)
        if note:
            print(note, file=sys.stderr)
        loaded = load_model(model_dir, mc_samples=args.mc_samples, device="cpu" if args.ray else resolve_device(args.device))
        features, out = args.features, args.out
    if args.ray is not None:
        return _infer_on_ray(args, loaded, features, out)
    progress, bar = _tqdm_progress(f"infer {loaded.version}")
    try:
        df = infer_features(loaded, features, out, progress=progress, force=args.force)
    finally:
        bar.close()
    n_out = int((df["ood_score"] > (loaded.meta.get("ood") or {}).get("threshold", float("inf"))).sum())
    print(f"{len(df)} slide(s) in {out / 'predictions.csv'}; {n_out} over the OOD threshold ('Other?')")
    return 0


def _infer_on_ray(args: argparse.Namespace, loaded: object, features: Path, out: Path) -> int:
    """``infer --ray``: core/model/ray_jobs.py, with a summary; non-zero exit if a slide failed."""
    from core.model.ray_jobs import infer_on_ray
    from core.model.ray_runner import shutdown

    try:
        report = infer_on_ray(loaded, features, out, address=args.ray, force=args.force, device=args.device,
                              bars=True)
    finally:
        shutdown()
    print(f"predicted {len(report.written)}, already done {len(report.skipped)}, failed {len(report.failed)}, "
          f"retried {len(report.retries)} time(s) after worker failures -> {out / 'predictions.csv'}", file=sys.stderr)
    for image_id, reason in report.failed.items():
        print(f"error: {image_id}: {reason}", file=sys.stderr)
    return 2 if report.failed else 0
