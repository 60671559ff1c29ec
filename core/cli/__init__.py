"""Command-line entry point. Each module in this package registers its own subcommands.

A module defines ``register(sub: argparse._SubParsersAction) -> None`` that adds parsers and sets
``func=<callable(args) -> int>`` as default; modules are discovered, so commands live next to their topic.

May import: every stage, and ``core.bench`` (its peer: the command line mounts the benchmarks).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from core.errors import SlideLensError


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """All commands; ``argv`` lets costly command groups (benchmarks) load only when they are asked for."""
    parser = argparse.ArgumentParser(prog="python -m core", description="SlideLens batch commands.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if hasattr(module, "register"):
            if getattr(module, "WANTS_ARGV", False):
                module.register(sub, argv)
            else:
                module.register(sub)
    from core.cli.examples import add_examples

    add_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line on stderr and exit with code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SlideLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
