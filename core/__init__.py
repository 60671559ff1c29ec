"""SlideLens core library: slides, tiling, features, MIL models, analysis and storage.

Nothing in this package imports streamlit; the pages in ``pages/`` are thin views over it.
"""

__version__ = "0.1.0"
