"""``cohort init`` / ``cohort show``: make and inspect cohort files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cohort.cohort_file import default_cohort_path, load_cohort
from core.cohort.cohort_init import init_cohort


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cohort", help="create or inspect a cohort file (slides, labels, features, models, database)")
    csub = p.add_subparsers(dest="cohort_command", metavar="ACTION")
    csub.required = True
    i = csub.add_parser("init", help="check slides and labels, then write a cohort TOML")
    i.add_argument("--slides", type=Path, required=True, help="slides folder (searched recursively)")
    i.add_argument("--labels", type=Path, default=None, help="labels CSV (image_id,label,...)")
    i.add_argument("--out", type=Path, required=True, help="cohort TOML to write (or a folder for cohort.toml)")
    i.add_argument("--name", default=None)
    i.add_argument("--features", type=Path, default=None, help="features folder (CLAM/TRIDENT .h5 files load as they are)")
    i.add_argument("--models", type=Path, default=None, help="folder of model versions")
    i.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite file beside the TOML)")
    i.add_argument("--default-mpp", type=float, default=None, help="mpp for slides whose file has none")
    i.add_argument("--patch", type=int, default=256)
    i.add_argument("--mpp", type=float, default=0.5, help="target mpp of the patches")
    i.add_argument("--classes", default=None, help="comma-separated allowed classes (default: from the labels)")
    i.add_argument("--strict", action="store_true", help="treat warnings (unlabelled, unreadable slides) as errors")
    i.add_argument("--no-open", action="store_true", help="do not open every slide to check it")
    i.set_defaults(func=cmd_init)
    s = csub.add_parser("show", help="print a cohort's paths and slide count")
    s.add_argument("path", type=Path, nargs="?", default=None)
    s.set_defaults(func=cmd_show)


def cmd_init(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rep, cohort = init_cohort(args.out, args.slides, args.labels, name=args.name, features=args.features,
                              models=args.models, database=args.database, default_mpp=args.default_mpp,
                              patch_size=args.patch, target_mpp=args.mpp, classes=classes, strict=args.strict,
                              open_slides=not args.no_open)
    for line in rep.lines(cohort.source if cohort is not None else None):
        print(line, file=sys.stderr if line.startswith(("error", "warning")) else sys.stdout)
    if cohort is None:
        print(f"error: {args.out}: not written ({len(rep.errors)} problem(s) above)", file=sys.stderr)
        return 2
    print(f"wrote {cohort.source or args.out}" if cohort.source else f"wrote {args.out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    c = load_cohort(args.path or default_cohort_path())
    print(c.to_toml(), end="")
    print(f"# {len(c.slide_paths)} slide(s) found")
    return 0
