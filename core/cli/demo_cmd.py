"""``demo``: build the synthetic demo cohort (slides, noisy labels, outliers, ground truth, cohort.toml)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from core.demo.plan import DEFAULT_CLASSES, FOCI, build_demo, plan_cohort
from core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build the synthetic demo cohort with ground truth")
    p.add_argument("--out", type=Path, default=Path("data/demo"), help="cohort folder to create (default data/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cohort")
    p.add_argument("--wsi", type=int, default=None, help="number of subtype WSIs (default 40, or 6 with --tiny)")
    p.add_argument("--tma", type=int, default=None, help="number of TMA cores (default 10, or 2 with --tiny)")
    p.add_argument("--outliers", type=int, default=None,
                   help="number of outlier WSIs of another tissue or stain (default 4, or 1 with --tiny)")
    p.add_argument("--noise", type=float, default=0.08, help="fraction of deliberately wrong labels (default 0.08)")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help="comma-separated class names, one tumour pattern each (default %(default)s)")
    p.add_argument("--foci", default="large", choices=FOCI,
                   help="tumour regime: large regions (12-38%% of a WSI's tissue, the default) or small foci "
                        "(2-6%% of a WSI's, 10-25%% of a TMA core's, a few compact islands: the hard case)")
    p.add_argument("--tumour-fraction", default=None, metavar="LO,HI",
                   help="range of each WSI's tumour share of its tissue (0 < LO <= HI < 1), instead of the regime's")
    p.add_argument("--tiny", action="store_true", help="a very small cohort for tests (seconds to build)")
    p.add_argument("--with-samples", action="store_true",
                   help="also copy the real sample slides in as unlabelled slides")
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default 2, 1 with --tiny)")
    p.set_defaults(func=cmd_demo)


def parse_fraction(text: str | None) -> tuple[float, float] | None:
    """``"0.02,0.06"`` -> (0.02, 0.06); ``InputError`` (one line) for anything else."""
    if text is None:
        return None
    parts = [t.strip() for t in text.split(",")]
    try:
        lo, hi = (float(t) for t in parts)
    except ValueError:
        raise InputError(f"--tumour-fraction: expected LO,HI (two numbers, e.g. 0.02,0.06), got {text!r}") from None
    return lo, hi


def cmd_demo(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    fraction = parse_fraction(args.tumour_fraction)
    # validate the request before a progress bar appears, so a bad option prints only its one-line error
    plan_cohort(args.seed, args.wsi, args.tma, args.outliers, args.noise, args.tiny, classes, args.foci, fraction)
    start = time.perf_counter()
    with tqdm(total=1000, unit="‰", desc="demo", bar_format="{l_bar}{bar}| {elapsed} {postfix}") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.update(max(0, int(fraction * 1000) - bar.n))
            bar.set_postfix_str(message)

        toml = build_demo(args.out, seed=args.seed, n_wsi=args.wsi, n_tma=args.tma, n_outliers=args.outliers,
                          noise=args.noise, tiny=args.tiny, include_samples=args.with_samples, progress=progress,
                          classes=classes, workers=args.workers, foci=args.foci, tumour_fraction=fraction)
    print(f"wrote {toml} in {time.perf_counter() - start:.1f} s")
    return 0
