"""Benchmarks: each module defines ``register(sub)`` adding ``python -m core bench <name>``.

May import: every stage, and ``core.cli`` (its peer: benchmarks reuse command helpers).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
"""
