"""Analysis: metrics, the label-issue ranking and the analysis files (predictions in, report out); pure functions over
predictions and labels.

May import: ``core.slides``, ``core.cohort``, ``core.model``, ``core.viewer`` (and ``core.errors``).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
