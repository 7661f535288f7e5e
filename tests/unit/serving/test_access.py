"""Who may read the page and the read API (streams/serving/access.py, CONTRACT.md section 6)."""

from __future__ import annotations

import pytest

from streams.serving.access import (
    COOKIE_NAME,
    allowed,
    bearer,
    cleared_cookie,
    safe_next,
    session_cookie,
    session_value,
)

TOKEN = "s3cret"


@pytest.mark.parametrize(("header", "token"), [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
                                               ("Bearer", None), ("Bearer ", None), ("", None), (None, None)])
def test_bearer_reads_the_token_of_a_bearer_header_only(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_without_a_token_everything_is_open() -> None:
    assert allowed(None, {}, {})
    assert allowed("", {}, {})


def test_with_a_token_a_request_needs_the_bearer_header_or_the_session_cookie() -> None:
    assert not allowed(TOKEN, {}, {})
    assert allowed(TOKEN, {"Authorization": f"Bearer {TOKEN}"}, {})
    assert not allowed(TOKEN, {"Authorization": "Bearer s3cre"}, {})
    assert not allowed(TOKEN, {"Authorization": f"Basic {TOKEN}"}, {})
    assert allowed(TOKEN, {}, {COOKIE_NAME: session_value(TOKEN)})
    assert not allowed(TOKEN, {}, {COOKIE_NAME: TOKEN})  # the cookie holds an HMAC, never the token
    assert not allowed(TOKEN, {}, {COOKIE_NAME: session_value("other")})
    assert not allowed(TOKEN, {}, {"other": session_value(TOKEN)})


def test_the_session_cookie_is_http_only_strict_and_secure_over_https() -> None:
    cookie = session_cookie(TOKEN)
    assert cookie.startswith(f"{COOKIE_NAME}={session_value(TOKEN)}; Path=/;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert session_cookie(TOKEN, secure=True).endswith("; Secure")
    assert TOKEN not in session_value(TOKEN)
    assert "Max-Age=0" in cleared_cookie()


@pytest.mark.parametrize(("path", "where"), [("/", "/"), ("/?x=1", "/?x=1"), (None, "/"), ("", "/"),
                                             ("https://evil.example/", "/"), ("//evil.example/", "/"),
                                             ("/\\evil.example", "/"), ("javascript:alert(1)", "/")])
def test_after_login_the_page_goes_to_a_local_path_only(path: str | None, where: str) -> None:
    assert safe_next(path) == where
