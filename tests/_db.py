"""The review-database backends the store tests run on: SQLite always, PostgreSQL when SLIDELENS_TEST_PG_URL names a
server (CI starts one). One place empties the shared PostgreSQL database between tests."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

PG_URL = os.environ.get("SLIDELENS_TEST_PG_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def fresh_pg(url: str = PG_URL) -> None:
    """Drop every table of the PostgreSQL test database (each test starts from an empty schema)."""
    eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.begin() as conn:
            for table in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        eng.dispose()


def fresh_url(backend: str, tmp_path: Path, name: str = "review.db") -> str:
    """A database URL with nothing in it: a new SQLite file, or the emptied PostgreSQL test database."""
    if backend == "postgresql":
        fresh_pg(PG_URL)
        return PG_URL
    return f"sqlite:///{tmp_path / name}"
