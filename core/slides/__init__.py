"""Slides: one ``Slide`` facade over every format OpenSlide reads and plain images, direct TIFF reads, pyramids for
plain images, tissue detection and the patch grid.

May import: nothing else of ``core`` but ``core.errors``: this is the bottom stage.
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
