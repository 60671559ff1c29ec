"""The database schema and its small versioned migrations (portable between SQLite and PostgreSQL).

``SCHEMA_VERSION`` is the version the code speaks; ``migrate(conn)`` brings any older database (or an empty one)
up to it, one numbered step at a time, inside the caller's transaction. The current table shapes below are the
ones queries use; each migration step writes plain DDL so an old database ends with the same columns.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 3

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, primary_key=True))

meta = Table("meta", metadata, Column("name", String(64), primary_key=True), Column("value", Text, nullable=False))

slides = Table(
    "slides", metadata,
    Column("image_id", String(255), primary_key=True),
    Column("source_label", String(255), nullable=True),  # the label as first imported
    Column("added_at", String(32), nullable=False),
)

label_state = Table(
    "label_state", metadata,
    Column("image_id", String(255), primary_key=True),
    Column("label", String(255), nullable=True),
    Column("outlier", Boolean, nullable=False, default=False),
    Column("excluded", Boolean, nullable=False, default=False),
    Column("second_opinion", Boolean, nullable=False, default=False),  # v2
    Column("note", Text, nullable=False, default=""),
    Column("version", Integer, nullable=False, default=0),  # number of audit rows of this slide
    Column("updated_at", String(32), nullable=True),
    Column("updated_by", String(255), nullable=True),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", String(255), nullable=False, index=True),
    Column("field", String(32), nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Column("reviewer", String(255), nullable=False),
    Column("changed_at", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("state_version", Integer, nullable=False),  # the slide's version after this change
    Column("model_version", String(128), nullable=True),  # v2: the model version the reviewer was looking at
    Column("undoes", Integer, nullable=True),  # v3: the audit row an undo reverts (the log itself is never changed)
    UniqueConstraint("image_id", "state_version", name="uq_audit_slide_version"),
)

model_versions = Table(
    "model_versions", metadata,
    Column("version", String(128), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("classes", Text, nullable=False),  # JSON list
    Column("created", String(32), nullable=True),
    Column("meta", Text, nullable=False),  # JSON of model.json
    Column("registered_at", String(32), nullable=False),
)

predictions = Table(  # v2
    "predictions", metadata,
    Column("model_version", String(128), primary_key=True),
    Column("image_id", String(255), primary_key=True),
    Column("pred", String(255), nullable=True),
    Column("probs", Text, nullable=False),  # JSON {class: prob}
    Column("ood_score", Float, nullable=True),
)


def _v1(conn: Connection) -> None:
    """The first schema: slides, label state (label, outlier, excluded, note), audit log, model versions."""
    stmts = [
        "CREATE TABLE IF NOT EXISTS meta (name VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS slides (image_id VARCHAR(255) PRIMARY KEY, source_label VARCHAR(255), "
        "added_at VARCHAR(32) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS label_state (image_id VARCHAR(255) PRIMARY KEY, label VARCHAR(255), "
        "outlier BOOLEAN NOT NULL DEFAULT FALSE, excluded BOOLEAN NOT NULL DEFAULT FALSE, note TEXT NOT NULL DEFAULT '', "
        "version INTEGER NOT NULL DEFAULT 0, updated_at VARCHAR(32), updated_by VARCHAR(255))",
        f"CREATE TABLE IF NOT EXISTS audit_log (id {_serial(conn)}, image_id VARCHAR(255) NOT NULL, "
        "field VARCHAR(32) NOT NULL, old_value TEXT, new_value TEXT, reviewer VARCHAR(255) NOT NULL, "
        "changed_at VARCHAR(32) NOT NULL, reason TEXT NOT NULL DEFAULT '', state_version INTEGER NOT NULL, "
        "CONSTRAINT uq_audit_slide_version UNIQUE (image_id, state_version))",
        "CREATE INDEX IF NOT EXISTS ix_audit_log_image_id ON audit_log (image_id)",
        "CREATE TABLE IF NOT EXISTS model_versions (version VARCHAR(128) PRIMARY KEY, model VARCHAR(64) NOT NULL, "
        "classes TEXT NOT NULL, created VARCHAR(32), meta TEXT NOT NULL, registered_at VARCHAR(32) NOT NULL)",
    ]
    for s in stmts:
        conn.execute(text(s))


def _v2(conn: Connection) -> None:
    """Second-opinion flag, the model version seen with each edit, and stored predictions."""
    cols = {c["name"] for c in inspect(conn).get_columns("label_state")}
    if "second_opinion" not in cols:
        conn.execute(text("ALTER TABLE label_state ADD COLUMN second_opinion BOOLEAN NOT NULL DEFAULT FALSE"))
    cols = {c["name"] for c in inspect(conn).get_columns("audit_log")}
    if "model_version" not in cols:
        conn.execute(text("ALTER TABLE audit_log ADD COLUMN model_version VARCHAR(128)"))
    conn.execute(text(
        "CREATE TABLE IF NOT EXISTS predictions (model_version VARCHAR(128) NOT NULL, image_id VARCHAR(255) NOT NULL, "
        "pred VARCHAR(255), probs TEXT NOT NULL, ood_score FLOAT, PRIMARY KEY (model_version, image_id))"))


def _v3(conn: Connection) -> None:
    """Undo: an audit row may name the row it reverts."""
    if "undoes" not in {c["name"] for c in inspect(conn).get_columns("audit_log")}:
        conn.execute(text("ALTER TABLE audit_log ADD COLUMN undoes INTEGER"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3}


def _serial(conn: Connection) -> str:
    if conn.dialect.name == "postgresql":
        return "SERIAL PRIMARY KEY"
    return "INTEGER PRIMARY KEY AUTOINCREMENT"  # AUTOINCREMENT: ids are never reused, the log stays append-only


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    row = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
    return int(row or 0)


def migrate(conn: Connection) -> tuple[int, int]:
    """Apply every missing migration step in order; returns (from_version, to_version)."""
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"))
    start = current_version(conn)
    if start > SCHEMA_VERSION:
        from core.errors import InputError

        raise InputError(f"database schema version {start} is newer than this SlideLens ({SCHEMA_VERSION}); "
                         "upgrade SlideLens")
    for v in range(start + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[v](conn)
        conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": v})
    return start, SCHEMA_VERSION
