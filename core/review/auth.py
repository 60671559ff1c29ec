"""Who is signed in and what they may do: identities, roles, and the check of Streamlit's signed session cookie.

Sign-in is on when the app's secrets have an ``[auth]`` section (``st.login`` with any OpenID Connect provider);
without it SlideLens is a single-user local app and a reviewer is a typed name. Users are keyed by issuer +
subject; their role (viewer < reviewer < admin) lives in the review database. No streamlit import here: the same
rules serve the pages, the store and the tile routes.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError, SlideLensError

VIEWER, REVIEWER, ADMIN = "viewer", "reviewer", "admin"
ROLES = (VIEWER, REVIEWER, ADMIN)  # in order of power
USER_COOKIE = "_streamlit_user"  # the cookie st.login sets (itsdangerous, salted with its name)
SESSION_MAX_AGE_S = 30 * 24 * 3600  # st.login's cookie lifetime; an older signed cookie is refused


class AccessDenied(SlideLensError):
    """The signed-in user's role does not allow this action."""


@dataclass(frozen=True)
class Identity:
    """A signed-in user as the OpenID provider names them; ``key`` (issuer + subject) is the stable id."""

    issuer: str
    subject: str
    email: str = ""
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.issuer} {self.subject}"

    @property
    def label(self) -> str:
        """What the audit log and the pages show: the email, else the name, else the subject."""
        return self.email or self.name or self.subject


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """An identity from ID-token claims (``st.user``); ``InputError`` when issuer or subject is missing."""
    iss, sub = str(claims.get("iss") or "").strip(), str(claims.get("sub") or "").strip()
    if not iss or not sub:
        raise InputError("the sign-in token has no issuer ('iss') or subject ('sub'); cannot identify the user")
    return Identity(issuer=iss[:255], subject=sub[:255], email=str(claims.get("email") or "")[:255],
                    name=str(claims.get("name") or claims.get("preferred_username") or "")[:255])


def check_role(role: str | None, needed: str) -> None:
    """Raise ``AccessDenied`` unless ``role`` is at least ``needed`` (an unknown or missing role counts as viewer)."""
    have = ROLES.index(role) if role in ROLES else 0
    if have < ROLES.index(needed):
        raise AccessDenied(f"your role is {role if role in ROLES else VIEWER}; this needs {needed} "
                           "(ask an admin to change your role)")


def valid_role(role: str) -> str:
    """The role name, checked (``InputError`` naming the known roles)."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    return role


def cohort_admins(cohort_toml: str | Path | None) -> tuple[str, ...]:
    """The first admins named in the cohort file's ``[access] admins = ["email", ...]`` (lower-cased)."""
    if cohort_toml is None or not Path(cohort_toml).is_file():
        return ()
    try:
        data = tomllib.loads(Path(cohort_toml).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return ()
    admins = (data.get("access") or {}).get("admins") or []
    if isinstance(admins, str):
        admins = [admins]
    return tuple(str(a).strip().lower() for a in admins if str(a).strip())


def auth_configured(secrets: Mapping[str, Any]) -> bool:
    """Whether the secrets configure sign-in (an ``[auth]`` section with a redirect URI and a cookie secret)."""
    auth = secrets.get("auth") if hasattr(secrets, "get") else None
    return bool(auth) and bool(auth.get("redirect_uri")) and bool(auth.get("cookie_secret"))


def session_claims(cookies: Mapping[str, str], secret: str, now: float | None = None,
                   max_age_s: int = SESSION_MAX_AGE_S) -> dict[str, Any] | None:
    """The signed-in user's claims from the request's ``_streamlit_user`` cookie, or None when the cookie is
    missing, forged (bad signature), older than ``max_age_s``, malformed, or not a signed-in session."""
    from itsdangerous import BadData, URLSafeTimedSerializer

    raw = cookies.get(USER_COOKIE)
    if not raw or not secret:
        return None
    ser = URLSafeTimedSerializer(secret, salt=USER_COOKIE)
    try:
        value, stamp = ser.loads(raw, max_age=max_age_s, return_timestamp=True)
    except BadData:
        return None
    if now is not None and now - stamp.timestamp() > max_age_s:
        return None
    if isinstance(value, str) and value.startswith("{"):
        try:
            payload = json.loads(value)
        except json.JSONDecodeError:
            return None
    else:
        return None  # a chunked cookie (huge claims) is not used for tiles
    if not isinstance(payload, dict) or not payload.get("is_logged_in") or not payload.get("sub"):
        return None
    return payload


def sign_session(claims: Mapping[str, Any], secret: str, at: float | None = None) -> str:
    """A ``_streamlit_user`` cookie value for ``claims`` signed at ``at`` (tests: forged and expired sessions)."""
    from itsdangerous import URLSafeTimedSerializer

    ser = URLSafeTimedSerializer(secret, salt=USER_COOKIE) if at is None else _fixed_time(secret, int(at))
    return ser.dumps(json.dumps(dict(claims, is_logged_in=True)))


def _fixed_time(secret: str, stamp: int) -> Any:
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    class _Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=USER_COOKIE, signer=_Signer)
