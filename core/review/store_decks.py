"""Decks of cases in the review database (a part of ``core.review.store.Store``).

A deck is a named, ordered list of slides with one talking point each, shown to clinicians in presentation mode.
Every deck edit names its reviewer and the deck version it was based on (a stale version is refused with
``ConflictError``) and writes one ``deck_audit`` row; the deck's ``version`` counts those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.errors import InputError
from core.review import store_schema as S
from core.review.store_types import ConflictError, _reviewer, now_iso

MAX_DECK_NAME = 120
MAX_TALKING_POINT = 2000


@dataclass(frozen=True)
class DeckCase:
    """One case of a deck: a slide, its place (0 = first) and the presenter's talking point."""

    image_id: str
    position: int
    talking_point: str = ""


@dataclass(frozen=True)
class Deck:
    """A deck and its cases in presentation order; ``version`` counts its audit rows."""

    id: int
    name: str
    model_version: str | None
    version: int
    created_by: str
    updated_at: str | None = None
    updated_by: str | None = None
    cases: tuple[DeckCase, ...] = ()

    @property
    def image_ids(self) -> list[str]:
        """The slides in presentation order."""
        return [c.image_id for c in self.cases]


@dataclass(frozen=True)
class DeckAuditRow:
    """One deck edit."""

    id: int
    deck_id: int
    action: str
    image_id: str | None
    old_value: str | None
    new_value: str | None
    reviewer: str
    at: str
    deck_version: int


def _clean_name(name: str) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise InputError("deck name: empty; give the deck a name")
    if len(name) > MAX_DECK_NAME:
        raise InputError(f"deck name: longer than {MAX_DECK_NAME} characters")
    return name


class DecksMixin:
    """Deck storage; the class using it provides ``_read()`` and ``_write()`` transactions."""

    def _read(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def _write(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def create_deck(self, name: str, reviewer: str | None, model_version: str | None = None) -> Deck:
        """A new empty deck (``InputError`` if the name is taken)."""
        who, name, at = _reviewer(reviewer), _clean_name(name), now_iso()
        with self._write() as conn:
            if conn.execute(select(S.decks.c.id).where(S.decks.c.name == name)).first():
                raise InputError(f"deck name: a deck called {name!r} already exists")
            res = conn.execute(insert(S.decks).values(name=name, model_version=model_version, version=1,
                                                      created_at=at, created_by=who, updated_at=at, updated_by=who))
            deck_id = int(res.inserted_primary_key[0])
            conn.execute(insert(S.deck_audit).values(deck_id=deck_id, action="create", image_id=None, old_value=None,
                                                     new_value=name, reviewer=who, changed_at=at, deck_version=1))
            return _deck(conn, deck_id)

    def decks(self) -> list[Deck]:
        """Every deck (with its cases), by name."""
        with self._read() as conn:
            ids = conn.execute(select(S.decks.c.id).order_by(S.decks.c.name)).scalars().all()
            return [_deck(conn, int(i)) for i in ids]

    def deck(self, deck_id: int) -> Deck:
        """One deck with its cases in order (``InputError`` if there is none with that id)."""
        with self._read() as conn:
            return _deck(conn, int(deck_id))

    def add_to_deck(self, deck_id: int, image_id: str, reviewer: str | None, based_on_version: int,
                    talking_point: str = "") -> Deck:
        """Append a slide to the end of a deck (a slide already in it is refused with ``InputError``)."""
        tp = _talking_point(talking_point)

        def change(conn: Connection, deck: Deck, who: str, at: str) -> tuple[str, str | None, str | None]:
            if image_id in deck.image_ids:
                raise InputError(f"slide {image_id!r} is already in deck {deck.name!r}")
            conn.execute(insert(S.deck_cases).values(deck_id=deck.id, image_id=str(image_id),
                                                     position=len(deck.cases), talking_point=tp, added_at=at,
                                                     added_by=who))
            return "add", None, str(len(deck.cases))

        return self._deck_edit(deck_id, image_id, reviewer, based_on_version, change)

    def remove_from_deck(self, deck_id: int, image_id: str, reviewer: str | None, based_on_version: int) -> Deck:
        """Take a slide out of a deck; the cases after it move up one place."""

        def change(conn: Connection, deck: Deck, who: str, at: str) -> tuple[str, str | None, str | None]:
            order = _require(deck, image_id)
            conn.execute(delete(S.deck_cases).where(S.deck_cases.c.deck_id == deck.id,
                                                    S.deck_cases.c.image_id == image_id))
            _renumber(conn, deck.id, [i for i in order if i != image_id])
            return "remove", str(order.index(image_id)), None

        return self._deck_edit(deck_id, image_id, reviewer, based_on_version, change)

    def move_in_deck(self, deck_id: int, image_id: str, position: int, reviewer: str | None,
                     based_on_version: int) -> Deck:
        """Move a slide to ``position`` (0 = first; clamped to the deck's length)."""

        def change(conn: Connection, deck: Deck, who: str, at: str) -> tuple[str, str | None, str | None]:
            order = _require(deck, image_id)
            old = order.index(image_id)
            order.remove(image_id)
            new = max(0, min(int(position), len(order)))
            order.insert(new, image_id)
            _renumber(conn, deck.id, order)
            return "move", str(old), str(new)

        return self._deck_edit(deck_id, image_id, reviewer, based_on_version, change)

    def set_talking_point(self, deck_id: int, image_id: str, text: str, reviewer: str | None,
                          based_on_version: int) -> Deck:
        """Replace a case's talking point (plain text, shown as text)."""
        tp = _talking_point(text)

        def change(conn: Connection, deck: Deck, who: str, at: str) -> tuple[str, str | None, str | None]:
            _require(deck, image_id)
            old = next(c.talking_point for c in deck.cases if c.image_id == image_id)
            conn.execute(update(S.deck_cases).where(S.deck_cases.c.deck_id == deck.id,
                                                    S.deck_cases.c.image_id == image_id).values(talking_point=tp))
            return "talking_point", old, tp

        return self._deck_edit(deck_id, image_id, reviewer, based_on_version, change)

    def set_deck_model(self, deck_id: int, model_version: str | None, reviewer: str | None,
                       based_on_version: int) -> Deck:
        """Choose the model version whose predictions and attention the deck shows (None = the latest)."""

        def change(conn: Connection, deck: Deck, who: str, at: str) -> tuple[str, str | None, str | None]:
            conn.execute(update(S.decks).where(S.decks.c.id == deck.id).values(model_version=model_version))
            return "model_version", deck.model_version, model_version

        return self._deck_edit(deck_id, None, reviewer, based_on_version, change)

    def deck_history(self, deck_id: int) -> list[DeckAuditRow]:
        """The deck's audit rows, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(S.deck_audit).where(S.deck_audit.c.deck_id == int(deck_id))
                                .order_by(S.deck_audit.c.id)).mappings().all()
        return [DeckAuditRow(id=int(r["id"]), deck_id=int(r["deck_id"]), action=r["action"], image_id=r["image_id"],
                             old_value=r["old_value"], new_value=r["new_value"], reviewer=r["reviewer"],
                             at=r["changed_at"], deck_version=int(r["deck_version"])) for r in rows]

    def _deck_edit(self, deck_id: int, image_id: str | None, reviewer: str | None, based_on_version: int,
                   change: Any) -> Deck:
        who, at = _reviewer(reviewer), now_iso()
        with self._write() as conn:
            deck = _deck(conn, int(deck_id))
            if deck.version != int(based_on_version):
                raise ConflictError(_conflict(conn, deck, int(based_on_version)))
            action, old, new = change(conn, deck, who, at)
            res = conn.execute(update(S.decks).where(S.decks.c.id == deck.id, S.decks.c.version == deck.version)
                               .values(version=deck.version + 1, updated_at=at, updated_by=who))
            if res.rowcount != 1:
                raise ConflictError(_conflict(conn, _deck(conn, deck.id), int(based_on_version)))
            try:
                conn.execute(insert(S.deck_audit).values(deck_id=deck.id, action=action, image_id=image_id,
                                                         old_value=old, new_value=new, reviewer=who, changed_at=at,
                                                         deck_version=deck.version + 1))
            except IntegrityError as exc:
                raise ConflictError(f"deck {deck.name!r} was changed by someone else at the same moment; "
                                    "reload and try again") from exc
            return _deck(conn, deck.id)


def _talking_point(text: str) -> str:
    tp = str(text or "").strip()
    if len(tp) > MAX_TALKING_POINT:
        raise InputError(f"talking point: longer than {MAX_TALKING_POINT} characters")
    return tp


def _require(deck: Deck, image_id: str) -> list[str]:
    order = deck.image_ids
    if image_id not in order:
        raise InputError(f"slide {image_id!r} is not in deck {deck.name!r}")
    return order


def _renumber(conn: Connection, deck_id: int, order: list[str]) -> None:
    for pos, image_id in enumerate(order):
        conn.execute(update(S.deck_cases).where(S.deck_cases.c.deck_id == deck_id,
                                                S.deck_cases.c.image_id == image_id).values(position=pos))


def _deck(conn: Connection, deck_id: int) -> Deck:
    r = conn.execute(select(S.decks).where(S.decks.c.id == deck_id)).mappings().first()
    if r is None:
        raise InputError(f"deck {deck_id}: no such deck")
    cases = conn.execute(select(S.deck_cases).where(S.deck_cases.c.deck_id == deck_id)
                         .order_by(S.deck_cases.c.position, S.deck_cases.c.image_id)).mappings().all()
    return Deck(id=int(r["id"]), name=r["name"], model_version=r["model_version"], version=int(r["version"]),
                created_by=r["created_by"], updated_at=r["updated_at"], updated_by=r["updated_by"],
                cases=tuple(DeckCase(c["image_id"], int(c["position"]), c["talking_point"] or "") for c in cases))


def _conflict(conn: Connection, deck: Deck, based_on: int) -> str:
    n = conn.execute(select(func.count()).select_from(S.deck_audit)
                     .where(S.deck_audit.c.deck_id == deck.id, S.deck_audit.c.deck_version > based_on)).scalar()
    last = conn.execute(select(S.deck_audit).where(S.deck_audit.c.deck_id == deck.id)
                        .order_by(S.deck_audit.c.id.desc())).mappings().first()
    who = f"; last by {last['reviewer']} ({last['action']})" if last else ""
    return (f"deck {deck.name!r} was changed since you loaded it (your version {based_on}, now {deck.version}, "
            f"{n} change(s){who}). Your edit was not saved; reload the deck and try again.")
