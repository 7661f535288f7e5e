"""The pixel's consent mode in a real browser (CONTRACT.md section 10): Debian's chromium through chromium-driver
against the collector on the real broker. With `data-consent="required"` no cookie is set and events carry
`consent=false` (and no identifier of the visitor) until the page calls `attribution.consent(true)`;
`attribution.consent(false)` drops the cookie again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from streams.commands.collector import NO_CONSENT_TID, TID_COOKIE, build_app, start_producer
from streams.config import Settings
from streams.core.events import INPUT_TOPICS
from tests.integration.services import consume_all, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PIXEL = Path(__file__).resolve().parents[2] / "deploy" / "pixel" / "pixel.js"


@pytest_asyncio.fixture(loop_scope="session")
async def site(kafka_bootstrap: str) -> AsyncIterator[TestServer]:
    """The collector with a page of the shop and the pixel on the same site, as the pixel's header asks."""
    await create_topics(kafka_bootstrap, INPUT_TOPICS, partitions=4)
    producer, _ = await start_producer(kafka_bootstrap)
    app = build_app(Settings.from_env({"KAFKA_BOOTSTRAP": kafka_bootstrap}), producer)

    async def page(request: web.Request) -> web.Response:
        collector = f"http://{request.host}"
        return web.Response(content_type="text/html", text=(
            "<!doctype html><html><body><h1>Shop</h1>"
            f'<script src="/pixel.js" data-collector="{collector}" data-consent="required"></script>'
            "</body></html>"))

    async def pixel(request: web.Request) -> web.Response:
        return web.Response(body=PIXEL.read_bytes(), content_type="text/javascript")

    app.router.add_get("/shop", page)
    app.router.add_get("/pixel.js", pixel)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server
    await producer.stop()


async def events_of(bootstrap: str, topic: str, campaign: str, count: int) -> list[dict[str, Any]]:
    """The events on `topic` marked with this test's campaign, once `count` are there."""
    def marked(records: list[Any]) -> list[dict[str, Any]]:
        found = []
        for record in records:
            try:
                value = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict) and value.get("campaign") == campaign:
                found.append(value)
        return found

    records = await consume_all(bootstrap, topic, until=lambda rs: len(marked(rs)) >= count, timeout=30)
    found = marked(records)
    assert len(found) >= count, f"{len(found)} of {count} events of campaign {campaign} reached {topic}"
    return found


def tid_cookie(browser: Any) -> str | None:
    return next((c["value"] for c in browser.get_cookies() if c["name"] == TID_COOKIE), None)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return result


async def test_no_cookie_and_consent_false_until_the_page_gives_consent_and_none_again_after_it_withdraws(
    kafka_bootstrap: str, site: TestServer, browser: Any
) -> None:
    campaign = f"consent-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(browser.get, str(site.make_url(f"/shop?utm_source=newsletter&utm_campaign={campaign}")))
    [landing] = await events_of(kafka_bootstrap, "clicks", campaign, 1)  # a tracked landing is a click
    assert landing["consent"] is False and landing["tracking_id"] == NO_CONSENT_TID
    assert tid_cookie(browser) is None, "a cookie was set before consent"

    browser.execute_script(f"attribution.consent(true); attribution.impression({{channel: 'display', "
                           f"campaign: '{campaign}'}});")
    [consented] = await events_of(kafka_bootstrap, "impressions", campaign, 1)
    cookie = await until(lambda: tid_cookie(browser))
    assert cookie, "no cookie after consent"
    assert "consent" not in consented and consented["tracking_id"] == cookie

    browser.execute_script(f"attribution.consent(false); attribution.impression({{channel: 'display', "
                           f"campaign: '{campaign}'}});")
    assert await until(lambda: tid_cookie(browser) is None), "the cookie stayed after consent was withdrawn"
    impressions = await events_of(kafka_bootstrap, "impressions", campaign, 2)
    withdrawn = [event for event in impressions if event["event_id"] != consented["event_id"]]
    assert [(e["consent"], e["tracking_id"]) for e in withdrawn] == [(False, NO_CONSENT_TID)]
