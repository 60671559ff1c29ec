"""The sign-in screen without a browser (Streamlit's AppTest): local mode shows nothing, a provider that is down
gives one clear line (no traceback), a reachable one offers the sign-in button."""

from __future__ import annotations

from _browser import free_port
from streamlit.testing.v1 import AppTest


def _script() -> None:
    import streamlit as st

    from ui.auth import require_sign_in

    ident = require_sign_in()
    st.write(f"app body for {ident}")


def _auth(metadata_url: str) -> dict[str, str]:
    return {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "s" * 32,
            "client_id": "slidelens", "client_secret": "x", "server_metadata_url": metadata_url}


def test_local_mode_shows_the_app() -> None:
    at = AppTest.from_function(_script).run(timeout=30)
    assert not at.exception
    assert "app body for None" in at.markdown[0].value


def test_provider_down_gives_a_clear_line() -> None:
    at = AppTest.from_function(_script)
    at.secrets["auth"] = _auth(f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration")
    at.run(timeout=30)
    assert not at.exception
    shown = at.error[0].value.replace("\\", "")  # md() escapes markdown
    assert "does not answer" in shown and "127.0.0.1" in shown
    assert not [m for m in at.markdown if "app body" in m.value]
    assert [b.label for b in at.button] == ["Try again"]


def test_reachable_provider_offers_sign_in() -> None:
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread() as server:
        at = AppTest.from_function(_script)
        at.secrets["auth"] = _auth(f"http://127.0.0.1:{server.server_port}/.well-known/openid-configuration")
        at.run(timeout=30)
    assert not at.exception and not at.error
    assert [b.label for b in at.button] == ["Sign in"]
    assert not [m for m in at.markdown if "app body" in m.value]


def _team_script(url: str) -> None:
    from core.review.store import open_store
    from ui.assignments_view import team_summary

    team_summary(open_store(url))


def test_home_team_summary_shows_progress_and_kappa(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    from core.review.auth import Identity
    from core.review.store import open_store

    url = f"sqlite:///{tmp_path / 'r.db'}"
    local = AppTest.from_function(_team_script, args=(url,))
    open_store(url).sync_slides(["s1"])
    assert not local.run(timeout=30).exception and not local.subheader  # local mode: nothing shown
    store = open_store(url)
    store.set_classes(["A", "B"])
    store.sync_slides(["s1", "s2", "s3", "s4"])
    boss, ann, ben = (Identity("i", s, f"{s}@x.org") for s in ("boss", "ann", "ben"))
    store.sign_in(boss, admins=["boss@x.org"])
    admin = store.as_user(boss)
    for who in (ann, ben):
        store.sign_in(who)
    uid = {u["subject"]: int(u["id"]) for u in store.users()}
    for who in ("ann", "ben"):
        admin.set_role(uid[who], "reviewer")
    for sid, first, second in (("s1", "A", "A"), ("s2", "B", "B"), ("s3", "A", "B"), ("s4", "B", "B")):
        store.as_user(ann).set_label(sid, first, None, "", 0)
        admin.request_second_read(sid, uid["ben"])
        store.as_user(ben).submit_second_read(sid, second)
    at = AppTest.from_function(_team_script, args=(url,)).run(timeout=30)
    assert not at.exception
    assert at.subheader[0].value == "Reviewers"
    kappa = at.dataframe[1].value
    assert kappa.iloc[0]["slides read twice"] == 4 and abs(kappa.iloc[0]["kappa"] - 0.5) < 1e-9
    prog = at.dataframe[0].value.set_index("reviewer")
    assert prog.loc["ann@x.org", "slides edited"] == 4 and prog.loc["ben@x.org", "second reads done"] == 4
