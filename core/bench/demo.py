"""``bench demo``: how long the demo cohort takes to build (wall and CPU time), against the 2-minute target.

CPU time includes the drawing processes, so a figure taken on a busy shared machine can still be read: on an
idle machine with ``workers`` cores the wall time is about ``cpu_s / workers``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from core.bench._util import write_json
from core.demo.plan import build_demo, plan_cohort

TARGET_S = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="time building the demo cohort (JSON)")
    p.add_argument("--out", type=Path, default=None, help="build here and keep it (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="time the tiny test cohort instead")
    p.add_argument("--repeat", type=int, default=1, help="builds to time (median reported)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", dest="json_out", help="also write the result here")
    p.set_defaults(func=cmd_bench_demo)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cmd_bench_demo(args: argparse.Namespace) -> int:
    planned = plan_cohort(args.seed, tiny=args.tiny)
    mpx = sum(p.plan.width * p.plan.height for p in planned) / 1e6
    walls, cpus = [], []
    load = os.getloadavg()[0]
    for _ in range(max(1, args.repeat)):
        tmp = None
        out = args.out
        if out is None:
            tmp = Path(tempfile.mkdtemp(prefix="slidelens-bench-demo-"))
            out = tmp / "demo"
        c0, t0 = _cpu(), time.perf_counter()
        build_demo(out, seed=args.seed, tiny=args.tiny, workers=args.workers)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    workers = args.workers or (1 if args.tiny else 2)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    write_json({
        "bench": "demo", "tiny": args.tiny, "slides": len(planned), "megapixels_level0": round(mpx, 1),
        "workers": workers, "load_average_at_start": round(load, 2),
        "wall_s_median": round(wall, 2), "cpu_s_median": round(cpu, 2),
        "idle_wall_estimate_s": round(cpu / workers, 2), "megapixels_per_cpu_s": round(mpx / cpu, 2),
        "target_s": TARGET_S, "meets_target_wall": wall < TARGET_S,
        "meets_target_idle_estimate": cpu / workers < TARGET_S, "walls_s": [round(w, 2) for w in walls],
    }, args.json_out)
    return 0
