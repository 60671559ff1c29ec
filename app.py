"""SlideLens: ``streamlit run app.py`` serves the pages and the tile routes on one port.

Streamlit 1.67 finds the module-level ``app`` (an ASGI ``st.App``) and serves it with uvicorn; uvicorn imports this
file as a module too, so the Streamlit body only runs inside a script run.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.tiles import tile_routes

app = st.App("app.py", routes=tile_routes())


def main() -> None:
    """The navigation over the pages."""
    st.set_page_config(page_title="SlideLens", layout="wide")
    pages = [st.Page("pages/viewer.py", title="Viewer", icon=":material/biotech:", url_path="viewer")]
    st.navigation(pages).run()


if get_script_run_ctx() is not None:
    main()
