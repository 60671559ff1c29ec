"""Sign-in mode's review extras: "my queue", the blind second-read form, the admin's roles / assignments /
second-read requests, and the home page's per-reviewer progress and agreement. Nothing shows in local mode."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.analysis.agreement import agreement_table
from core.errors import SlideLensError
from core.review.auth import ROLES
from core.review.store import OTHER, Store
from ui.auth import signed_in_identity
from ui.safe import md


def _role(store: Store) -> str | None:
    ident = signed_in_identity()
    return None if ident is None else store.role_of(ident)


def my_queue_filter(store: Store, queue: pd.DataFrame, queue_all: pd.DataFrame) -> pd.DataFrame:
    """Sign-in mode: an 'Only my queue' switch (on when something is assigned): the slides assigned to the user and
    their pending blind second reads (from the whole cohort, whatever the queue filters); a slide awaiting the user's
    blind second read shows no label."""
    if signed_in_identity() is None:
        return queue
    mine = store.my_queue()
    on = st.toggle(f"Only my queue ({len(mine)} assigned to me)", value=bool(mine), key="rv_my_queue")
    if on:
        queue = queue_all[queue_all["image_id"].isin(mine)].reset_index(drop=True)
    blind = store.blind_slides()
    if blind and "label" in queue.columns:
        queue = queue.copy()
        queue.loc[queue["image_id"].isin(blind), "label"] = "(blind second read)"
    return queue


def blind_read_form(store: Store, image_id: str) -> bool:
    """For a slide awaiting the user's blind second read: the form to submit it (True: the form was shown, the
    usual relabel panel is not, so the first label stays hidden)."""
    if signed_in_identity() is None or image_id not in store.blind_slides():
        return False
    st.markdown(f"#### {md(image_id)} · blind second read")
    st.info("You were asked for an independent second read: the first label is hidden until you submit yours.")
    classes = [*store.classes(), OTHER]
    with st.form(key=f"blind_{image_id}"):
        label = st.selectbox("Your label", classes, index=None, key=f"blind_{image_id}_label")
        if st.form_submit_button("Submit second read", type="primary"):
            if label is None:
                st.error("choose a label first")
            else:
                try:
                    read = store.submit_second_read(image_id, label)
                    st.success(md(f"{image_id}: second read '{label}' saved; the first read was "
                                  f"'{read.get('first_label')}' by {read.get('first_by')}"))
                except SlideLensError as exc:
                    st.error(md(exc))
    return True


def admin_panel(store: Store, slide_ids: list[str], current: str | None) -> None:
    """Admins: users and roles, assigning the slides shown to a reviewer, asking a blind second read."""
    if _role(store) != "admin":
        return
    with st.expander("Team: roles, assignments and second reads (admin)"):
        users = store.users()
        names = {int(u["id"]): str(u["email"] or u["name"] or u["subject"]) for u in users}
        st.dataframe(pd.DataFrame([{"user": names[int(u["id"])], "role": u["role"], "last seen": u["last_seen"]}
                                   for u in users]), hide_index=True)
        c = st.columns(3, vertical_alignment="bottom")
        who = c[0].selectbox("User", list(names), format_func=names.get, key="adm_user")
        role = c[1].selectbox("Role", ROLES, key="adm_role")
        if c[2].button("Set role", key="adm_set_role") and who is not None:
            _try(lambda: store.set_role(who, role), f"{names[who]} is now {role}")
        reviewers = [int(u["id"]) for u in users if u["role"] in ("reviewer", "admin")]
        c = st.columns(3, vertical_alignment="bottom")
        rv = c[0].selectbox("Reviewer", reviewers, format_func=names.get, key="adm_reviewer")
        if c[1].button(f"Assign the {len(slide_ids)} slides shown", key="adm_assign") and rv is not None:
            _try(lambda: store.assign(slide_ids, rv), f"assigned to {names[rv]}")
        if current and c[2].button(f"Ask a blind second read of {current}", key="adm_second") and rv is not None:
            _try(lambda: store.request_second_read(current, rv), f"second read of {current} asked of {names[rv]}")


def _try(fn, done: str) -> None:  # noqa: ANN001 - a no-argument callable
    try:
        fn()
        st.success(md(done))
    except SlideLensError as exc:
        st.error(md(exc))


def team_summary(store: Store | None) -> None:
    """Home page: per-reviewer progress and agreement (Cohen's kappa on doubly read slides), when there is any."""
    if store is None:
        return
    try:
        progress, reads = store.progress(), store.second_reads()
    except SlideLensError:
        return
    if not progress and not reads:
        return
    st.subheader("Reviewers")
    if progress:
        st.dataframe(pd.DataFrame(progress), hide_index=True)
    rows = agreement_table(reads)
    if rows:
        st.caption("Agreement on slides read twice (blind second reads): percent agreement and Cohen's kappa.")
        st.dataframe(pd.DataFrame(rows), hide_index=True,
                     column_config={"agreement": st.column_config.NumberColumn(format="percent"),
                                    "kappa": st.column_config.NumberColumn(format="%.2f")})
    else:
        st.caption(f"{len(reads)} blind second read(s) asked, none submitted yet.")
