"""Region annotations in the review database (a part of ``core.review.store.Store``).

An annotation is one shape on one slide: a GeoJSON geometry in level-0 pixel coordinates, a class, a note, its
author and times. Every create, edit and delete names its reviewer and writes one ``annotation_audit`` row holding
the whole record before and after, so the annotations at any audit position are replayed from the log alone.
Edits and deletes name the annotation version they were based on; a stale one is refused with ``ConflictError``
showing the change that got there first (as with labels).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.errors import InputError
from core.review import store_schema as S
from core.review.store_types import ConflictError, _reviewer, now_iso

DEFAULT_ANNOTATION_CLASSES = ("Tumour", "Stroma", "Necrosis", "Other")
MAX_ANNOTATION_NOTE = 2000
EDITABLE = ("geometry", "cls", "note")


@dataclass(frozen=True)
class Annotation:
    """One stored annotation; ``geometry`` is a GeoJSON geometry dict in level-0 pixels."""

    id: int
    image_id: str
    geometry: dict[str, Any]
    cls: str
    note: str
    author: str
    created_at: str
    updated_at: str
    updated_by: str
    version: int


@dataclass(frozen=True)
class AnnotationAuditRow:
    """One create/edit/delete of one annotation; ``old``/``new`` are the whole record (None: absent)."""

    id: int
    annotation_id: int
    image_id: str
    action: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    reviewer: str
    at: str
    reason: str
    version: int

    def describe(self) -> str:
        """'alice edited annotation #3 (Tumour) at <time>' in one line."""
        rec = self.new or self.old or {}
        when = self.at[:19].replace("T", " ") + " UTC"
        return (f"{self.reviewer} {self.action.rstrip('e')}ed annotation #{self.annotation_id} ({rec.get('cls', '?')}) on "
                f"{self.image_id} at {when}" + (f" ({self.reason})" if self.reason else ""))


def _row(r: Mapping[str, Any]) -> Annotation:
    return Annotation(id=int(r["id"]), image_id=r["image_id"], geometry=json.loads(r["geometry"]),
                      cls=r["class_name"], note=r["note"] or "", author=r["author"], created_at=r["created_at"],
                      updated_at=r["updated_at"], updated_by=r["updated_by"], version=int(r["version"]))


def _audit(r: Mapping[str, Any]) -> AnnotationAuditRow:
    return AnnotationAuditRow(
        id=int(r["id"]), annotation_id=int(r["annotation_id"]), image_id=r["image_id"], action=r["action"],
        old=None if r["old_value"] is None else json.loads(r["old_value"]),
        new=None if r["new_value"] is None else json.loads(r["new_value"]), reviewer=r["reviewer"],
        at=r["changed_at"], reason=r["reason"] or "", version=int(r["ann_version"]))


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "geometry" in values:
        g = values["geometry"]
        if not isinstance(g, dict) or "type" not in g or "coordinates" not in g:
            raise InputError("annotation geometry: not a GeoJSON geometry (needs 'type' and 'coordinates')")
        out["geometry"] = g
    if "cls" in values:
        cls = " ".join(str(values["cls"] or "").split())
        if not cls or len(cls) > 255:
            raise InputError("annotation class: empty or longer than 255 characters")
        out["cls"] = cls
    if "note" in values:
        note = str(values["note"] or "")
        if len(note) > MAX_ANNOTATION_NOTE:
            raise InputError(f"annotation note: longer than {MAX_ANNOTATION_NOTE} characters")
        out["note"] = note
    return out


class AnnotationsMixin:
    """Annotation storage; the class using it provides ``_read()`` and ``_write()`` transactions."""

    def _read(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def _write(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    # -- the cohort's annotation classes ----------------------------------------------------------------------
    def annotation_classes(self) -> tuple[str, ...]:
        """The cohort's annotation classes, in order (the defaults until changed)."""
        with self._read() as conn:
            v = conn.execute(select(S.meta.c.value).where(S.meta.c.name == "annotation_classes")).scalar()
        return tuple(json.loads(v)) if v else DEFAULT_ANNOTATION_CLASSES

    def set_annotation_classes(self, classes: Iterable[str]) -> tuple[str, ...]:
        """Replace the cohort's annotation class list (order kept, duplicates and blanks dropped)."""
        clean: list[str] = []
        for c in classes:
            c = " ".join(str(c).split())
            if c and c not in clean:
                clean.append(c[:255])
        if not clean:
            raise InputError("annotation classes: the list is empty")
        with self._write() as conn:
            if conn.execute(select(S.meta.c.name).where(S.meta.c.name == "annotation_classes")).first():
                conn.execute(update(S.meta).where(S.meta.c.name == "annotation_classes")
                             .values(value=json.dumps(clean)))
            else:
                conn.execute(insert(S.meta).values(name="annotation_classes", value=json.dumps(clean)))
        return tuple(clean)

    # -- reads ------------------------------------------------------------------------------------------------
    def annotations(self, image_id: str | None = None, cls: str | None = None) -> list[Annotation]:
        """Current annotations (of one slide, of one class), oldest first."""
        q = select(S.annotations).order_by(S.annotations.c.id)
        if image_id is not None:
            q = q.where(S.annotations.c.image_id == image_id)
        if cls is not None:
            q = q.where(S.annotations.c.class_name == cls)
        with self._read() as conn:
            return [_row(r) for r in conn.execute(q).mappings()]

    def annotation(self, ann_id: int) -> Annotation | None:
        """One current annotation (None once deleted)."""
        with self._read() as conn:
            r = conn.execute(select(S.annotations).where(S.annotations.c.id == int(ann_id))).mappings().first()
        return None if r is None else _row(r)

    def annotation_history(self, image_id: str | None = None, annotation_id: int | None = None
                           ) -> list[AnnotationAuditRow]:
        """Annotation audit rows, oldest first (of one slide or one annotation)."""
        q = select(S.annotation_audit).order_by(S.annotation_audit.c.id)
        if image_id is not None:
            q = q.where(S.annotation_audit.c.image_id == image_id)
        if annotation_id is not None:
            q = q.where(S.annotation_audit.c.annotation_id == int(annotation_id))
        with self._read() as conn:
            return [_audit(r) for r in conn.execute(q).mappings()]

    def annotations_at(self, up_to_id: int | None = None, image_id: str | None = None) -> dict[int, Annotation]:
        """Replay the annotation audit log (up to an audit id) into the annotations as they stood then."""
        out: dict[int, Annotation] = {}
        for r in self.annotation_history(image_id=image_id):
            if up_to_id is not None and r.id > up_to_id:
                break
            if r.new is None:
                out.pop(r.annotation_id, None)
            else:
                out[r.annotation_id] = Annotation(**r.new)
        return out

    # -- writes -----------------------------------------------------------------------------------------------
    def add_annotation(self, image_id: str, geometry: dict[str, Any], cls: str, reviewer: str | None,
                       note: str = "", reason: str = "") -> Annotation:
        """Create one annotation (one audit row 'create')."""
        return self.add_annotations([(image_id, geometry, cls, note)], reviewer, reason)[0]

    def add_annotations(self, items: Sequence[tuple[str, dict[str, Any], str, str]], reviewer: str | None,
                        reason: str = "") -> list[Annotation]:
        """Create several annotations ``(image_id, geometry, class, note)`` in one transaction: all or none."""
        who = _reviewer(reviewer)
        clean = [(str(i), _clean({"geometry": g, "cls": c, "note": n})) for i, g, c, n in items]
        reason = " ".join(str(reason or "").split())
        at = now_iso()
        out: list[Annotation] = []
        with self._write() as conn:
            known = set(conn.execute(select(S.slides.c.image_id)
                                     .where(S.slides.c.image_id.in_({i for i, _ in clean}))).scalars())
            missing = sorted({i for i, _ in clean} - known)
            if missing:
                raise InputError(f"slide(s) not in the review database: {', '.join(missing[:5])}; "
                                 "no annotation was saved")
            for image_id, v in clean:
                new_id = conn.execute(insert(S.annotations).values(
                    image_id=image_id, geometry=json.dumps(v["geometry"]), class_name=v["cls"], note=v["note"],
                    author=who, created_at=at, updated_at=at, updated_by=who, version=1)).inserted_primary_key[0]
                ann = _load(conn, int(new_id))
                conn.execute(insert(S.annotation_audit).values(
                    annotation_id=ann.id, image_id=image_id, action="create", old_value=None,
                    new_value=json.dumps(asdict(ann)), reviewer=who, changed_at=at, reason=reason, ann_version=1))
                out.append(ann)
        return out

    def edit_annotation(self, ann_id: int, changes: Mapping[str, Any], reviewer: str | None, based_on_version: int,
                        reason: str = "") -> Annotation:
        """Change geometry/class/note of one annotation; refused if it moved past ``based_on_version``."""
        bad = [k for k in changes if k not in EDITABLE]
        if bad:
            raise InputError(f"annotation: unknown field(s) {', '.join(bad)} (editable: {', '.join(EDITABLE)})")
        who = _reviewer(reviewer)
        v = _clean(changes)
        at = now_iso()
        with self._write() as conn:
            cur = self._ann_current(conn, ann_id, based_on_version)
            cols = {"geometry": json.dumps(v["geometry"])} if "geometry" in v else {}
            cols.update({"class_name": v["cls"]} if "cls" in v else {})
            cols.update({"note": v["note"]} if "note" in v else {})
            res = conn.execute(update(S.annotations)
                               .where(S.annotations.c.id == cur.id, S.annotations.c.version == cur.version)
                               .values(**cols, updated_at=at, updated_by=who, version=cur.version + 1))
            if res.rowcount != 1:
                raise ConflictError(self._ann_conflict(conn, ann_id, based_on_version))
            new = _load(conn, cur.id)
            self._ann_audit(conn, cur, new, "edit", who, at, reason)
            return new

    def delete_annotation(self, ann_id: int, reviewer: str | None, based_on_version: int, reason: str = "") -> None:
        """Delete one annotation (its audit rows stay); refused if it moved past ``based_on_version``."""
        who = _reviewer(reviewer)
        at = now_iso()
        with self._write() as conn:
            cur = self._ann_current(conn, ann_id, based_on_version)
            res = conn.execute(delete(S.annotations).where(S.annotations.c.id == cur.id,
                                                           S.annotations.c.version == cur.version))
            if res.rowcount != 1:
                raise ConflictError(self._ann_conflict(conn, ann_id, based_on_version))
            self._ann_audit(conn, cur, None, "delete", who, at, reason)

    def _ann_current(self, conn: Connection, ann_id: int, based_on_version: int) -> Annotation:
        r = conn.execute(select(S.annotations).where(S.annotations.c.id == int(ann_id))).mappings().first()
        if r is None or int(r["version"]) != int(based_on_version):
            raise ConflictError(self._ann_conflict(conn, ann_id, based_on_version))
        return _row(r)

    def _ann_audit(self, conn: Connection, old: Annotation, new: Annotation | None, action: str, who: str,
                   at: str, reason: str) -> None:
        try:
            conn.execute(insert(S.annotation_audit).values(
                annotation_id=old.id, image_id=old.image_id, action=action, old_value=json.dumps(asdict(old)),
                new_value=None if new is None else json.dumps(asdict(new)), reviewer=who, changed_at=at,
                reason=" ".join(str(reason or "").split()), ann_version=old.version + 1))
        except IntegrityError as exc:
            raise ConflictError(f"annotation #{old.id} was changed by someone else at the same moment; "
                                "reload and try again") from exc

    def _ann_conflict(self, conn: Connection, ann_id: int, based_on_version: int) -> str:
        rows = [_audit(r) for r in conn.execute(
            select(S.annotation_audit).where(S.annotation_audit.c.annotation_id == int(ann_id),
                                             S.annotation_audit.c.ann_version > int(based_on_version))
            .order_by(S.annotation_audit.c.id)).mappings()]
        if not rows:
            n = conn.execute(select(func.count()).select_from(S.annotation_audit)
                             .where(S.annotation_audit.c.annotation_id == int(ann_id))).scalar()
            if not n:
                return f"annotation #{ann_id} does not exist"
            return f"annotation #{ann_id} is not at version {based_on_version}; reload and try again"
        return (f"annotation #{ann_id} was changed since you loaded it (version {based_on_version}): "
                + "; ".join(r.describe() for r in rows[-3:]) + ". Reload to see it, then redo your change")


def _load(conn: Connection, ann_id: int) -> Annotation:
    return _row(conn.execute(select(S.annotations).where(S.annotations.c.id == ann_id)).mappings().one())
