"""Who is looking at the dashboard: a read token (any role; the dashboard is viewer-level).

Two ways to present it, checked by :meth:`headwater.serve.access.TokenStore.authenticate`
on **every** request (so a revoked token stops working at the next one, a live stream at
its next tick):

- ``Authorization: Bearer hw_rt_…`` (scripts: ``curl -H ... /dashboard/pages/x/charts/y.csv``);
- the session cookie :data:`COOKIE`, set by the login form (``POST /dashboard/login``) once
  the token authenticated. The cookie holds the token itself and nothing is stored on the
  server (``tokens.json`` keeps only digests): the browser is the only place the token lives
  after login. It is ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (no
  other site's page or link makes the browser send it: no CSRF on these GET-only reads),
  ``Path=`` the dashboard's mount point (not sent to the collector or the API), ``Secure`` when served over
  HTTPS, and lasts :data:`SESSION_S` seconds or until ``POST /dashboard/logout``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from headwater.serve.access import Principal, TokenStore

COOKIE = "headwater_dashboard"
SESSION_S = 12 * 3600


def credential(request: Request) -> str | None:
    """The presented token: the bearer header's, else the cookie's; ``None`` without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(COOKIE) or None


def principal(request: Request, tokens: TokenStore) -> Principal:
    """The request's principal; :class:`~headwater.errors.UnauthorizedError` when the token
    is missing, unknown or revoked."""
    return tokens.authenticate(credential(request))


def start_session(response: Response, token: str, root: str, secure: bool) -> Response:
    """Set the session cookie holding ``token`` for the dashboard mounted at ``root``
    (``"/dashboard"``) on ``response`` (module docstring)."""
    response.set_cookie(COOKIE, token, max_age=SESSION_S, path=root or "/", secure=secure, httponly=True, samesite="strict")
    return response


def end_session(response: Response, root: str, secure: bool) -> Response:
    response.delete_cookie(COOKIE, path=root or "/", secure=secure, httponly=True, samesite="strict")
    return response


def safe_next(target: str | None, root: str, default: str) -> str:
    """``target`` if it is a path under ``root`` on this server, else ``default`` (a login
    link must not redirect to another site: ``//evil.example``, ``https://…``)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(root + "/") or "\\" in target:
        return default
    return target
