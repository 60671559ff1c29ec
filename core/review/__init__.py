"""Review: the store (schema, types), the review queue, export, the slide table (one rule for label and prediction on
every page) and the home-page summary.

May import: ``core.slides``, ``core.cohort``, ``core.model``, ``core.viewer``, ``core.analysis`` (and ``core.errors``).
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
