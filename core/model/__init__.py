"""Model: timm backbones, patch features, the MIL heads (``mil/``, one file per head), training, a model's health,
inference, model versions and outlier scores.

May import: ``core.slides``, ``core.cohort`` (and ``core.errors``); not ``core.viewer``, its peer.
Layers (slides < cohort < model, viewer < analysis < review < demo < cli, bench): docs/ARCHITECTURE.md;
tests/test_layering.py enforces them.
This file re-exports nothing: import from the module.
"""
