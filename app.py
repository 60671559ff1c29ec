"""SlideLens: ``streamlit run app.py`` serves the pages and the tile routes on one port.

Streamlit 1.67 finds the module-level ``app`` (an ASGI ``st.App``) and serves it with uvicorn; uvicorn imports this
file as a module too, so the Streamlit body only runs inside a script run.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.cohort.cohort_file import demo_dir
from core.demo.firstrun import demo_is_complete
from core.errors import SlideLensError
from core.review.tile_guard import guard_routes
from core.viewer.tiles import register_cohort, tile_routes
from ui.auth import account_box, cookie_secret, require_sign_in
from ui.cohort_switcher import cohort_switcher
from ui.context import cohort_path, current_cohort
from ui.firstrun_view import background_banner, first_run_screen
from ui.review_panel import current_role

# Until some script calls st.navigation, Streamlit treats an app with a pages/ folder as a v1 multipage app, so
# a first visit straight to a shared link (/viewer?slide=...) would run the page without this file. Say up front
# that this app navigates with st.navigation.
PagesManager.uses_pages_directory = False
# with sign-in on ([auth] in the secrets), a tile request without a valid session gets 401 (core.review.tile_guard)
app = st.App("app.py", routes=guard_routes(tile_routes(), cookie_secret))
FAVICON = Path(__file__).resolve().parent / "ui" / "static" / "favicon.png"


def main() -> None:
    """First run (build the demo) if needed, the cohort chooser, then the navigation over the pages."""
    # a local icon: a ":material/...:" page icon makes the browser fetch an SVG from a fonts server on every page
    # initial_sidebar_state=360: the sidebar's first width in px (room for the viewer's slide list)
    st.set_page_config(page_title="SlideLens", layout="wide", page_icon=str(FAVICON), initial_sidebar_state=360)
    require_sign_in()  # sign-in mode: the sign-in screen until signed in (local mode: nothing)
    path, demo = cohort_path(), demo_dir()
    if path.parent.resolve() == demo.resolve() and not demo_is_complete(demo):
        first_run_screen(demo)  # no demo yet, or a stage (features, model, predictions) is missing
        return
    if path.parent.resolve() == demo.resolve():
        background_banner(demo)  # the rest of the demo, still being built: one quiet line over every page
    cohort_switcher()
    try:
        register_cohort(current_cohort())  # the tile routes serve this cohort's slides
        account_box(current_role(current_cohort()))  # sign-in mode: who is signed in, their role, sign out
    except SlideLensError as exc:
        st.error(str(exc))
    pages = [
        st.Page("pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True),
        st.Page("pages/viewer.py", title="Viewer", icon=":material/biotech:", url_path="viewer"),
        st.Page("pages/analysis.py", title="Error analysis", icon=":material/analytics:", url_path="analysis"),
        st.Page("pages/training.py", title="Training", icon=":material/monitoring:", url_path="training"),
        st.Page("pages/review.py", title="Review queue", icon=":material/rule:", url_path="review"),
        st.Page("pages/present.py", title="Presentations", icon=":material/slideshow:", url_path="present"),
    ]
    st.navigation(pages).run()


if get_script_run_ctx() is not None:
    main()
