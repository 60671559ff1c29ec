"""Review: the queue of slides that need a look (label issues, outliers, low confidence, second opinions),
the relabel panel with the audit history, and export / retrain on the corrected labels."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import SlideLensError
from core.model.versions import default_index, health_note, version_label
from core.review.export import export_labels
from core.review.queue import SOURCES, build_queue, filter_queue, load_model_view, model_versions, retrain
from core.review.slide_table import reviewed_labels, slide_table
from ui.assignments_view import admin_panel, blind_read_form, my_queue_filter
from ui.context import current_cohort
from ui.deck_views import add_to_deck
from ui.review_panel import cohort_store, current_role, relabel_panel, reviewer_input
from ui.safe import md

SOURCE_NAMES = {"label_issue": "Label issues", "outlier": "Likely outliers", "low_confidence": "Low confidence",
                "second_opinion": "Second opinion", "attends_outside": "Attends outside the annotated tumour"}
SORTS = {"priority": ("priority", False), "confidence (lowest first)": ("confidence", True),
         "OOD score (highest first)": ("ood_score", False), "slide id": ("image_id", True)}
TABLE_COLS = ["image_id", "label", "pred", "pred_source", "confidence", "ood_score", "reasons", "reviewed"]


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, dict[str, Any]]:
    """Background retrain jobs by database URL (survive reruns; one per cohort at a time)."""
    return {}


def _start_retrain(cohort: Any, model: str, out: Path) -> None:
    jobs = _jobs()
    job: dict[str, Any] = {"frac": 0.0, "msg": "exporting labels", "done": False, "error": None, "version": None,
                           "warning": None, "started": time.time()}
    jobs[cohort.database] = job

    def progress(frac: float, msg: str) -> None:
        job["frac"], job["msg"] = float(frac), msg

    def work() -> None:
        try:
            store = cohort_store(cohort)
            res = export_labels(cohort, store, out)
            job["msg"] = f"training {model} on {res.rows} labels"  # then its predictions and attention (retrain)
            job["version"] = retrain(cohort, store, out, model=model, progress=progress)
            job["warning"] = health_note(cohort.models, job["version"], cohort.results)  # None when healthy
        except SlideLensError as exc:
            job["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a background failure is reported in one line, never a traceback
            job["error"] = f"retrain failed: {type(exc).__name__}: {exc}"
        finally:
            job["done"] = True

    threading.Thread(target=work, name="slidelens-retrain", daemon=True).start()


@st.fragment(run_every=1.0)
def _retrain_progress(url: str) -> None:
    job = _jobs().get(url)
    if not job:
        return
    if job["done"]:
        if job["error"]:
            st.error(job["error"])
        elif job.get("warning"):
            st.warning(md(job["warning"]))
        else:
            st.success(f"New model version {job['version']} registered with its predictions and attention; "
                       "compare it on the error-analysis page.")
        return
    st.progress(min(job["frac"], 1.0), text=f"{job['msg']} ({time.time() - job['started']:.0f} s)")


def _next_slide(ids: list[str], current: str) -> None:
    """Move the selection to the slide after ``current`` in the (filtered) queue."""
    if current in ids and ids.index(current) + 1 < len(ids):
        st.session_state["rv_slide"] = ids[ids.index(current) + 1]
    elif ids:
        st.session_state["rv_slide"] = ids[0]


def _on_table_select(ids: list[str]) -> None:
    rows = (st.session_state.get("rv_table") or {}).get("selection", {}).get("rows", [])
    if rows and rows[0] < len(ids):
        st.session_state["rv_slide"] = ids[rows[0]]


def export_retrain(cohort: Any) -> None:
    """Export the reviewed labels (file + download) and retrain on them in the background."""
    with st.expander("Export and retrain", expanded=False):
        name = st.text_input("Labels file (in the cohort folder)", value="labels_reviewed.csv", key="rv_export_name")
        out = cohort.root / Path(name or "labels_reviewed.csv").name
        c1, c2 = st.columns(2)
        if c1.button("Export labels", key="rv_export"):
            try:
                res = export_labels(cohort, cohort_store(cohort), out)
                st.session_state["rv_export_done"] = res.summary()
            except SlideLensError as exc:
                st.error(str(exc))
        if st.session_state.get("rv_export_done") and out.is_file():
            st.success(st.session_state["rv_export_done"])
            c2.download_button("Download CSV", out.read_bytes(), file_name=out.name, mime="text/csv",
                               key="rv_download")
        model = st.selectbox("Model", ["abmil", "transmil", "dsmil"], key="rv_model")
        job = _jobs().get(cohort.database)
        running = bool(job and not job["done"])
        if st.button("Retrain on the reviewed labels", key="rv_retrain", disabled=running,
                     help="Exports the labels to the file above, trains a new model version in the background "
                          "and predicts every slide with it."):
            _start_retrain(cohort, model, out)
        _retrain_progress(cohort.database)


def _goto(image_id: str) -> None:
    st.session_state["rv_slide"] = image_id


def main() -> None:
    st.title("Review")
    try:
        cohort = current_cohort()
        store = cohort_store(cohort)
    except SlideLensError as exc:
        st.error(md(exc))
        return
    top = st.columns([2, 1])
    reviewer_input(top[0])
    versions = model_versions(cohort)
    version = (top[1].selectbox("Model version", versions, key="rv_version",
                                index=default_index(versions, cohort.models, cohort.results),
                                format_func=partial(version_label, cohort.models))
               if versions else None)
    try:
        view = load_model_view(cohort, version)
        queue_all = build_queue(cohort, store, version, view=view)
    except SlideLensError as exc:
        st.error(md(exc))
        return
    if not versions:
        st.info("No model yet: the queue shows second-opinion flags only. Train one with `python -m core train`.")
    f1, f2, f3, f4 = st.columns([3, 2, 2, 1], vertical_alignment="bottom")
    sources = f1.multiselect("Show", list(SOURCES), default=list(SOURCES), key="rv_sources",
                             format_func=lambda k: SOURCE_NAMES.get(k, k.replace("_", " ").capitalize()))
    sort = f2.selectbox("Sort by", list(SORTS), key="rv_sort")
    text = f3.text_input("Slide id contains", key="rv_search")
    hide = f4.checkbox("Hide reviewed", key="rv_hide_reviewed")
    queue = filter_queue(queue_all, sources, hide_reviewed=hide, text=text)
    queue = my_queue_filter(store, queue, queue_all)  # sign-in mode: "my queue", blind reads unlabelled
    col, asc = SORTS[sort]
    queue = queue.sort_values(col, ascending=asc, na_position="last", kind="stable", ignore_index=True)
    ids = queue["image_id"].tolist()
    st.caption(f"{len(queue)} of {len(queue_all)} slides in the queue ({int(queue_all['reviewed'].sum())} reviewed "
               "so far). Label = the reviewed label; prediction and confidence are out-of-fold (by a model that did "
               "not train on the slide: what errors are judged on) unless 'from' says final model.")
    st.dataframe(queue[TABLE_COLS], hide_index=True, key="rv_table", on_select=partial(_on_table_select, ids),
                 selection_mode="single-row", width="stretch", height=min(36 * (len(queue) + 1) + 2, 300),
                 column_config={"image_id": st.column_config.TextColumn("slide", width="small"),
                                "label": st.column_config.TextColumn("label (reviewed)", width="medium"),
                                "pred": st.column_config.TextColumn("prediction", width="small"),
                                "pred_source": st.column_config.TextColumn("from", width="small"),
                                "confidence": st.column_config.NumberColumn(format="%.2f", width="small"),
                                "ood_score": st.column_config.NumberColumn("OOD score", format="%.3g",
                                                                           width="small"),
                                "reasons": st.column_config.TextColumn("why in the queue", width="large"),
                                "reviewed": st.column_config.CheckboxColumn(width="small")})
    all_ids = queue_all["image_id"].tolist()
    wanted = st.query_params.get("slide")
    if wanted in all_ids and not st.session_state.get("rv_from_url"):  # /review?slide=<id> opens that slide
        st.session_state["rv_slide"], st.session_state["rv_from_url"] = wanted, True
    if st.session_state.get("rv_slide") not in all_ids:
        st.session_state["rv_slide"] = ids[0] if ids else (all_ids[0] if all_ids else None)
    options = ids + [i for i in all_ids if i not in ids]  # any slide can be reviewed, the queue comes first
    image_id = st.columns([1, 2])[0].selectbox("Slide", options, key="rv_slide",
                                               help="queue slides first, then all others")
    admin_panel(store, ids, image_id)  # sign-in mode, admins: roles, assignments, second reads
    if image_id and blind_read_form(store, image_id):
        image_id = None  # a blind second read: its form only, the first label stays hidden
    if image_id:
        row = queue_all.set_index("image_id").loc[image_id]
        pred = slide_table([image_id], reviewed_labels(store), view).iloc[0].to_dict() if view.version else None
        add_to_deck(cohort, [image_id], key="rv_deck", model_version=version)  # for presenting (ui.deck_views)
        relabel_panel(cohort, image_id, model_version=version, prediction=pred,
                      reasons=str(row["reasons"]) if pd.notna(row["reasons"]) else "",
                      on_done=partial(_next_slide, ids, image_id), key="rv", shortcuts=True,
                      ask_name=False, on_undo=_goto, wide=True)
    if current_role(cohort) in (None, "admin"):  # local mode, or an admin: export and retrain
        export_retrain(cohort)

main()
