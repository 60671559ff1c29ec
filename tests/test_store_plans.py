"""The review database answers a slide's questions through indexes (query plans on SQLite and PostgreSQL), so pages
stay fast at thousands of slides: a slide's state, its audit history, a model version's predictions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _db import BACKENDS, fresh_url
from sqlalchemy import text

from core.review.store import open_store

QUERIES = {
    "state of one slide": "SELECT * FROM label_state WHERE image_id = 's00042'",
    "history of one slide": "SELECT * FROM audit_log WHERE image_id = 's00042' ORDER BY id",
    "predictions of a version": "SELECT * FROM predictions WHERE model_version = 'v001-abmil'",
}


@pytest.fixture(params=BACKENDS)
def big_store(request: pytest.FixtureRequest, tmp_path: Path):
    store = open_store(fresh_url(request.param, tmp_path, "plans.db"))
    store.set_classes(["a", "b"])
    ids = [f"s{k:05d}" for k in range(2000)]
    store.sync_slides(ids)
    for image_id in ids[:50]:
        store.set_label(image_id, "a", "ann", "plan test", store.state(image_id).version)
    store.record_predictions("v001-abmil", pd.DataFrame({"image_id": ids, "pred": "a", "prob_a": 0.9, "prob_b": 0.1}))
    return request.param, store


def test_slide_queries_use_indexes(big_store) -> None:
    backend, store = big_store
    with store.engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(text("ANALYZE"))
            conn.execute(text("SET enable_seqscan = off"))  # a plan that still scans has no index to use
        for what, sql in QUERIES.items():
            prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
            plan = " ".join(str(r[-1]) for r in conn.execute(text(prefix + sql)))
            if backend == "sqlite":
                assert "USING INDEX" in plan or "USING PRIMARY KEY" in plan or "USING COVERING INDEX" in plan, \
                    f"{what}: {plan}"
            else:
                assert "Index" in plan and "Seq Scan" not in plan, f"{what}: {plan}"
