"""Demo: the built-in demo cohort (plan, drawing, textures, preview) and the first run that builds it end to end.

May import: every stage below it: slides, cohort, model, viewer, analysis, review (and ``core.errors``).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
