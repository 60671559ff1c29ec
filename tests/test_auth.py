"""Sign-in rules without a browser: roles checked by the store, identity in the audit, assignments, blind second
reads, Cohen's kappa, and the tile routes' 401 for missing, forged and expired sessions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _db import BACKENDS, PG_URL, fresh_pg
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from core.analysis.agreement import agreement_table, cohens_kappa
from core.errors import InputError
from core.review.auth import (
    SESSION_MAX_AGE_S,
    USER_COOKIE,
    AccessDenied,
    Identity,
    cohort_admins,
    identity_from_claims,
    session_claims,
    sign_session,
)
from core.review.store import Store, open_store
from core.review.tile_guard import guard_routes

ISS = "http://127.0.0.1:9/"
ADMIN_ID = Identity(ISS, "boss", "boss@lab.org", "Boss")
ALICE = Identity(ISS, "alice", "alice@lab.org", "Alice")
BOB = Identity(ISS, "bob", "bob@lab.org", "Bob")
EVE = Identity(ISS, "eve", "eve@lab.org", "Eve")  # never given a role: a viewer


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgresql":
        fresh_pg(PG_URL)
        st = open_store(PG_URL)
    else:
        st = open_store(f"sqlite:///{tmp_path / 'review.db'}")
    st.set_classes(["tumor", "normal"])
    st.sync_slides(["s1", "s2", "s3", "s4"])
    return st


def _ids(store: Store) -> dict[str, int]:
    return {u["subject"]: int(u["id"]) for u in store.users()}


def _team(store: Store) -> tuple[Store, Store, Store, Store]:
    """An admin (first admin from the cohort settings), reviewers alice and bob, viewer eve; their bound stores."""
    assert store.sign_in(ADMIN_ID, admins=["BOSS@lab.org"]) == "admin"
    for who in (ALICE, BOB, EVE):
        assert store.sign_in(who, admins=["boss@lab.org"]) == "viewer"  # an unknown user lands as viewer
    admin = store.as_user(ADMIN_ID)
    ids = _ids(store)
    admin.set_role(ids["alice"], "reviewer")
    admin.set_role(ids["bob"], "reviewer")
    return admin, store.as_user(ALICE), store.as_user(BOB), store.as_user(EVE)


def test_viewer_edit_is_refused_by_the_store(store: Store) -> None:
    _, _, _, eve = _team(store)
    v = store.state("s1").version
    with pytest.raises(AccessDenied, match="viewer"):
        eve.set_label("s1", "tumor", "typed name is ignored", "try", v)
    with pytest.raises(AccessDenied):
        eve.set_flag("s1", "outlier", True, None, "", v)
    assert store.state("s1").label is None and store.history("s1") == []


def test_unknown_user_is_a_viewer(store: Store) -> None:
    ghost = store.as_user(Identity(ISS, "ghost", "ghost@lab.org"))  # never signed in: not in the users table
    with pytest.raises(AccessDenied):
        ghost.set_note("s1", "hi", None, "", 0)
    assert store.role_of(Identity(ISS, "ghost")) == "viewer"


def test_reviewer_edit_is_recorded_under_the_signed_in_identity(store: Store) -> None:
    _, alice, _, _ = _team(store)
    st = alice.set_label("s1", "tumor", "Mallory (typed)", "looks like tumor", 0)
    assert st.updated_by == "alice@lab.org"
    row = store.history("s1")[-1]
    assert row.reviewer == "alice@lab.org"
    with store.engine.connect() as conn:
        key = conn.execute(text("SELECT user_key FROM audit_log WHERE id = :i"), {"i": row.id}).scalar()
    assert key == ALICE.key
    new, _ = alice.undo("s1", None, st.version)
    assert store.history("s1")[-1].reviewer == "alice@lab.org" and new.label is None


def test_roles_and_the_last_admin(store: Store) -> None:
    admin, alice, _, _ = _team(store)
    ids = _ids(store)
    with pytest.raises(AccessDenied):
        alice.set_role(ids["eve"], "admin")  # a reviewer cannot give roles
    with pytest.raises(InputError, match="last admin"):
        admin.set_role(ids["boss"], "viewer")
    with pytest.raises(InputError, match="unknown role"):
        admin.set_role(ids["eve"], "root")
    admin.set_role(ids["alice"], "admin")
    admin.set_role(ids["boss"], "reviewer")  # no longer the last admin
    assert store.role_of(ADMIN_ID) == "reviewer"
    assert store.sign_in(ADMIN_ID, admins=["boss@lab.org"]) == "reviewer"  # the database's role wins later


def test_assignments_and_my_queue(store: Store) -> None:
    admin, alice, bob, eve = _team(store)
    ids = _ids(store)
    assert admin.assign(["s2", "s1"], ids["alice"]) == 2
    assert admin.assign(["s1", "s3"], ids["alice"]) == 1
    admin.assign(["s4"], ids["bob"])
    with pytest.raises(AccessDenied):
        alice.assign(["s4"], ids["alice"])
    with pytest.raises(InputError, match="viewer"):
        admin.assign(["s4"], ids["eve"])
    with pytest.raises(InputError, match="not in the review database"):
        admin.assign(["nope"], ids["bob"])
    assert alice.my_queue() == ["s1", "s2", "s3"] and bob.my_queue() == ["s4"] and eve.my_queue() == []
    alice.set_label("s1", "tumor", None, "", 0)
    prog = {p["reviewer"]: p for p in store.progress()}
    assert prog["alice@lab.org"]["assigned"] == 3 and prog["alice@lab.org"]["assigned done"] == 1
    admin.unassign(["s2"], ids["alice"])
    assert alice.my_queue() == ["s1", "s3"]


def test_blind_second_read_hides_the_first_label_until_submission(store: Store) -> None:
    admin, alice, bob, _ = _team(store)
    ids = _ids(store)
    alice.set_label("s1", "tumor", None, "first read", 0)
    with pytest.raises(InputError, match="another reviewer"):
        admin.request_second_read("s1", ids["alice"])  # the first reader cannot second-read themselves
    admin.request_second_read("s1", ids["bob"])
    assert "s1" in bob.my_queue()
    seen = bob.state("s1")
    assert seen.label is None and seen.updated_by is None  # blind
    assert bob.states()["s1"].label is None
    assert not [r for r in bob.history("s1") if r.field == "label"]
    assert bob.second_reads()[0]["first_label"] is None
    assert alice.state("s1").label == "tumor"  # others still see it
    with pytest.raises(AccessDenied, match="blind second read"):
        bob.set_label("s1", "normal", None, "", seen.version)  # cannot overwrite the first read while blind
    with pytest.raises(InputError, match="no second read"):
        alice.submit_second_read("s1", "tumor")
    with pytest.raises(InputError, match="unknown class"):
        bob.submit_second_read("s1", "banana")
    read = bob.submit_second_read("s1", "normal")
    assert read["first_label"] == "tumor" and read["second_label"] == "normal"
    assert bob.state("s1").label == "tumor"  # after submission both reads are shown
    assert bob.second_reads()[0]["first_label"] == "tumor"
    with pytest.raises(InputError, match="already submitted"):
        bob.submit_second_read("s1", "tumor")


def test_kappa_against_a_hand_computed_case() -> None:
    # 10 slides: A/A x4, B/B x3, A/B x2, B/A x1. p_o = 0.7; first A=6 B=4, second A=5 B=5; p_e = (30+20)/100 = 0.5
    pairs = [("A", "A")] * 4 + [("B", "B")] * 3 + [("A", "B")] * 2 + [("B", "A")]
    assert cohens_kappa(pairs) == pytest.approx(0.4)
    assert cohens_kappa([]) is None
    assert cohens_kappa([("A", "A")] * 3) == 1.0
    assert cohens_kappa([("A", "B"), ("B", "A")]) == pytest.approx(-1.0)


def test_agreement_table_from_second_reads(store: Store) -> None:
    admin, alice, bob, _ = _team(store)
    ids = _ids(store)
    for sid, first, second in (("s1", "tumor", "tumor"), ("s2", "normal", "normal"), ("s3", "tumor", "normal"),
                               ("s4", "normal", "normal")):
        alice.set_label(sid, first, None, "", 0)
        admin.request_second_read(sid, ids["bob"])
        bob.submit_second_read(sid, second)
    rows = agreement_table(store.second_reads())
    # pairs: TT, NN, TN, NN -> p_o 0.75; first T2 N2, second T1 N3 -> p_e (2+6)/16 = 0.5 -> kappa 0.5
    assert rows[0]["first reader"] == "all" and rows[0]["slides read twice"] == 4
    assert rows[0]["kappa"] == pytest.approx(0.5)
    assert rows[1]["first reader"] == "alice@lab.org" and rows[1]["second reader"] == "bob@lab.org"


def test_local_mode_is_unchanged(store: Store) -> None:
    st = store.set_label("s1", "tumor", "J. Smith", "typed", 0)  # an unbound store: the typed name, no role check
    assert st.updated_by == "J. Smith"
    with pytest.raises(InputError, match="reviewer name is required"):
        store.set_label("s2", "tumor", "", "", 0)


def test_migration_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    open_store(url)
    with create_engine(url).begin() as conn:  # as if step 4 ran but was not recorded: it runs again harmlessly
        conn.execute(text("DELETE FROM schema_version WHERE version = 4"))
    st = open_store(url)
    st.sync_slides(["a"])
    assert st.sign_in(ALICE) == "viewer"


def test_cohort_admins_and_claims(tmp_path: Path) -> None:
    toml = tmp_path / "cohort.toml"
    toml.write_text('[access]\nadmins = ["Boss@Lab.org"]\n')
    assert cohort_admins(toml) == ("boss@lab.org",)
    assert cohort_admins(tmp_path / "none.toml") == ()
    assert identity_from_claims({"iss": "i", "sub": "s", "email": "e@x"}).key == "i s"
    with pytest.raises(InputError, match="subject"):
        identity_from_claims({"iss": "i"})


SECRET = "test-cookie-secret-0123456789"
CLAIMS = {"iss": ISS, "sub": "alice", "email": "alice@lab.org", "origin": "http://127.0.0.1"}


def _client() -> TestClient:
    def tile(request):  # a stand-in for a tile route
        return PlainTextResponse("tile")

    state = {"secret": SECRET}
    routes = guard_routes([Route("/tiles/{rest:path}", tile, methods=["GET"])], lambda: state["secret"])
    client = TestClient(Starlette(routes=routes))
    client.state = state  # type: ignore[attr-defined]
    return client


def test_session_cookie_checks() -> None:
    assert session_claims({USER_COOKIE: sign_session(CLAIMS, SECRET)}, SECRET)["sub"] == "alice"
    assert session_claims({}, SECRET) is None
    assert session_claims({USER_COOKIE: sign_session(CLAIMS, "another secret")}, SECRET) is None
    old = time.time() - SESSION_MAX_AGE_S - 60
    assert session_claims({USER_COOKIE: sign_session(CLAIMS, SECRET, at=old)}, SECRET) is None
    assert session_claims({USER_COOKIE: "garbage.value.here"}, SECRET) is None


def test_tiles_without_a_valid_session_get_401() -> None:
    client = _client()
    assert client.get("/tiles/s1.dzi").status_code == 401  # no cookie
    client.cookies.set(USER_COOKIE, sign_session(CLAIMS, "forged-with-a-guessed-secret"))
    assert client.get("/tiles/s1.dzi").status_code == 401
    client.cookies.set(USER_COOKIE, sign_session(CLAIMS, SECRET, at=time.time() - SESSION_MAX_AGE_S - 60))
    assert client.get("/tiles/s1.dzi").status_code == 401  # expired
    client.cookies.set(USER_COOKIE, sign_session(CLAIMS, SECRET))
    r = client.get("/tiles/s1.dzi")
    assert r.status_code == 200 and r.text == "tile"
    client.cookies.clear()
    client.state["secret"] = None  # type: ignore[attr-defined]  # local mode: no sign-in, tiles as before
    assert client.get("/tiles/s1.dzi").status_code == 200
