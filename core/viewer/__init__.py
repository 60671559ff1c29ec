"""Viewer: the Deep Zoom and attention-overlay tile routes, attention layers and overlay rasterising.

May import: ``core.slides``, ``core.cohort`` (and ``core.errors``); not ``core.model``, its peer.
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
