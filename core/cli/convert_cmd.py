"""``convert``: build the cached pyramids of a cohort's PNG/JPEG images and other TIFFs, all at once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a cohort's PNG/JPEG/other TIFF images to cached pyramids "
                                       "(parallel, resumable)")
    p.add_argument("--cohort", type=Path, default=None, help="cohort TOML (default: $SLIDELENS_COHORT or the demo)")
    p.add_argument("--workers", type=int, default=1, help="images converted at once (each uses its share of the "
                                                          "CPU cores)")
    p.add_argument("--only", default=None, help="comma-separated image ids (default: every image not converted)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="convert on a Ray cluster, one task per image (auto: the one this machine joined, else a "
                        "one-node cluster; ADDRESS: host:port of its head); the cohort's slides and .cache must be "
                        "on storage every node sees")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.cohort.cohort_file import default_cohort_path, load_cohort
    from core.cohort.convert import convert_cohort

    cohort = load_cohort(args.cohort or default_cohort_path())
    ids = [i.strip() for i in args.only.split(",") if i.strip()] if args.only else None
    t0 = time.perf_counter()
    bar: list[tqdm] = []

    def on_start(count: int) -> None:
        bar.append(tqdm(total=count, unit="image", file=sys.stderr, desc="converting"))

    def on_done(image_id: str, error: str | None) -> None:
        if error is not None:
            tqdm.write(f"error: {error}", file=sys.stderr)
        bar[0].update(1)

    try:
        if args.ray is not None:
            from core.model.ray_jobs import convert_on_ray
            from core.model.ray_runner import connect, shutdown

            print(connect(args.ray), file=sys.stderr)
            try:
                report = convert_on_ray(cohort, ids=ids, on_done=on_done, on_start=on_start)
            finally:
                shutdown()
        else:
            report = convert_cohort(cohort, workers=max(1, args.workers), ids=ids, on_done=on_done,
                                    on_start=on_start)
    finally:
        for b in bar:
            b.close()
    wall = time.perf_counter() - t0
    print(f"converted {len(report.converted)} ({report.gigapixels:.2f} gigapixels in {wall:.0f} s), already done "
          f"{len(report.skipped)}, failed {len(report.failed)}", file=sys.stderr)
    return 1 if report.failed else 0
