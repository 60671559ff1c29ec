"""Training: per-class validation curves of every training run, side by side, and ensembles built in two clicks.

``/training?model=<version>[&compare=<version>]`` restores the view.
"""

from __future__ import annotations

from urllib.parse import quote

import streamlit as st

from core.errors import SlideLensError
from core.model.ensemble import Member, build_ensemble, fold_members
from core.model.history import read_history
from core.model.versions import health_note, is_ensemble, list_versions
from ui import training_views as tv
from ui.context import current_cohort
from ui.safe import md

METRICS = ["recall", "precision", "f1"]


def _to_url(param: str, key: str) -> None:
    value = st.session_state[key]
    if value:
        st.query_params[param] = value
    else:
        st.query_params.pop(param, None)


def _pick(label: str, options: list[str], param: str, key: str, default: str | None, where) -> str | None:
    wanted = st.query_params.get(param)
    if wanted is not None and wanted not in options:
        st.warning(md(f"no training history for '{wanted}' in this cohort"))
        wanted = None
    st.session_state[key] = wanted or st.session_state.get(key, default)
    if st.session_state[key] not in options:
        st.session_state[key] = default
    return where.selectbox(label, options, key=key, on_change=_to_url, args=(param, key),
                           format_func=lambda v: "(none)" if v is None else v)


def ensemble_builder(models_dir, versions: list[dict], results_dir=None) -> None:
    """Two clicks: pick versions (or one run's fold models) and a method, then build."""
    plain = [m["version"] for m in versions if not is_ensemble(m)]
    st.subheader("Build an ensemble")
    st.caption("Registered as a new model version: open it on the analysis page and compare it with each member.")
    c1, c2, c3 = st.columns([3, 1, 1])
    picked = c1.multiselect("Members", plain, default=plain[-3:] if len(plain) >= 2 else plain, key="tr_members")
    method = c2.radio("Method", ["soft", "hard"], key="tr_method", horizontal=True,
                      help="soft: mean probabilities; hard: majority vote, ties broken by the mean probability")
    folds_of = c3.toggle("Fold models of one run", key="tr_folds",
                         help="the k fold models of the first selected version instead of the versions")
    if st.button("Build ensemble", key="tr_build", type="primary", disabled=not picked):
        try:
            members = fold_members(models_dir, picked[0]) if folds_of else [Member(v) for v in picked]
            with st.spinner("combining the members' out-of-fold predictions"):
                path = build_ensemble(models_dir, members, method)
            st.session_state["tr_built"] = path.name
        except SlideLensError as exc:
            st.error(md(str(exc)))
    built = st.session_state.get("tr_built")
    if built:
        note = health_note(models_dir, built, results_dir)  # None when healthy (core/model/health.py)
        if note:
            st.warning(md(f"saved ensemble: {note}"))
        else:
            st.success(md(f"saved ensemble {built}"))
        # a plain relative link: the version name is ours (vNNN-ensemble), quoted all the same
        st.markdown(f"[Open {md(built)} in error analysis](analysis?model={quote(built)}) to compare it with each "
                    "member")


def main() -> None:
    st.title("Training")
    try:
        cohort = current_cohort()
        versions = list_versions(cohort.models)
    except SlideLensError as exc:
        st.error(md(str(exc)))
        return
    hists = {}
    for m in versions:
        try:
            h = read_history(cohort.models / m["version"])
        except SlideLensError as exc:
            st.warning(md(str(exc)))
            continue
        if h is not None:
            hists[m["version"]] = (m, h)
    if not hists:
        st.info("No training history yet: train a model (`python -m core train --cohort cohort.toml`); versions "
                "trained before histories were kept, and ensembles, have none.")
    else:
        names = list(hists)
        c1, c2, c3 = st.columns([2, 2, 1])
        version = _pick("Model version", names, "model", "tr_version", names[-1], c1)
        compare = _pick("Side by side with", [None, *[n for n in names if n != version]], "compare", "tr_compare",
                        None, c2)
        metric = c3.selectbox("Per-class metric", METRICS, key="tr_metric")
        shown = [v for v in (version, compare) if v]
        for col, v in zip(st.columns(len(shown)), shown, strict=True):
            with col:
                tv.version_panel(v, hists[v][0], hists[v][1], metric, key=f"tr_{len(shown)}_{shown.index(v)}")
    if len([m for m in versions if not is_ensemble(m)]) >= 1:
        ensemble_builder(cohort.models, versions, cohort.results)


main()
