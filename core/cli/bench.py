"""``bench <name>``: benchmarks, one module each in ``core/bench/`` (each writes JSON)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence

import core.bench

WANTS_ARGV = True  # benchmark modules import torch & co.: load them only for `python -m core bench ...`


def register(sub: argparse._SubParsersAction, argv: Sequence[str] | None = None) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write its figures as JSON")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH")
    bsub.required = True
    if argv is not None and (not argv or argv[0] != "bench"):
        return
    for mod in sorted(pkgutil.iter_modules(core.bench.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"core.bench.{mod.name}")
        if hasattr(module, "register"):
            module.register(bsub)
