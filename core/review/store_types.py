"""Value types of the review database: slide state, audit rows, the import report, and field encoding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import make_url

from core.errors import InputError, SlideLensError

FLAGS = ("outlier", "exclude", "second_opinion")
FIELDS = ("label", *FLAGS, "note")
OTHER = "Other"
MAX_NOTE = 5000
IMPORT = "import"  # the reason (and default reviewer) of rows written by sync_slides
_COLUMN = {"label": "label", "outlier": "outlier", "exclude": "excluded", "second_opinion": "second_opinion",
           "note": "note"}


class ConflictError(SlideLensError):
    """An edit was based on a stale version of the slide: someone else changed it first."""


@dataclass(frozen=True)
class SlideState:
    """The current review state of one slide; ``version`` counts its audit rows."""

    image_id: str
    label: str | None
    outlier: bool = False
    exclude: bool = False
    second_opinion: bool = False
    note: str = ""
    version: int = 0
    updated_at: str | None = None
    updated_by: str | None = None


@dataclass(frozen=True)
class AuditRow:
    """One change of one field of one slide."""

    id: int
    image_id: str
    field: str
    old_value: str | None
    new_value: str | None
    reviewer: str
    at: str
    reason: str
    model_version: str | None
    state_version: int
    undoes: int | None = None  # the audit row this one reverts (written by ``Store.undo``)

    def describe(self) -> str:
        """'alice changed label 'A' -> 'B' at <time> (reason)' in one line."""
        why = f" ({self.reason})" if self.reason else ""
        when = self.at[:19].replace("T", " ") + " UTC"
        verb = f"undid #{self.undoes}:" if self.undoes is not None else "changed"
        return f"{self.reviewer} {verb} {self.field} {self.old_value!r} -> {self.new_value!r} at {when}{why}"


@dataclass(frozen=True)
class SyncReport:
    """What ``sync_slides`` did: slides added, labels imported, and file labels that differ from the database."""

    added: int
    labelled: int
    existing: int
    differing: tuple[str, ...] = ()

    def summary(self) -> str:
        s = f"{self.added} slide(s) added ({self.labelled} with a label), {self.existing} already in the database"
        if self.differing:
            s += (f"; {len(self.differing)} label(s) in the file differ from the first import and were not applied "
                  f"(edit them in the review page): {', '.join(self.differing[:5])}")
        return s


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enc(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if field in FLAGS:
        return "1" if value else "0"
    return str(value)


def _dec(field: str, value: str | None) -> Any:
    if field in FLAGS:
        return value == "1"
    if field == "note":
        return value or ""
    return value


def _reviewer(name: str | None) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("a reviewer name is required before any edit (enter your name first)")
    if len(name) > 255:
        raise InputError("reviewer name is longer than 255 characters")
    return name


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and manifests."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by open_store
        return url


def actions(rows: Sequence[AuditRow]) -> list[list[AuditRow]]:
    """One slide's audit rows (oldest first) grouped into actions: the rows one edit (or one undo) wrote together."""
    out: list[list[AuditRow]] = []
    for r in rows:
        last = out[-1][-1] if out else None
        if (last is not None and (last.at, last.reviewer, last.reason) == (r.at, r.reviewer, r.reason)
                and (last.undoes is None) == (r.undoes is None) and r.state_version == last.state_version + 1):
            out[-1].append(r)
        else:
            out.append([r])
    return out


def undo_target(rows: Sequence[AuditRow]) -> list[AuditRow] | None:
    """The action an undo reverts: the slide's newest edit that is neither an undo nor undone (None: the slide is
    as imported). Undoing again steps further back, like an editor's undo."""
    undone = {r.undoes for r in rows if r.undoes is not None}
    for act in reversed(actions(rows)):
        if act[0].undoes is not None or any(r.id in undone for r in act):
            continue
        return None if act[0].reason == IMPORT else act
    return None


def replay(rows: Iterable[AuditRow], ids: Iterable[str] = ()) -> tuple[dict[str, dict[str, Any]],
                                                                        dict[int, tuple[str | None, str | None]]]:
    """Replay audit rows (oldest first) into state fields per slide; also ``(updated_at, updated_by)`` before each
    row by id. An undo row puts back who/when the slide stood at before the row it reverts, so an undone edit no
    longer counts the slide as reviewed."""
    out: dict[str, dict[str, Any]] = {i: {"image_id": i, "label": None} for i in ids}
    before: dict[int, tuple[str | None, str | None]] = {}
    for r in rows:
        st = out.setdefault(r.image_id, {"image_id": r.image_id, "label": None})
        before[r.id] = (st.get("updated_at"), st.get("updated_by"))
        st[r.field] = _dec(r.field, r.new_value)
        st["version"] = r.state_version
        st["updated_at"], st["updated_by"] = before.get(r.undoes, (r.at, r.reviewer))  # type: ignore[arg-type]
    return out, before
