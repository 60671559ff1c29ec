"""Sign-in glue: Streamlit's ``st.login`` / ``st.user`` when the secrets have an ``[auth]`` section, else local mode.

Local mode (no ``[auth]``): nothing here shows anything; a reviewer types their name. Sign-in mode: every page
waits behind the sign-in screen, the review store is bound to the signed-in user (roles from the database), and
the tile routes refuse requests without a session (``core.review.tile_guard``).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlparse

import streamlit as st

from core.errors import SlideLensError
from core.review.auth import Identity, auth_configured, identity_from_claims
from ui.safe import md

_SECRET_TTL_S = 5.0
_SECRET: tuple[float, str | None] = (-1e9, None)  # (when read, the cookie secret or None)


def _auth_section() -> dict[str, Any] | None:
    try:
        secrets = st.secrets
        if not auth_configured(secrets):
            return None
        return dict(secrets["auth"])
    except Exception:  # noqa: BLE001 - no secrets file (or an unreadable one): local mode
        return None


def auth_enabled() -> bool:
    """Whether sign-in is configured (an ``[auth]`` section with redirect_uri and cookie_secret in the secrets)."""
    return _auth_section() is not None


def cookie_secret() -> str | None:
    """The session cookie's secret when sign-in is on (for the tile routes), else None. Read again at most every
    few seconds: reading the secrets costs ~0.1 ms, a tile request ~0.5 ms in all."""
    global _SECRET
    at, value = _SECRET
    now = time.monotonic()
    if now - at > _SECRET_TTL_S:
        auth = _auth_section()
        value = str(auth["cookie_secret"]) if auth else None
        _SECRET = (now, value)
    return value


def _provider_problem(auth: dict[str, Any]) -> str | None:
    """One line when the provider's discovery document cannot be fetched (down, wrong URL), else None."""
    url = auth.get("server_metadata_url") or next(
        (v.get("server_metadata_url") for v in auth.values() if isinstance(v, dict)), None)
    if not url:
        return "the [auth] section has no server_metadata_url; see the README's 'Sign-in' section"
    import httpx

    try:
        r = httpx.get(str(url), timeout=5)
        r.raise_for_status()
        r.json()
    except (httpx.HTTPError, ValueError) as exc:
        host = urlparse(str(url)).netloc or str(url)
        return f"the sign-in provider at {host} does not answer ({type(exc).__name__}); try again later"
    return None


def signed_in_identity() -> Identity | None:
    """The signed-in user (None in local mode or before sign-in)."""
    if not auth_enabled():
        return None
    try:
        user = st.user
        if not user.get("is_logged_in"):
            return None
        return identity_from_claims(dict(user))
    except SlideLensError:
        return None


def require_sign_in() -> Identity | None:
    """Local mode: None. Sign-in mode: the signed-in identity, or the sign-in screen (then the script stops)."""
    auth = _auth_section()
    if auth is None:
        return None
    user = st.user
    if user.get("is_logged_in"):
        try:
            return identity_from_claims(dict(user))
        except SlideLensError as exc:
            st.error(md(str(exc)))
            st.button("Sign out", on_click=st.logout)
            st.stop()
    st.title("SlideLens")
    st.write("Sign in to review this cohort.")
    problem = _provider_problem(auth)
    if problem:
        st.error(md(f"Cannot sign in: {problem}."))
        st.button("Try again", key="auth_retry")
    else:
        st.button("Sign in", key="auth_sign_in", type="primary", on_click=st.login)
    st.stop()
    return None


def account_box(role: str | None) -> None:
    """The sidebar's 'Signed in as ... (role)' line and the sign-out button (sign-in mode only)."""
    ident = signed_in_identity()
    if ident is None:
        return
    with st.sidebar:
        st.caption(md(f"Signed in as {ident.label} · {role or 'viewer'}"))
        st.button("Sign out", key="auth_sign_out", on_click=st.logout)
