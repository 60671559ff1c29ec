"""``ensemble``: register an ensemble of model versions (or of one run's fold models) as a new model version."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="combine model versions (soft or hard voting) into a new model version")
    p.add_argument("--versions", default=None,
                   help="comma-separated versions: v001,v003 or v001-abmil,v002-transmil (a fold model: v001/fold2)")
    p.add_argument("--folds-of", default=None, help="a version whose k fold models form the ensemble")
    p.add_argument("--method", choices=("soft", "hard"), default="soft",
                   help="soft: mean probabilities; hard: majority vote, ties broken by the mean probability")
    p.add_argument("--models", type=Path, default=None, help="models folder holding the members")
    p.add_argument("--cohort", type=Path, default=None, help="cohort.toml (its models folder)")
    p.add_argument("--out", type=Path, default=None, help="models folder for the ensemble (default: the members')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.model.ensemble import build_ensemble, fold_members, parse_members
    from core.model.versions import read_model_meta

    models = args.models
    if args.cohort is not None:
        from core.cohort.cohort_file import load_cohort

        models = models or load_cohort(args.cohort).models
    if models is None:
        raise InputError("ensemble: give --models DIR or --cohort cohort.toml")
    if (args.versions is None) == (args.folds_of is None):
        raise InputError("ensemble: give either --versions v001,v002,... or --folds-of v001")
    members = (fold_members(models, args.folds_of) if args.folds_of is not None
               else parse_members(models, args.versions.split(",")))
    path = build_ensemble(models, members, args.method, args.out)
    m = read_model_meta(path)["metrics"]
    each = ", ".join(f"{k} {v:.3f}" for k, v in m.get("member_oof_balanced_accuracy", {}).items())
    bal = m.get("oof_balanced_accuracy")
    print(f"saved {path} ({args.method} vote of {len(members)} members; out-of-fold balanced accuracy "
          f"{'n/a' if bal is None else f'{bal:.3f}'} on {m['n_slides']} slides; members: {each or 'n/a'})")
    return 0
