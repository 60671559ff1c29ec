"""Annotation changes drawn in the viewer: one op (create / edit / delete / undo) applied through the review store.

The viewer sends ops as plain dicts; ``apply_op`` checks them (the slide, the class against the cohort's list, the
geometry with ``core.review.annotations.check_geometry``) and stores them with the reviewer's name, so every change is
audited and a stale edit is refused with the other reviewer's change (``ConflictError``). Each applied change
pushes an entry on the caller's undo stack (JSON-serialisable dicts); ``{"op": "undo"}`` reverts the newest one
through the store too, based on the version the change left, so undoing over someone else's edit is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import InputError, SlideLensError
from core.review.annotations import check_geometry

MAX_UNDO = 50


@dataclass(frozen=True)
class OpResult:
    """What one op did: ``kind`` is success, warning or error; ``text`` one line for the reviewer."""

    kind: str
    text: str


def _geometry(op: dict[str, Any], dims: tuple[int, int] | None) -> tuple[dict[str, Any], str | None]:
    return check_geometry(op.get("geometry"), "drawn annotation", dims)


def _cls(store: Any, cls: Any) -> str:
    name = " ".join(str(cls or "").split())
    known = store.annotation_classes()
    if name not in known:
        raise InputError(f"annotation class {name!r} is not in this cohort's list ({', '.join(known)})")
    return name


def _push(undo: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    undo.append(entry)
    del undo[:-MAX_UNDO]


def apply_op(store: Any, image_id: str, op: dict[str, Any], reviewer: str, dims: tuple[int, int] | None,
             undo: list[dict[str, Any]]) -> OpResult:
    """Apply one viewer op to ``image_id``'s annotations; errors come back as an ``OpResult`` of kind error."""
    try:
        return _apply(store, image_id, op, reviewer, dims, undo)
    except SlideLensError as exc:
        return OpResult("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _apply(store: Any, image_id: str, op: dict[str, Any], who: str, dims: tuple[int, int] | None,
           undo: list[dict[str, Any]]) -> OpResult:
    if not isinstance(op, dict):
        raise InputError("annotation change: not an object")
    if op.get("image_id") not in (None, image_id):
        raise InputError(f"annotation change for slide {op.get('image_id')!r} arrived on {image_id!r}; not saved")
    kind = op.get("op")
    if kind == "create":
        geometry, warning = _geometry(op, dims)
        ann = store.add_annotation(image_id, geometry, _cls(store, op.get("cls")), who, note=op.get("note") or "")
        _push(undo, {"action": "create", "id": ann.id, "version": ann.version})
        text = f"saved {ann.cls} {geometry['type'].lower()} #{ann.id}"
        return OpResult("warning", f"{text}; {warning}") if warning else OpResult("success", text)
    if kind == "edit":
        ann_id, version = int(op["id"]), int(op["version"])
        before = store.annotation(ann_id)
        changes = dict(op.get("changes") or {})
        warning = None
        if "geometry" in changes:
            changes["geometry"], warning = _geometry(changes, dims)
        if "cls" in changes:
            changes["cls"] = _cls(store, changes["cls"])
        new = store.edit_annotation(ann_id, changes, who, based_on_version=version)
        if before is not None:
            _push(undo, {"action": "edit", "id": ann_id, "version": new.version,
                         "before": {k: getattr(before, k) for k in changes}})
        text = f"changed #{ann_id} ({', '.join(sorted(changes))})"
        return OpResult("warning", f"{text}; {warning}") if warning else OpResult("success", text)
    if kind == "delete":
        ann_id, version = int(op["id"]), int(op["version"])
        before = store.annotation(ann_id)
        store.delete_annotation(ann_id, who, based_on_version=version)
        if before is not None:
            _push(undo, {"action": "delete", "record": {"geometry": before.geometry, "cls": before.cls,
                                                        "note": before.note}})
        return OpResult("success", f"deleted #{ann_id}")
    if kind == "undo":
        return _undo(store, image_id, who, undo)
    raise InputError(f"annotation change: unknown op {kind!r} (create, edit, delete, undo)")


def _undo(store: Any, image_id: str, who: str, undo: list[dict[str, Any]]) -> OpResult:
    if not undo:
        return OpResult("warning", "nothing to undo")
    entry = undo[-1]
    if entry["action"] == "create":
        store.delete_annotation(entry["id"], who, based_on_version=entry["version"], reason="undo")
        text = f"undone: drawing #{entry['id']} (deleted)"
    elif entry["action"] == "edit":
        store.edit_annotation(entry["id"], entry["before"], who, based_on_version=entry["version"], reason="undo")
        text = f"undone: the change to #{entry['id']}"
    else:
        rec = entry["record"]
        ann = store.add_annotation(image_id, rec["geometry"], rec["cls"], who, note=rec["note"], reason="undo")
        text = f"undone: the deletion (restored as #{ann.id})"
    undo.pop()
    return OpResult("success", text)
