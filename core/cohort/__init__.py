"""Cohort: the cohort file, the labels file, settings, and ``cohort init``.

May import: ``core.slides`` (and ``core.errors``).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
