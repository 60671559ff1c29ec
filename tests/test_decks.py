"""Deck storage (SQLite here; PostgreSQL too when SLIDELENS_TEST_PG_URL names a server) and the plain-words text."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from _db import BACKENDS, PG_URL, fresh_pg
from sqlalchemy import inspect

from core.errors import InputError
from core.review.decks import class_names, reading_lines
from core.review.store import ConflictError, Store, open_store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgresql":
        fresh_pg(PG_URL)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'review.db'}"
    st = open_store(url)
    st.set_classes(["tumor", "normal"])
    st.sync_slides(["s1", "s2", "s3", "s4"])
    return st


def test_deck_keeps_order_and_talking_points(store: Store) -> None:
    d = store.create_deck("Tumour board 3 May", "alice")
    assert (d.version, d.image_ids) == (1, [])
    for i, sid in enumerate(["s3", "s1", "s2"]):
        d = store.add_to_deck(d.id, sid, "alice", d.version, talking_point=f"point {i}")
    assert d.image_ids == ["s3", "s1", "s2"]
    d = store.move_in_deck(d.id, "s2", 0, "bob", d.version)
    assert d.image_ids == ["s2", "s3", "s1"]
    assert [c.position for c in d.cases] == [0, 1, 2]
    d = store.move_in_deck(d.id, "s2", 99, "bob", d.version)  # clamped to the end
    assert d.image_ids == ["s3", "s1", "s2"]
    d = store.set_talking_point(d.id, "s1", "  <b>look</b> here  ", "bob", d.version)
    assert {c.image_id: c.talking_point for c in d.cases}["s1"] == "<b>look</b> here"  # stored as text
    d = store.remove_from_deck(d.id, "s3", "carol", d.version)
    assert d.image_ids == ["s1", "s2"] and [c.position for c in d.cases] == [0, 1]
    assert store.deck(d.id) == d
    hist = store.deck_history(d.id)
    assert [h.action for h in hist] == ["create", "add", "add", "add", "move", "move", "talking_point", "remove"]
    assert [h.deck_version for h in hist] == list(range(1, 9)) and d.version == 8
    assert hist[-1].reviewer == "carol" and hist[4].old_value == "2" and hist[4].new_value == "0"
    assert store.states()["s1"].version == 0 and store.history("s1") == []  # decks never touch the slides' own state


def test_deck_edits_need_the_current_version(store: Store) -> None:
    d = store.create_deck("errors", "alice")
    d2 = store.add_to_deck(d.id, "s1", "alice", d.version)
    with pytest.raises(ConflictError, match="changed since you loaded it"):
        store.add_to_deck(d.id, "s2", "bob", d.version)  # based on the old version
    assert store.deck(d.id).image_ids == ["s1"] and store.deck(d.id).version == d2.version


def test_deck_bad_input_is_one_clear_line(store: Store) -> None:
    d = store.create_deck("a", "alice")
    with pytest.raises(InputError, match="already exists"):
        store.create_deck(" a ", "bob")
    with pytest.raises(InputError, match="deck name: empty"):
        store.create_deck("  ", "bob")
    d = store.add_to_deck(d.id, "s1", "alice", d.version)
    with pytest.raises(InputError, match="already in deck"):
        store.add_to_deck(d.id, "s1", "alice", d.version)
    with pytest.raises(InputError, match="not in deck"):
        store.remove_from_deck(d.id, "s9", "alice", d.version)
    with pytest.raises(InputError, match="no such deck"):
        store.deck(999)
    with pytest.raises(InputError, match="reviewer"):
        store.add_to_deck(d.id, "s2", "", d.version)
    assert store.deck(d.id).version == 2  # nothing refused was written


def test_two_threads_editing_one_deck_exactly_one_wins(store: Store) -> None:
    d = store.create_deck("race", "alice")
    barrier, results = threading.Barrier(2), []

    def add(sid: str) -> None:
        barrier.wait()
        try:
            store.add_to_deck(d.id, sid, sid, d.version)
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=add, args=(s,)) for s in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict", "ok"]
    assert len(store.deck(d.id).cases) == 1 and len(store.deck_history(d.id)) == 2


def test_a_v3_database_gains_the_deck_tables(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    st = open_store(f"sqlite:///{db}")
    st.sync_slides(["a"])
    with sqlite3.connect(db) as conn:  # make it look like a database from before decks
        for t in ("deck_audit", "deck_cases", "decks"):
            conn.execute(f"DROP TABLE {t}")
        conn.execute("DELETE FROM schema_version WHERE version >= 4")
    st = open_store(f"sqlite:///{db}")
    assert {"decks", "deck_cases", "deck_audit"} <= set(inspect(st.engine).get_table_names())
    assert st.add_to_deck(st.create_deck("d", "x").id, "a", "x", 1).image_ids == ["a"]
    assert st.states()["a"].image_id == "a"  # the old data is kept


def test_reading_lines_plain_words() -> None:
    names = {"HGSC": "high-grade serous carcinoma", "LGSC": "low-grade serous carcinoma"}
    row = {"final_pred": "HGSC", "final_prob_HGSC": 0.87, "final_prob_LGSC": 0.13, "label": "HGSC"}
    lines, unsure, disagrees = reading_lines(row, ["HGSC", "LGSC"], names)
    assert lines[:2] == ["The model reads this slide as high-grade serous carcinoma, 87% sure.",
                         "The pathologist's diagnosis: high-grade serous carcinoma."]
    assert not unsure and not disagrees and "agrees" in lines[-1]
    row = {"final_pred": "LGSC", "final_prob_HGSC": 0.45, "final_prob_LGSC": 0.55, "label": "HGSC"}
    lines, unsure, disagrees = reading_lines(row, ["HGSC", "LGSC"], names)
    assert unsure and disagrees
    assert "unsure" in lines[1] and "high-grade serous carcinoma (45%)" in lines[1]
    assert "disagrees" in lines[-1]
    lines, unsure, _ = reading_lines({"final_pred": None, "label": None}, ["A"], {})
    assert lines == ["The model has not read this slide.", "No pathologist's diagnosis is recorded for this slide."]
    text_all = " ".join(lines).lower()
    assert not any(w in text_all for w in ("logit", "auroc", "ood", "out-of-fold"))


def test_class_names_from_the_cohort_file(tmp_path: Path) -> None:
    class C:
        source = tmp_path / "cohort.toml"

    C.source.write_text('name = "x"\n[class_names]\nHGSC = "high-grade serous carcinoma"\n')
    assert class_names(C) == {"HGSC": "high-grade serous carcinoma"}  # type: ignore[arg-type]
    C.source.write_text('name = "x"\n')
    assert class_names(C) == {}  # type: ignore[arg-type]
