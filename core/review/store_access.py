"""The review database's users, roles, assignments and blind second reads (a part of ``core.review.store.Store``).

A ``Store`` bound to a signed-in identity (``store.as_user(identity)``) checks that user's role, read from the
``users`` table inside the edit's own transaction, before every change: a viewer's edit is refused here, not only
by a hidden button. Each audit row then records the identity (its label and its issuer + subject key).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from core.errors import InputError
from core.review import store_schema as S
from core.review.auth import ADMIN, REVIEWER, VIEWER, AccessDenied, Identity, check_role, valid_role
from core.review.store_types import OTHER, now_iso


class AccessMixin:
    """Users and roles, assignments, second reads; the class using it provides ``_read``/``_write``/``classes``."""

    actor: Identity | None = None

    def _read(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def _write(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    def classes(self) -> tuple[str, ...]:  # pragma: no cover - provided by Store
        raise NotImplementedError

    # -- identity -----------------------------------------------------------------------------------------------
    def as_user(self, identity: Identity) -> Any:
        """This store bound to a signed-in user: every edit checks their role and is recorded under their name."""
        bound = copy.copy(self)
        bound.actor = identity
        return bound

    def _user_row(self, conn: Connection, identity: Identity) -> Any:
        return conn.execute(select(S.users).where(S.users.c.issuer == identity.issuer,
                                                  S.users.c.subject == identity.subject)).mappings().first()

    def _require(self, conn: Connection, needed: str) -> Any:
        """The bound user's row, after checking their role (``AccessDenied`` for an unknown user or too low a role)."""
        if self.actor is None:
            return None
        row = self._user_row(conn, self.actor)
        check_role(row["role"] if row else None, needed)
        return row

    def sign_in(self, identity: Identity, admins: Iterable[str] = ()) -> str:
        """Record a sign-in (new users are created) and return the user's role. A new user is a viewer unless their
        email is among ``admins`` (the cohort's first admins); an existing user keeps the role an admin gave them."""
        first_admins = {a.lower() for a in admins}
        at = now_iso()
        with self._write() as conn:
            row = self._user_row(conn, identity)
            if row is None:
                role = ADMIN if identity.email and identity.email.lower() in first_admins else VIEWER
                conn.execute(insert(S.users).values(issuer=identity.issuer, subject=identity.subject,
                                                    email=identity.email, name=identity.name, role=role,
                                                    created_at=at, last_seen=at))
                return role
            conn.execute(update(S.users).where(S.users.c.id == row["id"])
                         .values(email=identity.email, name=identity.name, last_seen=at))
            return str(row["role"])

    def role_of(self, identity: Identity) -> str:
        """The user's role (viewer when unknown)."""
        with self._read() as conn:
            row = self._user_row(conn, identity)
        return str(row["role"]) if row else VIEWER

    def users(self) -> list[dict[str, Any]]:
        """Every known user: id, email, name, role, issuer, subject, last_seen."""
        with self._read() as conn:
            rows = conn.execute(select(S.users).order_by(S.users.c.email, S.users.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def set_role(self, user_id: int, role: str) -> None:
        """Give a user a role (admins only); the last admin cannot be demoted."""
        role = valid_role(role)
        with self._write() as conn:
            self._require(conn, ADMIN)
            row = conn.execute(select(S.users).where(S.users.c.id == int(user_id))).mappings().first()
            if row is None:
                raise InputError(f"user #{user_id} is not known (they sign in once to be listed)")
            if row["role"] == ADMIN and role != ADMIN:
                admins = conn.execute(select(func.count()).select_from(S.users)
                                      .where(S.users.c.role == ADMIN)).scalar()
                if int(admins or 0) <= 1:
                    raise InputError(f"{row['email'] or row['name']} is the last admin; make someone else admin "
                                     "first")
            conn.execute(update(S.users).where(S.users.c.id == int(user_id)).values(role=role))

    # -- assignments --------------------------------------------------------------------------------------------
    def assign(self, image_ids: Iterable[str], user_id: int, by: str = "") -> int:
        """Assign slides to a reviewer (admins only when bound); returns how many were new."""
        ids = [str(i) for i in image_ids]
        at = now_iso()
        with self._write() as conn:
            me = self._require(conn, ADMIN)
            who = self.actor.label if self.actor else (by or "local")
            user = conn.execute(select(S.users).where(S.users.c.id == int(user_id))).mappings().first()
            if user is None:
                raise InputError(f"user #{user_id} is not known")
            if user["role"] not in (REVIEWER, ADMIN):
                raise InputError(f"{user['email'] or user['name']} is a viewer; make them a reviewer first")
            known = set(conn.execute(select(S.slides.c.image_id).where(S.slides.c.image_id.in_(ids))).scalars())
            missing = [i for i in ids if i not in known]
            if missing:
                raise InputError(f"{len(missing)} slide(s) not in the review database: {', '.join(missing[:5])}")
            have = set(conn.execute(select(S.assignments.c.image_id).where(
                S.assignments.c.user_id == int(user_id), S.assignments.c.image_id.in_(ids))).scalars())
            new = [dict(image_id=i, user_id=int(user_id), assigned_by=who, assigned_at=at)
                   for i in dict.fromkeys(ids) if i not in have]
            if new:
                conn.execute(insert(S.assignments), new)
            del me
        return len(new)

    def unassign(self, image_ids: Iterable[str], user_id: int) -> None:
        """Take slides off a reviewer's queue (admins only when bound)."""
        with self._write() as conn:
            self._require(conn, ADMIN)
            conn.execute(delete(S.assignments).where(S.assignments.c.user_id == int(user_id),
                                                     S.assignments.c.image_id.in_([str(i) for i in image_ids])))

    def my_queue(self, identity: Identity | None = None) -> list[str]:
        """The slides assigned to a user (the bound one by default), plus their pending second reads."""
        who = identity or self.actor
        if who is None:
            return []
        with self._read() as conn:
            row = self._user_row(conn, who)
            if row is None:
                return []
            ids = list(conn.execute(select(S.assignments.c.image_id).where(S.assignments.c.user_id == row["id"])
                                    .order_by(S.assignments.c.image_id)).scalars())
            ids += [i for i in conn.execute(select(S.second_reads.c.image_id).where(
                S.second_reads.c.reader_id == row["id"], S.second_reads.c.submitted_at.is_(None))
                .order_by(S.second_reads.c.image_id)).scalars() if i not in ids]
        return ids

    def progress(self) -> list[dict[str, Any]]:
        """Per reviewer: slides assigned, of those reviewed by them (an audit row of theirs), second reads done."""
        with self._read() as conn:
            users = conn.execute(select(S.users)).mappings().all()
            out = []
            for u in users:
                key = f"{u['issuer']} {u['subject']}"
                assigned = set(conn.execute(select(S.assignments.c.image_id)
                                            .where(S.assignments.c.user_id == u["id"])).scalars())
                touched = set(conn.execute(select(S.audit_log.c.image_id).where(S.audit_log.c.user_key == key))
                              .scalars())
                reads = conn.execute(select(S.second_reads.c.submitted_at)
                                     .where(S.second_reads.c.reader_id == u["id"])).scalars().all()
                if not assigned and not touched and not reads:
                    continue
                out.append({"reviewer": u["email"] or u["name"], "role": u["role"], "assigned": len(assigned),
                            "assigned done": len(assigned & touched), "slides edited": len(touched),
                            "second reads": len(reads), "second reads done": sum(r is not None for r in reads)})
        return out

    # -- blind second reads -------------------------------------------------------------------------------------
    def request_second_read(self, image_id: str, reader_id: int) -> None:
        """Ask a reviewer for a blind second read of a slide (admins only when bound); the current label and who
        set it are kept as the first read and hidden from that reviewer until they submit."""
        at = now_iso()
        with self._write() as conn:
            self._require(conn, ADMIN)
            st = conn.execute(select(S.label_state).where(S.label_state.c.image_id == image_id)).mappings().first()
            if st is None:
                raise InputError(f"slide {image_id!r} is not in the review database")
            if not st["label"]:
                raise InputError(f"slide {image_id!r} has no first label yet; label it before a second read")
            reader = conn.execute(select(S.users).where(S.users.c.id == int(reader_id))).mappings().first()
            if reader is None or reader["role"] not in (REVIEWER, ADMIN):
                raise InputError(f"user #{reader_id} is not a reviewer")
            if st["updated_by"] and st["updated_by"] == (reader["email"] or reader["name"]):
                raise InputError(f"{st['updated_by']} gave the first label; ask another reviewer")
            conn.execute(delete(S.second_reads).where(S.second_reads.c.image_id == image_id))
            conn.execute(insert(S.second_reads).values(
                image_id=image_id, reader_id=int(reader_id), first_label=st["label"], first_by=st["updated_by"],
                requested_by=self.actor.label if self.actor else "local", requested_at=at))

    def _blind_ids(self, conn: Connection) -> set[str]:
        """Slides whose first label the bound user may not see yet (their pending second reads)."""
        if self.actor is None:
            return set()
        row = self._user_row(conn, self.actor)
        if row is None:
            return set()
        return set(conn.execute(select(S.second_reads.c.image_id).where(
            S.second_reads.c.reader_id == row["id"], S.second_reads.c.submitted_at.is_(None))).scalars())

    def blind_slides(self) -> set[str]:
        """The bound user's pending blind second reads."""
        with self._read() as conn:
            return self._blind_ids(conn)

    def submit_second_read(self, image_id: str, label: str) -> dict[str, Any]:
        """The bound reviewer's blind read of a slide; afterwards both reads are shown. Returns the read."""
        classes = self.classes()
        if classes and label not in classes and label != OTHER:
            raise InputError(f"unknown class {label!r} (known: {', '.join(classes)}, {OTHER})")
        with self._write() as conn:
            me = self._require(conn, REVIEWER)
            if me is None:
                raise AccessDenied("a second read needs a signed-in reviewer")
            row = conn.execute(select(S.second_reads).where(S.second_reads.c.image_id == image_id)).mappings().first()
            if row is None or row["reader_id"] != me["id"]:
                raise InputError(f"slide {image_id!r}: no second read was asked of you")
            if row["submitted_at"] is not None:
                raise InputError(f"slide {image_id!r}: your second read was already submitted")
            conn.execute(update(S.second_reads).where(S.second_reads.c.image_id == image_id)
                         .values(second_label=label, submitted_at=now_iso()))
            return dict(conn.execute(select(S.second_reads).where(S.second_reads.c.image_id == image_id))
                        .mappings().first() or {})

    def second_reads(self) -> list[dict[str, Any]]:
        """Every second read with the second reader's name (``second_by``); a pending read has no second label."""
        with self._read() as conn:
            rows = conn.execute(select(S.second_reads, S.users.c.email, S.users.c.name)
                                .join(S.users, S.users.c.id == S.second_reads.c.reader_id, isouter=True)
                                .order_by(S.second_reads.c.image_id)).mappings().all()
            blind = self._blind_ids(conn)
        out = []
        for r in rows:
            d = {k: r[k] for k in r if k not in ("email", "name")}
            d["second_by"] = r["email"] or r["name"] or f"#{r['reader_id']}"
            if r["image_id"] in blind:
                d["first_label"] = d["first_by"] = None  # blind: hidden from the pending second reader
            out.append(d)
        return out
