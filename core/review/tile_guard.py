"""The tile routes behind sign-in: with sign-in on, a ``/tiles/`` request without a valid signed-in session gets 401.

``guard_routes(routes, secret)`` wraps each route's endpoint; ``secret()`` returns the cookie secret when sign-in
is configured, else None (local mode: the routes answer as before). A valid session is Streamlit's
``_streamlit_user`` cookie, signed with that secret, not older than ``core.review.auth.SESSION_MAX_AGE_S``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from core.review.auth import session_claims


def refusal(request: Request, secret: Callable[[], str | None]) -> Response | None:
    """The 401 answer for a request without a valid session while sign-in is on, else None."""
    key = secret()
    if key is not None and session_claims(request.cookies, key) is None:
        return PlainTextResponse("sign in to SlideLens to see slide tiles", status_code=401,
                                 headers={"Cache-Control": "no-store"})
    return None


def _guarded(endpoint: Callable[[Request], Any], secret: Callable[[], str | None]) -> Callable[[Request], Any]:
    if inspect.iscoroutinefunction(endpoint):
        async def guarded_async(request: Request) -> Response:
            return refusal(request, secret) or await endpoint(request)

        return guarded_async

    def guarded(request: Request) -> Response:  # a plain endpoint: Starlette runs it in its thread pool
        return refusal(request, secret) or endpoint(request)

    return guarded


def guard_routes(routes: list[Route], secret: Callable[[], str | None]) -> list[Route]:
    """The same routes, each refusing (401) a request without a valid session while ``secret()`` is not None."""
    return [Route(r.path, _guarded(r.endpoint, secret), methods=sorted(r.methods or {"GET"}), name=r.name)
            for r in routes]
