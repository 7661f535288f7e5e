"""Who may read the page and the read API (CONTRACT.md section 6): pure checks, no I/O.

With `WEB_TOKEN` set, a request needs `Authorization: Bearer <WEB_TOKEN>` or the session cookie that the
page's login form sets. The cookie holds an HMAC of the token, not the token itself, so a leaked cookie does
not reveal the token (it is worth as much as the token while that is unchanged). `/metrics` stays open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

COOKIE_NAME = "attribution_session"
COOKIE_MAX_AGE_S = 30 * 86_400
_SESSION_CONTEXT = b"attribution web session v1"


def session_value(token: str) -> str:
    """The cookie value that stands for `token`."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def allowed(token: str | None, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
    """Whether a request with these headers and cookies may read: always when no token is configured."""
    if not token:
        return True
    if token_matches(bearer(headers.get("Authorization")), token):
        return True
    cookie = cookies.get(COOKIE_NAME)
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def session_cookie(token: str, secure: bool = False) -> str:
    """A `Set-Cookie` value for a request that gave the right token on the login form."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE_NAME}={session_value(token)}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict{flags}"


def cleared_cookie() -> str:
    return f"{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a local path only (never another site), `/` otherwise."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
