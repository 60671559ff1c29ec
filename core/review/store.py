"""The review database: label state, flags, notes, an append-only audit log, model versions and predictions.

Any SQLAlchemy URL works (SQLite by default, PostgreSQL via psycopg). Every edit names its reviewer and the slide
version it was based on; an edit based on a stale version is refused with ``ConflictError`` showing the change that
got there first. The label state is a cache of the audit log: ``derive_state_from_audit()`` replays it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.cohort.labels import LabelTable, read_labels
from core.errors import InputError
from core.review import store_schema as S
from core.review.auth import REVIEWER, AccessDenied
from core.review.store_access import AccessMixin
from core.review.store_annotations import AnnotationsMixin
from core.review.store_decks import DecksMixin
from core.review.store_engine import Txn as _Txn
from core.review.store_engine import sqlite_engine as _sqlite_engine
from core.review.store_models import ModelsMixin
from core.review.store_types import (  # noqa: F401 - re-exported: the store's public types live here
    _COLUMN,
    FIELDS,
    FLAGS,
    IMPORT,
    MAX_NOTE,
    OTHER,
    AuditRow,
    ConflictError,
    SlideState,
    SyncReport,
    _dec,
    _enc,
    _reviewer,
    now_iso,
    replay,
    safe_url,
    undo_target,
)

IMPORT_ATTEMPTS = 3  # a concurrent first import is retried: the retry sees the other's rows and skips them


class Store(ModelsMixin, DecksMixin, AccessMixin, AnnotationsMixin):
    """The review database behind one SQLAlchemy engine (thread-safe; one per process is enough)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self.actor = None  # the signed-in user this store acts for (``as_user``); None: local mode, typed names

    # -- transactions -----------------------------------------------------------------------------------------
    def _write(self) -> Any:
        """A write transaction; on SQLite it takes the write lock at BEGIN so concurrent editors queue up."""
        conn = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        return _Txn(conn)

    def _read(self) -> Any:
        conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for multi-table reads
        return _Txn(conn)

    # -- settings ---------------------------------------------------------------------------------------------
    def classes(self) -> tuple[str, ...]:
        """The cohort's classes as imported (relabels may use these and 'Other')."""
        with self._read() as conn:
            v = conn.execute(select(S.meta.c.value).where(S.meta.c.name == "classes")).scalar()
        return tuple(json.loads(v)) if v else ()

    def set_classes(self, classes: Iterable[str]) -> None:
        """Record the class list (done by ``sync_slides``; call it when the cohort's classes change)."""
        with self._write() as conn:
            _put_meta(conn, "classes", json.dumps(sorted(set(classes) - {OTHER})))

    # -- import -----------------------------------------------------------------------------------------------
    def sync_slides(self, cohort_or_ids: Any, labels_table: LabelTable | None = None,
                    reviewer: str = IMPORT) -> SyncReport:
        """Add slides not yet in the database with their imported label state (audit reason 'import'); all or nothing.

        ``cohort_or_ids``: a ``Cohort`` (its slides; its labels file unless ``labels_table`` is given) or image ids.
        Slides already present keep their reviewed state; a file label that differs is reported, never applied.
        """
        if hasattr(cohort_or_ids, "slide_paths"):
            ids = list(cohort_or_ids.slide_paths)
            if labels_table is None and cohort_or_ids.labels is not None and Path(cohort_or_ids.labels).is_file():
                labels_table = read_labels(cohort_or_ids.labels, slide_ids=ids)
        else:
            ids = [str(i) for i in cohort_or_ids]
        rows: dict[str, dict[str, Any]] = {i: {} for i in ids}
        if labels_table is not None:
            df = labels_table.df
            orphan = sorted(set(df["image_id"]) - set(ids))
            if orphan:
                src = labels_table.path or "labels"
                raise InputError(f"{src}: {len(orphan)} id(s) with no slide: {', '.join(orphan[:5])}"
                                 f"{' ...' if len(orphan) > 5 else ''}; nothing imported")
            for rec in df.to_dict("records"):
                r = rows[rec["image_id"]]
                if rec.get("label"):
                    r["label"] = rec["label"]
                for col, flag in (("is_outlier", "outlier"), ("exclude", "exclude"), ("second_opinion",
                                                                                      "second_opinion")):
                    if col in rec and str(rec[col]).strip().lower() in {"1", "true", "yes", "y", "t"}:
                        r[flag] = True
                if str(rec.get("note", "") or "").strip():
                    r["note"] = str(rec["note"])[:MAX_NOTE]
        for attempt in range(IMPORT_ATTEMPTS):
            try:
                return self._import_rows(rows, labels_table, reviewer)
            except IntegrityError as exc:  # another process imported some of these slides at the same moment
                if attempt == IMPORT_ATTEMPTS - 1:
                    raise ConflictError("another process kept importing the same slides at the same moment; "
                                        "nothing was imported by this one: try again") from exc
        raise AssertionError("unreachable")

    def _import_rows(self, rows: dict[str, dict[str, Any]], labels_table: LabelTable | None,
                     reviewer: str) -> SyncReport:
        """One all-or-nothing import transaction (``IntegrityError`` when a concurrent import won a row)."""
        at = now_iso()
        added = labelled = 0
        differing: list[str] = []
        with self._write() as conn:
            if labels_table is not None:
                old = json.loads(conn.execute(select(S.meta.c.value).where(S.meta.c.name == "classes")).scalar()
                                 or "[]")
                _put_meta(conn, "classes", json.dumps(sorted((set(old) | set(labels_table.classes)) - {OTHER})))
            known = dict(conn.execute(select(S.slides.c.image_id, S.slides.c.source_label)).all())
            for image_id, r in rows.items():
                if image_id in known:
                    if "label" in r and known[image_id] is not None and r["label"] != known[image_id]:
                        differing.append(image_id)
                    continue
                added += 1
                labelled += "label" in r
                conn.execute(insert(S.slides).values(image_id=image_id, source_label=r.get("label"), added_at=at))
                version = 0
                audit = []
                for f in FIELDS:
                    if f in r:
                        version += 1
                        audit.append(dict(image_id=image_id, field=f, old_value=None, new_value=_enc(f, r[f]),
                                          reviewer=reviewer, changed_at=at, reason=IMPORT, state_version=version))
                conn.execute(insert(S.label_state).values(
                    image_id=image_id, label=r.get("label"), outlier=bool(r.get("outlier")),
                    excluded=bool(r.get("exclude")), second_opinion=bool(r.get("second_opinion")),
                    note=r.get("note", ""), version=version, updated_at=at if audit else None,
                    updated_by=reviewer if audit else None))
                if audit:
                    conn.execute(insert(S.audit_log), audit)
        return SyncReport(added, labelled, len(rows) - added, tuple(differing))

    # -- edits ------------------------------------------------------------------------------------------------
    def edit(self, image_id: str, changes: Mapping[str, Any], reviewer: str | None, reason: str,
             based_on_version: int, model_version: str | None = None) -> SlideState:
        """Apply several field changes atomically (one audit row each); refused if the slide moved past the version."""
        return self.edit_many([(image_id, changes, based_on_version)], reviewer, reason, model_version)[0]

    def edit_many(self, edits: Sequence[tuple[str, Mapping[str, Any], int]], reviewer: str | None, reason: str,
                  model_version: str | None = None) -> list[SlideState]:
        """Edits of several slides, ``(image_id, changes, based_on_version)`` each, in one transaction: all are
        saved or none is (a slide that moved past its version refuses the whole batch with ``ConflictError``)."""
        who = _reviewer(reviewer) if self.actor is None else ""
        for _image_id, changes, _version in edits:
            bad = [f for f in changes if f not in FIELDS]
            if bad:
                raise InputError(f"unknown field(s) {', '.join(bad)} (known: {', '.join(FIELDS)})")
            if "label" in changes:
                self._check_label(changes["label"])
            if "note" in changes and len(str(changes["note"] or "")) > MAX_NOTE:
                raise InputError(f"note is longer than {MAX_NOTE} characters")
        reason = " ".join(str(reason or "").split())
        at = now_iso()
        with self._write() as conn:
            who = self._who(conn, who)
            blind = self._blind_ids(conn)
            for image_id, changes, _version in edits:
                if image_id in blind and "label" in changes:
                    raise AccessDenied(f"slide {image_id!r} awaits your blind second read: submit it first")
            return [self._edit_in(conn, image_id, changes, int(based_on), who, reason, model_version, at)
                    for image_id, changes, based_on in edits]

    def _who(self, conn: Connection, typed: str | None) -> str:
        """Who an edit is recorded under: the bound user (after checking they are at least a reviewer), else the
        typed name (local mode)."""
        if self.actor is None:
            return _reviewer(typed)
        self._require(conn, REVIEWER)
        return self.actor.label

    def _edit_in(self, conn: Connection, image_id: str, changes: Mapping[str, Any], based_on_version: int,
                 who: str, reason: str, model_version: str | None, at: str, keep_same: bool = False) -> SlideState:
        cur = self._current(conn, image_id, based_on_version)
        version = cur.version
        values: dict[str, Any] = {}
        audit = []
        for f, new in changes.items():
            new = str(new or "") if f == "note" else (bool(new) if f in FLAGS else new)
            if _enc(f, new) == _enc(f, getattr(cur, f)) and not keep_same:
                continue  # an unchanged value is not an edit: no audit row, the slide does not count as reviewed
            version += 1
            audit.append(dict(image_id=image_id, field=f, old_value=_enc(f, getattr(cur, f)),
                              new_value=_enc(f, new), reviewer=who, changed_at=at, reason=reason,
                              model_version=model_version, state_version=version))
            values[_COLUMN[f]] = new
        if not audit:
            return cur
        return self._apply(conn, cur, values, audit, at, who, based_on_version)

    def _current(self, conn: Connection, image_id: str, based_on_version: int) -> SlideState:
        cur = _state(conn, image_id)
        if cur is None:
            raise InputError(f"slide {image_id!r} is not in the review database")
        if cur.version != based_on_version:
            raise ConflictError(self._conflict_message(conn, cur, based_on_version))
        return cur

    def _apply(self, conn: Connection, cur: SlideState, values: dict[str, Any], audit: list[dict[str, Any]],
               at: str | None, who: str | None, based_on_version: int) -> SlideState:
        """Write the new state (only if still at ``cur.version``) and its audit rows."""
        image_id = cur.image_id
        res = conn.execute(update(S.label_state)
                           .where(S.label_state.c.image_id == image_id, S.label_state.c.version == cur.version)
                           .values(**values, version=audit[-1]["state_version"], updated_at=at, updated_by=who))
        if res.rowcount != 1:  # another writer slipped in between (PostgreSQL read committed)
            raise ConflictError(self._conflict_message(conn, _state(conn, image_id) or cur, based_on_version))
        if self.actor is not None:
            audit = [dict(r, user_key=self.actor.key) for r in audit]
        try:
            conn.execute(insert(S.audit_log), audit)
        except IntegrityError as exc:
            raise ConflictError(f"slide {image_id!r} was changed by someone else at the same moment; "
                                "reload and try again") from exc
        return _state(conn, image_id) or cur

    def accept_label(self, image_id: str, reviewer: str | None, reason: str, based_on_version: int,
                     model_version: str | None = None) -> SlideState:
        """Confirm the slide's current label: one audit row (old = new) that marks the slide as reviewed."""
        who = _reviewer(reviewer) if self.actor is None else ""
        reason = " ".join(str(reason or "").split())
        with self._write() as conn:
            who = self._who(conn, who)
            if image_id in self._blind_ids(conn):
                raise AccessDenied(f"slide {image_id!r} awaits your blind second read: submit it first")
            cur = self._current(conn, image_id, int(based_on_version))
            if not cur.label:
                raise InputError(f"slide {image_id!r} has no label to accept; choose one")
            return self._edit_in(conn, image_id, {"label": cur.label}, cur.version, who, reason, model_version,
                                 now_iso(), keep_same=True)

    def undo(self, image_id: str, reviewer: str | None, based_on_version: int, audit_id: int | None = None,
             reason: str = "", model_version: str | None = None) -> tuple[SlideState, list[AuditRow]]:
        """Revert the slide's last edit (every field one action changed) by writing the old values back as new audit
        rows (reason 'undo of #id'; the log itself is never changed). Refused with ``ConflictError`` if the slide
        moved past ``based_on_version``; ``audit_id``, when given, must belong to that last edit. Undoing again
        steps further back. Returns the new state and the rows that were reverted."""
        who = _reviewer(reviewer) if self.actor is None else ""
        extra = " ".join(str(reason or "").split())
        at = now_iso()
        with self._write() as conn:
            who = self._who(conn, who)
            cur = self._current(conn, image_id, int(based_on_version))
            rows = [_audit(r) for r in conn.execute(select(S.audit_log).where(S.audit_log.c.image_id == image_id)
                                                    .order_by(S.audit_log.c.id)).mappings()]
            target = undo_target(rows)
            if target is None:
                raise InputError(f"slide {image_id!r}: nothing to undo (no edit since the import)")
            if audit_id is not None and int(audit_id) not in {r.id for r in target}:
                raise InputError(f"slide {image_id!r}: #{audit_id} is not its last edit "
                                 f"(#{', #'.join(str(r.id) for r in target)} is); only the last edit can be undone")
            for r in target:
                if _enc(r.field, getattr(cur, r.field)) != r.new_value:
                    raise ConflictError(f"slide {image_id!r}: {r.field} is no longer {r.new_value!r}; not undone")
            _, before = replay(rows)
            restore_at, restore_by = before[target[0].id]
            values: dict[str, Any] = {}
            audit = []
            for k, r in enumerate(reversed(target), start=1):
                values[_COLUMN[r.field]] = _dec(r.field, r.old_value)
                audit.append(dict(image_id=image_id, field=r.field, old_value=r.new_value, new_value=r.old_value,
                                  reviewer=who, changed_at=at, reason=f"undo of #{r.id}" + (f": {extra}" if extra
                                                                                            else ""),
                                  model_version=model_version, state_version=cur.version + k, undoes=r.id))
            return self._apply(conn, cur, values, audit, restore_at, restore_by, int(based_on_version)), target

    def set_label(self, image_id: str, new_label: str, reviewer: str | None, reason: str, based_on_version: int,
                  model_version: str | None = None) -> SlideState:
        """Set (or confirm, if unchanged) the slide's label; the class must be known or 'Other'."""
        return self.edit(image_id, {"label": new_label}, reviewer, reason, based_on_version, model_version)

    def set_flag(self, image_id: str, flag: str, value: bool, reviewer: str | None, reason: str,
                 based_on_version: int, model_version: str | None = None) -> SlideState:
        """Set a flag: 'outlier', 'exclude' or 'second_opinion'."""
        if flag not in FLAGS:
            raise InputError(f"unknown flag {flag!r} (known: {', '.join(FLAGS)})")
        return self.edit(image_id, {flag: bool(value)}, reviewer, reason, based_on_version, model_version)

    def set_note(self, image_id: str, note: str, reviewer: str | None, reason: str, based_on_version: int,
                 model_version: str | None = None) -> SlideState:
        """Replace the slide's free-text note (stored and shown as plain text)."""
        return self.edit(image_id, {"note": note}, reviewer, reason, based_on_version, model_version)

    def _check_label(self, label: Any) -> None:
        classes = self.classes()
        if not isinstance(label, str) or not label.strip():
            raise InputError("a label must be a non-empty class name")
        if classes and label not in classes and label != OTHER:
            raise InputError(f"unknown class {label!r} (known: {', '.join(classes)}, {OTHER})")

    def _conflict_message(self, conn: Connection, cur: SlideState, based_on: int) -> str:
        rows = conn.execute(select(S.audit_log).where(S.audit_log.c.image_id == cur.image_id,
                                                      S.audit_log.c.state_version > based_on)
                            .order_by(S.audit_log.c.id)).mappings().all()
        changes = "; ".join(_audit(r).describe() for r in rows[-3:]) or "its version changed"
        return (f"slide {cur.image_id!r} was changed since you loaded it (your version {based_on}, now "
                f"{cur.version}): {changes}. Your edit was not saved; review the new state and try again.")

    # -- reading ----------------------------------------------------------------------------------------------
    def state(self, image_id: str) -> SlideState:
        """The current state of one slide (``InputError`` if it was never imported)."""
        with self._read() as conn:
            st = _state(conn, image_id)
            blind = self._blind_ids(conn)
        if st is None:
            raise InputError(f"slide {image_id!r} is not in the review database")
        return _hide(st) if image_id in blind else st

    def states(self) -> dict[str, SlideState]:
        """Every slide's current state."""
        with self._read() as conn:
            blind = self._blind_ids(conn)
            out = {r["image_id"]: _row_state(r) for r in conn.execute(select(S.label_state)).mappings()}
        return {k: _hide(v) if k in blind else v for k, v in out.items()}

    def state_table(self) -> pd.DataFrame:
        """The states as a table (one row per slide)."""
        fields = list(SlideState.__dataclass_fields__)
        # plain tuples, not dataclasses.asdict (which deep-copies every field: 0.3 s per call at 1,000 slides)
        rows = [tuple(getattr(s, f) for f in fields) for s in self.states().values()]
        return pd.DataFrame.from_records(rows, columns=fields)

    def history(self, image_id: str | None = None, limit: int | None = None) -> list[AuditRow]:
        """The audit rows of one slide (or all), oldest first."""
        q = select(S.audit_log).order_by(S.audit_log.c.id)
        if image_id is not None:
            q = q.where(S.audit_log.c.image_id == image_id)
        with self._read() as conn:
            blind = self._blind_ids(conn)
            rows = [_audit(r) for r in conn.execute(q).mappings()]
        if blind:  # a blind second reader sees no label change (nor who made it) on their pending slides
            rows = [r for r in rows if not (r.image_id in blind and r.field == "label")]
        return rows[-limit:] if limit else rows

    def source_labels(self) -> dict[str, str | None]:
        """image_id -> the label as first imported."""
        with self._read() as conn:
            return dict(conn.execute(select(S.slides.c.image_id, S.slides.c.source_label)).all())

    def snapshot(self) -> tuple[dict[str, SlideState], int, dict[str, int]]:
        """States, the audit log's last id and edits per reviewer, read from one consistent snapshot."""
        with self._read() as conn:
            states = {r["image_id"]: _row_state(r) for r in conn.execute(select(S.label_state)).mappings()}
            max_id = int(conn.execute(select(func.max(S.audit_log.c.id))).scalar() or 0)
            counts = dict(conn.execute(select(S.audit_log.c.reviewer, func.count())
                                       .where(S.audit_log.c.reason != IMPORT)
                                       .group_by(S.audit_log.c.reviewer)).all())
        return states, max_id, {k: int(v) for k, v in counts.items()}

    def derive_state_from_audit(self, up_to_id: int | None = None) -> dict[str, SlideState]:
        """Replay the audit log (optionally up to an id) into slide states; equals ``states()`` when complete."""
        q = select(S.audit_log).order_by(S.audit_log.c.id)
        if up_to_id is not None:
            q = q.where(S.audit_log.c.id <= up_to_id)
        with self._read() as conn:
            ids = conn.execute(select(S.slides.c.image_id)).scalars().all()
            states, _ = replay((_audit(r) for r in conn.execute(q).mappings()), ids)
        return {k: SlideState(**v) for k, v in states.items()}


def _put_meta(conn: Connection, name: str, value: str) -> None:
    if conn.execute(select(S.meta.c.name).where(S.meta.c.name == name)).first():
        conn.execute(update(S.meta).where(S.meta.c.name == name).values(value=value))
    else:
        conn.execute(insert(S.meta).values(name=name, value=value))


def _row_state(r: Mapping[str, Any]) -> SlideState:
    return SlideState(image_id=r["image_id"], label=r["label"], outlier=bool(r["outlier"]),
                      exclude=bool(r["excluded"]), second_opinion=bool(r["second_opinion"]), note=r["note"] or "",
                      version=int(r["version"]), updated_at=r["updated_at"], updated_by=r["updated_by"])


def _hide(st: SlideState) -> SlideState:
    """The state a blind second reader sees: no label and no name of who set it."""
    return SlideState(image_id=st.image_id, label=None, outlier=st.outlier, exclude=st.exclude,
                      second_opinion=st.second_opinion, note=st.note, version=st.version)


def _state(conn: Connection, image_id: str) -> SlideState | None:
    r = conn.execute(select(S.label_state).where(S.label_state.c.image_id == image_id)).mappings().first()
    return None if r is None else _row_state(r)


def _audit(r: Mapping[str, Any]) -> AuditRow:
    return AuditRow(id=int(r["id"]), image_id=r["image_id"], field=r["field"], old_value=r["old_value"],
                    new_value=r["new_value"], reviewer=r["reviewer"], at=r["changed_at"], reason=r["reason"] or "",
                    model_version=r.get("model_version"), state_version=int(r["state_version"]),
                    undoes=None if r.get("undoes") is None else int(r["undoes"]))


def open_store(url: str) -> Store:
    """Open (creating and migrating the schema as needed) the review database at a SQLAlchemy URL."""
    url = str(url)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        if url.startswith("sqlite"):
            engine = _sqlite_engine(url)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        with engine.connect() as conn:
            opts = {"sqlite_begin": "BEGIN IMMEDIATE"} if engine.dialect.name == "sqlite" else {}
            conn = conn.execution_options(**opts)
            with conn.begin():
                if engine.dialect.name == "postgresql":  # two processes starting at once migrate one after the other
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7301)")
                S.migrate(conn)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise InputError(f"database {safe_url(url)}: cannot open ({msg[0] if msg else type(exc).__name__})") from exc
    return Store(engine)
