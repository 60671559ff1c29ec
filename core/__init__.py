"""SlideLens core library: all logic, one package per stage of the loop; nothing here imports streamlit.

Stages, bottom to top: slides < cohort < model, viewer < analysis < review < demo < cli, bench. A module imports
only its own stage and the stages below it; ``core/errors.py`` is the leaf every stage may import
(docs/ARCHITECTURE.md; tests/test_layering.py enforces it). The pages in ``pages/`` are thin views over it.
"""

__version__ = "0.1.0"
