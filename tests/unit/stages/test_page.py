"""The live page's files and its thin handlers (streams/stages/page.py)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from streams.config import Settings
from streams.serving.access import COOKIE_NAME, session_value
from streams.stages.page import ASSETS, content_type, guard, login_form, page_file

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "streams" / "serving" / "page"
PIN = orjson.loads((PAGE / "vendor" / "PIN.json").read_bytes())


def test_the_shipped_uplot_files_are_the_pinned_release() -> None:
    assert PIN["package"] == "uplot" and re.fullmatch(r"\d+\.\d+\.\d+", PIN["version"])
    for name, sha256 in PIN["files"].items():
        assert hashlib.sha256((PAGE / "vendor" / name).read_bytes()).hexdigest() == sha256, name


def test_the_page_loads_only_files_the_engine_serves() -> None:
    html = page_file("index.html").decode()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced and not [url for url in referenced if "//" in url]  # no CDN, no other site
    assert {url.removeprefix("/page/") for url in referenced if url.startswith("/page/")} == set(ASSETS)
    assert all(page_file(name) for name in ASSETS)
    assert "innerHTML" not in page_file("app.js").decode()  # figures and names go in as text only


def test_package_data_ships_every_page_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["streams"]
    files = [str(path.relative_to(ROOT / "streams")) for path in PAGE.rglob("*") if path.is_file()]
    assert files and [f for f in files if not any(fnmatch(f, p) for p in patterns)] == []


def test_assets_have_their_content_type() -> None:
    assert content_type("vendor/uPlot.iife.min.js").startswith("text/javascript")
    assert content_type("style.css").startswith("text/css")


def test_the_login_form_escapes_where_it_goes_next() -> None:
    form = login_form("wrong", '/"><script>x</script>').decode()
    assert "<script>" not in form and "&quot;&gt;&lt;script&gt;" in form and "wrong" in form


class FakeWeb:
    def bytes(self, body: bytes, *, content_type: str | None = None, status: int = 200,
              headers: dict[str, str] | None = None) -> tuple[int, str | None, bytes]:
        return status, content_type, body


async def ok(web: Any, request: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", b"[]"


def call(token: str | None, page: bool = False, headers: dict[str, str] | None = None,
         cookies: dict[str, str] | None = None) -> tuple[int, str | None, bytes]:
    w = SimpleNamespace(settings=Settings(web_token=token))
    request = SimpleNamespace(headers=headers or {}, cookies=cookies or {})
    return asyncio.run(guard(w, ok, page=page)(FakeWeb(), request))  # type: ignore[arg-type]


def test_guard_lets_everything_through_without_a_token() -> None:
    assert call(None)[0] == 200


def test_guard_answers_401_json_for_the_api_and_the_login_form_for_the_page() -> None:
    status, kind, body = call("t0k")
    assert (status, kind) == (401, "application/json") and b"Bearer" in body
    status, kind, body = call("t0k", page=True)
    assert (status, kind) == (401, "text/html") and b'name="token"' in body


def test_guard_serves_a_request_with_the_token_or_the_session_cookie() -> None:
    assert call("t0k", headers={"Authorization": "Bearer t0k"})[0] == 200
    assert call("t0k", page=True, cookies={COOKIE_NAME: session_value("t0k")})[0] == 200


def test_the_feed_hands_each_topic_to_its_board_and_skips_what_is_not_json() -> None:
    from streams.stages.page import Feed

    feed = Feed(SimpleNamespace(settings=Settings(metrics_window_ms=10_000)))  # type: ignore[arg-type]
    feed.ingest("metrics.channel", b"email", orjson.dumps({"channel": "email", "campaign": None,
                                                           "window_start": 0, "spend": 2.0}))
    feed.ingest("signals", b"email", orjson.dumps({"channel": "email", "campaign": None, "action": "pause"}))
    feed.ingest("attributions", b"o1", orjson.dumps({"conversion_id": "o1", "type": "order", "ts": 5, "models": {
        "last_click": [{"channel": "email", "weight": 1.0, "revenue": 9.0}]}}))
    feed.ingest("attributions", b"bad", b"{not json")
    assert [m["spend"] for m in feed.trends.rows()] == [2.0]
    assert [s["action"] for s in feed.signals.rows()] == ["pause"]
    assert feed.models.view()["rows"][0]["revenue"] == 9.0
    assert feed.ignored == 1
