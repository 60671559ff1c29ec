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

SCHEMA_VERSION = 6  # the highest step in MIGRATIONS (steps may land out of order: each is idempotent)

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
    Column("user_key", String(520), nullable=True),  # v4: the signed-in user (issuer + subject), None in local mode
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


decks = Table(  # v5
    "decks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("model_version", String(128), nullable=True),  # the model whose attention is drawn (None = latest)
    Column("version", Integer, nullable=False, default=0),  # number of deck_audit rows of this deck
    Column("created_at", String(32), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("updated_at", String(32), nullable=True),
    Column("updated_by", String(255), nullable=True),
)

deck_cases = Table(  # v5
    "deck_cases", metadata,
    Column("deck_id", Integer, primary_key=True),
    Column("image_id", String(255), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("talking_point", Text, nullable=False, default=""),
    Column("added_at", String(32), nullable=False),
    Column("added_by", String(255), nullable=False),
)

deck_audit = Table(  # v5: every deck edit, append-only (the slides' audit_log is keyed by slide)
    "deck_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deck_id", Integer, nullable=False),
    Column("action", String(32), nullable=False),
    Column("image_id", String(255), nullable=True),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Column("reviewer", String(255), nullable=False),
    Column("changed_at", String(32), nullable=False),
    Column("deck_version", Integer, nullable=False),
    UniqueConstraint("deck_id", "deck_version", name="uq_deck_audit_version"),
)
users = Table(  # v4: signed-in users, keyed by issuer + subject; the role lives here
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("issuer", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("email", String(255), nullable=False, default=""),
    Column("name", String(255), nullable=False, default=""),
    Column("role", String(16), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("last_seen", String(32), nullable=True),
    UniqueConstraint("issuer", "subject", name="uq_users_identity"),
)

assignments = Table(  # v4: slides an admin gave a reviewer to read
    "assignments", metadata,
    Column("image_id", String(255), primary_key=True),
    Column("user_id", Integer, primary_key=True),
    Column("assigned_by", String(255), nullable=False),
    Column("assigned_at", String(32), nullable=False),
)

second_reads = Table(  # v4: blind second reads; the first label is kept here, hidden from the second reader
    "second_reads", metadata,
    Column("image_id", String(255), primary_key=True),
    Column("reader_id", Integer, nullable=False),
    Column("first_label", String(255), nullable=True),
    Column("first_by", String(255), nullable=True),
    Column("requested_by", String(255), nullable=False),
    Column("requested_at", String(32), nullable=False),
    Column("second_label", String(255), nullable=True),
    Column("submitted_at", String(32), nullable=True),
)

annotations = Table(  # v6: region annotations drawn on a slide (``core.review.annotations``)
    "annotations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", String(255), nullable=False, index=True),
    Column("geometry", Text, nullable=False),  # GeoJSON geometry in level-0 pixel coordinates
    Column("class_name", String(255), nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("author", String(255), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("updated_by", String(255), nullable=False),
    Column("version", Integer, nullable=False, default=1),  # number of annotation_audit rows of this annotation
)

annotation_audit = Table(  # v6: every annotation create/edit/delete, append-only, with the whole record after
    "annotation_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("annotation_id", Integer, nullable=False),
    Column("image_id", String(255), nullable=False, index=True),
    Column("action", String(16), nullable=False),  # create | edit | delete
    Column("old_value", Text, nullable=True),  # JSON record before (None for create)
    Column("new_value", Text, nullable=True),  # JSON record after (None for delete)
    Column("reviewer", String(255), nullable=False),
    Column("changed_at", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("ann_version", Integer, nullable=False),
    UniqueConstraint("annotation_id", "ann_version", name="uq_annotation_audit_version"),
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


def _v5(conn: Connection) -> None:
    """Decks of cases for presenting to clinicians (``core.review.decks``): a deck, its ordered cases, its own audit log."""
    stmts = [
        f"CREATE TABLE IF NOT EXISTS decks (id {_serial(conn)}, name VARCHAR(255) NOT NULL UNIQUE, "
        "model_version VARCHAR(128), version INTEGER NOT NULL DEFAULT 0, created_at VARCHAR(32) NOT NULL, "
        "created_by VARCHAR(255) NOT NULL, updated_at VARCHAR(32), updated_by VARCHAR(255))",
        "CREATE TABLE IF NOT EXISTS deck_cases (deck_id INTEGER NOT NULL, image_id VARCHAR(255) NOT NULL, "
        "position INTEGER NOT NULL, talking_point TEXT NOT NULL DEFAULT '', added_at VARCHAR(32) NOT NULL, "
        "added_by VARCHAR(255) NOT NULL, PRIMARY KEY (deck_id, image_id))",
        f"CREATE TABLE IF NOT EXISTS deck_audit (id {_serial(conn)}, deck_id INTEGER NOT NULL, "
        "action VARCHAR(32) NOT NULL, image_id VARCHAR(255), old_value TEXT, new_value TEXT, "
        "reviewer VARCHAR(255) NOT NULL, changed_at VARCHAR(32) NOT NULL, deck_version INTEGER NOT NULL, "
        "CONSTRAINT uq_deck_audit_version UNIQUE (deck_id, deck_version))",
    ]
    for s in stmts:
        conn.execute(text(s))


def _v4(conn: Connection) -> None:
    """Sign-in: users and roles, assignments, blind second reads, and the signed-in user of each audit row."""
    if "user_key" not in {c["name"] for c in inspect(conn).get_columns("audit_log")}:
        conn.execute(text("ALTER TABLE audit_log ADD COLUMN user_key VARCHAR(520)"))
    for s in (
        f"CREATE TABLE IF NOT EXISTS users (id {_serial(conn)}, issuer VARCHAR(255) NOT NULL, "
        "subject VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL DEFAULT '', name VARCHAR(255) NOT NULL DEFAULT '', "
        "role VARCHAR(16) NOT NULL, created_at VARCHAR(32) NOT NULL, last_seen VARCHAR(32), "
        "CONSTRAINT uq_users_identity UNIQUE (issuer, subject))",
        "CREATE TABLE IF NOT EXISTS assignments (image_id VARCHAR(255) NOT NULL, user_id INTEGER NOT NULL, "
        "assigned_by VARCHAR(255) NOT NULL, assigned_at VARCHAR(32) NOT NULL, PRIMARY KEY (image_id, user_id))",
        "CREATE TABLE IF NOT EXISTS second_reads (image_id VARCHAR(255) PRIMARY KEY, reader_id INTEGER NOT NULL, "
        "first_label VARCHAR(255), first_by VARCHAR(255), requested_by VARCHAR(255) NOT NULL, "
        "requested_at VARCHAR(32) NOT NULL, second_label VARCHAR(255), submitted_at VARCHAR(32))",
    ):
        conn.execute(text(s))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4}
MIGRATIONS[5] = _v5


def _v6(conn: Connection) -> None:
    """Region annotations (``core.review.annotations``): the current shapes and their own append-only audit log."""
    for s in (
        f"CREATE TABLE IF NOT EXISTS annotations (id {_serial(conn)}, image_id VARCHAR(255) NOT NULL, "
        "geometry TEXT NOT NULL, class_name VARCHAR(255) NOT NULL, note TEXT NOT NULL DEFAULT '', "
        "author VARCHAR(255) NOT NULL, created_at VARCHAR(32) NOT NULL, updated_at VARCHAR(32) NOT NULL, "
        "updated_by VARCHAR(255) NOT NULL, version INTEGER NOT NULL DEFAULT 1)",
        "CREATE INDEX IF NOT EXISTS ix_annotations_image_id ON annotations (image_id)",
        f"CREATE TABLE IF NOT EXISTS annotation_audit (id {_serial(conn)}, annotation_id INTEGER NOT NULL, "
        "image_id VARCHAR(255) NOT NULL, action VARCHAR(16) NOT NULL, old_value TEXT, new_value TEXT, "
        "reviewer VARCHAR(255) NOT NULL, changed_at VARCHAR(32) NOT NULL, reason TEXT NOT NULL DEFAULT '', "
        "ann_version INTEGER NOT NULL, CONSTRAINT uq_annotation_audit_version UNIQUE (annotation_id, ann_version))",
        "CREATE INDEX IF NOT EXISTS ix_annotation_audit_image_id ON annotation_audit (image_id)",
    ):
        conn.execute(text(s))


MIGRATIONS[6] = _v6

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
    done = set(conn.execute(text("SELECT version FROM schema_version")).scalars().all())
    for v in sorted(MIGRATIONS):  # every step not yet recorded, in order (a step added later with a lower number
        if v in done:  # than one already applied still runs: each step is idempotent)
            continue
        MIGRATIONS[v](conn)
        conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": v})
    return start, SCHEMA_VERSION
