"""Value types of the review database: slide state, audit rows, the import report, and field encoding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import make_url

from core.errors import InputError, SlideLensError

FLAGS = ("outlier", "exclude", "second_opinion")
FIELDS = ("label", *FLAGS, "note")
OTHER = "Other"
MAX_NOTE = 5000
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

    def describe(self) -> str:
        """'alice changed label 'A' -> 'B' at <time> (reason)' in one line."""
        why = f" ({self.reason})" if self.reason else ""
        when = self.at[:19].replace("T", " ") + " UTC"
        return f"{self.reviewer} changed {self.field} {self.old_value!r} -> {self.new_value!r} at {when}{why}"


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
