"""``firstrun``: build the demo cohort end to end (what the app does on a fresh checkout): a first handful of
slides all the way through, then the rest of the cohort and the model trained on every slide."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tqdm import tqdm

from core.demo.firstrun import FirstRunStatus, run_first_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("firstrun", help="build the demo cohort: slides, features, model, predictions, database")
    p.add_argument("--out", type=Path, default=Path("data/demo"), help="cohort folder (default data/demo)")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("SLIDELENS_DEMO_TINY") == "1",
                   help="a very small cohort (tests, quick demos); also set by SLIDELENS_DEMO_TINY=1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="abmil", choices=["abmil", "transmil", "dsmil"])
    p.set_defaults(func=cmd_firstrun)


def cmd_firstrun(args: argparse.Namespace) -> int:
    bars: dict[str, tqdm] = {}
    said_ready = [False]

    def show(status: FirstRunStatus) -> None:
        if status.ready_at and not said_ready[0] and not status.done:
            said_ready[0] = True
            tqdm.write("the first slides are ready (the app opens on them); building the rest of the demo")
        for st in status.stages:
            if st.status == "pending":
                continue
            bar = bars.get(st.name)
            if bar is None:
                bar = bars[st.name] = tqdm(total=100, desc=f"{st.name:9s}", unit="%", leave=True)
            bar.n = int(round(st.fraction * 100))
            bar.set_postfix_str(f"{st.message[:64]} | ~{status.eta_seconds():.0f}s left", refresh=True)
            if st.status in ("done", "skipped", "failed") and not bar.disable:
                bar.close()
                bar.disable = True

    run_first_run(args.out, tiny=args.tiny, seed=args.seed, model=args.model, on_update=show)
    print(f"demo cohort ready: {args.out / 'cohort.toml'}")
    return 0
