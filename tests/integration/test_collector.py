"""The HTTP collector against a real Apache Kafka broker: every row of CONTRACT.md section 5.

Each test checks what reached the topics, not only the HTTP answer. The input topics are shared
with other tests, so each test marks its events with a fresh tracking ID (or channel) and reads
the topics filtered by it. "Nothing was produced" is proven with a sentinel: after the refused
request, a valid event with the same key goes to the same topic (so the same partition); once the
sentinel is read, anything the refused request had produced would have been read before it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.commands.collector import GIF, MAX_BODY_BYTES, TID_COOKIE, build_app, start_producer
from streams.config import Settings
from streams.core.events import INPUT_TOPICS
from tests.integration.services import BROWSER_USER_AGENT, Records, consume_all, create_topics, free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

KEY = "write-key-1"
OTHER_KEY = "write-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
READ_TIMEOUT = 30.0


# --- fixtures ------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    await create_topics(kafka_bootstrap, INPUT_TOPICS, partitions=4)
    started, idempotent = await start_producer(kafka_bootstrap)
    assert idempotent, "Apache Kafka supports the idempotent producer; the collector must use it there"
    yield started
    await started.stop()


def settings_for(bootstrap: str, keys: tuple[str, ...] = (KEY, OTHER_KEY)) -> Settings:
    return replace(Settings.from_env({}), kafka_bootstrap=bootstrap, collector_keys=keys)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(kafka_bootstrap: str, producer: AIOKafkaProducer) -> AsyncIterator[TestServer]:
    async with TestServer(build_app(settings_for(kafka_bootstrap), producer)) as test_server:
        yield test_server


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client with its own cookie jar (unsafe: the server is an IP address) and a browser's
    User-Agent (the collector drops requests from known bots)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     headers={"User-Agent": BROWSER_USER_AGENT}) as session:
        yield session


async def serve(app) -> TestServer:
    test_server = TestServer(app)
    await test_server.start_server()
    return test_server


# --- helpers -------------------------------------------------------------------------------------


def tid() -> str:
    return f"t-{uuid.uuid4().hex}"


def now_ms() -> int:
    return int(time.time() * 1000)


def value_of(record) -> Any:
    try:
        return orjson.loads(record.value)
    except (orjson.JSONDecodeError, TypeError):
        return None  # other tests put bad inputs on the same topics


def events_where(records: Records, match: Callable[[dict], bool]) -> list[tuple[bytes | None, dict]]:
    found = []
    for record in records:
        value = value_of(record)
        if isinstance(value, dict) and match(value):
            found.append((record.key, value))
    return found


async def read_until(bootstrap: str, topic: str, match: Callable[[dict], bool], count: int = 1) -> list:
    """(key, event) of `topic` matching `match`, once `count` of them are there (fails on timeout)."""
    records = await consume_all(
        bootstrap, topic, until=lambda rs: len(events_where(rs, match)) >= count, timeout=READ_TIMEOUT
    )
    found = events_where(records, match)
    assert len(found) >= count, f"expected {count} matching events on {topic}, found {len(found)}"
    return found


def impression(tracking_id: str, **extra: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": "impression", "ts": now_ms(), "tracking_id": tracking_id,
            "channel": "display", **extra}


def click(tracking_id: str, **extra: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": "click", "ts": now_ms(), "tracking_id": tracking_id,
            "channel": "google_ads", "campaign": "brand", **extra}


def order(tracking_id: str, **extra: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": "order", "ts": now_ms(), "tracking_id": tracking_id,
            "order_id": f"o-{uuid.uuid4().hex[:8]}", "revenue": 120.0, "currency": "USD", **extra}


def spend(channel: str, **extra: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": "spend", "ts": now_ms(), "channel": channel, "amount": 50.0,
            **extra}


async def post_batch(http: aiohttp.ClientSession, server: TestServer, events: list[dict]) -> dict:
    async with http.post(server.make_url("/v1/events"), data=orjson.dumps(events), headers=AUTH) as response:
        body = await response.json()
        assert response.status == 202, body
        return body


async def only_sentinel_arrived(
    bootstrap: str, http: aiohttp.ClientSession, server: TestServer, topic: str, sentinel: dict,
    mark: Callable[[dict], bool],
) -> None:
    """Send `sentinel` (same key as the refused events) and check it is the only event marked `mark`."""
    await post_batch(http, server, [sentinel])
    found = await read_until(bootstrap, topic, lambda e: e.get("event_id") == sentinel["event_id"])
    records = await consume_all(bootstrap, topic, timeout=READ_TIMEOUT)
    marked = [event for _, event in events_where(records, mark)]
    assert found and marked == [sentinel], f"refused events reached {topic}: {marked}"


# --- GET /px ---------------------------------------------------------------------------------------


async def test_pixel_impression_lands_on_impressions_with_the_contract_fields(kafka_bootstrap, server, http):
    t = tid()
    before = now_ms()
    async with http.get(server.make_url("/px"), params={"e": "impression", "tid": t, "ch": "display",
                                                         "cmp": "autumn"}) as response:
        assert response.status == 200
    [(key, event)] = await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t)
    assert key == t.encode()
    assert uuid.UUID(event.pop("event_id")).version == 4
    assert before <= event.pop("ts") <= now_ms()
    assert event == {"type": "impression", "tracking_id": t, "channel": "display", "campaign": "autumn"}


async def test_pixel_click_lands_on_clicks_with_its_affiliate(kafka_bootstrap, server, http):
    t = tid()
    params = {"e": "click", "tid": t, "ch": "affiliate", "cmp": "spring", "aff": "anna_fit", "ts": "1763800000000",
              "eid": f"e-{t}"}
    async with http.get(server.make_url("/px"), params=params) as response:
        assert response.status == 200
    [(key, event)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)
    assert key == t.encode()
    assert event == {"event_id": f"e-{t}", "type": "click", "ts": 1763800000000, "tracking_id": t,
                     "channel": "affiliate", "campaign": "spring", "affiliate_id": "anna_fit"}


async def test_pixel_lead_lands_on_leads_with_its_customer_id(kafka_bootstrap, server, http):
    t = tid()
    async with http.get(server.make_url("/px"), params={"e": "lead", "tid": t, "cid": "cust-42"}) as response:
        assert response.status == 200
    [(key, event)] = await read_until(kafka_bootstrap, "leads", lambda e: e.get("tracking_id") == t)
    assert key == t.encode()
    assert event["type"] == "lead" and event["customer_id"] == "cust-42"
    assert set(event) == {"event_id", "type", "ts", "tracking_id", "customer_id"}


async def test_pixel_answers_a_1x1_gif_that_is_never_cached(kafka_bootstrap, server, http):
    t = tid()
    async with http.get(server.make_url("/px"), params={"e": "impression", "tid": t, "ch": "display"}) as response:
        assert response.status == 200
        assert response.content_type == "image/gif"
        assert "no-store" in response.headers["Cache-Control"]
        body = await response.read()
    assert body == GIF and body.startswith(b"GIF89a")
    assert int.from_bytes(body[6:8], "little") == 1 and int.from_bytes(body[8:10], "little") == 1
    await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t)


async def test_pixel_without_tid_or_cookie_sets_a_first_party_tid_cookie_and_uses_it(kafka_bootstrap, server, http):
    channel = f"ch-{uuid.uuid4().hex[:12]}"
    async with http.get(server.make_url("/px"), params={"e": "impression", "ch": channel}) as response:
        assert response.status == 200
        cookie = response.cookies[TID_COOKIE]
    assert cookie.value
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) >= 360 * 86_400
    [(key, event)] = await read_until(kafka_bootstrap, "impressions", lambda e: e.get("channel") == channel)
    assert event["tracking_id"] == cookie.value and key == cookie.value.encode()


async def test_pixel_reuses_the_tid_cookie_and_does_not_set_a_new_one(kafka_bootstrap, server, http):
    channel = f"ch-{uuid.uuid4().hex[:12]}"
    url = server.make_url("/px")
    async with http.get(url, params={"e": "impression", "ch": channel}) as first:
        issued = first.cookies[TID_COOKIE].value
    async with http.get(url, params={"e": "click", "ch": channel}) as second:
        assert second.status == 200
        assert TID_COOKIE not in second.cookies
    [(_, seen)] = await read_until(kafka_bootstrap, "impressions", lambda e: e.get("channel") == channel)
    [(_, clicked)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("channel") == channel)
    assert seen["tracking_id"] == clicked["tracking_id"] == issued


async def test_pixel_tid_parameter_wins_over_the_cookie(kafka_bootstrap, server, http):
    t = tid()
    http.cookie_jar.update_cookies({TID_COOKIE: "from-cookie"}, server.make_url("/"))
    async with http.get(server.make_url("/px"), params={"e": "lead", "tid": t}) as response:
        assert response.status == 200
        assert TID_COOKIE not in response.cookies
    await read_until(kafka_bootstrap, "leads", lambda e: e.get("tracking_id") == t)


async def test_pixel_accepts_beacon_posts_with_form_and_json_bodies(kafka_bootstrap, server, http):
    form_tid, json_tid = tid(), tid()
    async with http.post(server.make_url("/px"), data={"e": "click", "tid": form_tid, "ch": "email"}) as response:
        assert response.status == 200
    body = orjson.dumps({"e": "click", "tid": json_tid, "ch": "email", "cmp": "nov"})
    async with http.post(server.make_url("/px"), data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
    [(_, by_form)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == form_tid)
    [(_, by_json)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == json_tid)
    assert by_form["channel"] == "email" and by_json["campaign"] == "nov"


async def test_pixel_refuses_an_order_and_nothing_reaches_orders(kafka_bootstrap, server, http):
    t = tid()
    params = {"e": "order", "tid": t, "order_id": "A1", "revenue": "100", "ch": "x"}
    async with http.get(server.make_url("/px"), params=params) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert "/v1/events" in error
    await only_sentinel_arrived(kafka_bootstrap, http, server, "orders", order(t),
                                lambda e: e.get("tracking_id") == t)


async def test_pixel_refuses_spend_and_nothing_reaches_spend(kafka_bootstrap, server, http):
    channel = f"ch-{uuid.uuid4().hex[:12]}"
    async with http.get(server.make_url("/px"), params={"e": "spend", "ch": channel, "amount": "5"}) as response:
        assert response.status == 400
    await only_sentinel_arrived(kafka_bootstrap, http, server, "spend", spend(channel),
                                lambda e: e.get("channel") == channel)


async def test_pixel_invalid_click_is_400_and_not_produced(kafka_bootstrap, server, http):
    t = tid()
    async with http.get(server.make_url("/px"), params={"e": "click", "tid": t}) as response:
        assert response.status == 400
        assert "channel" in (await response.json())["error"]
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


# --- POST /v1/events -------------------------------------------------------------------------------


async def test_batch_produces_the_valid_events_and_names_the_rejected_ones(kafka_bootstrap, server, http):
    t = tid()
    channel = f"ch-{uuid.uuid4().hex[:12]}"
    events = [
        impression(t, note="unknown fields are kept"),              # 0 ok
        {**click(t), "channel": ""},                                # 1 channel too short
        click(t),                                                   # 2 ok, after the bad click: same partition
        {**order(t), "type": "purchase"},                           # 3 unknown type
        order(t, revenue=-5),                                       # 4 revenue < 0
        order(t, promo_code="ANNA10", customer_id="c-1"),           # 5 ok
        spend(channel),                                             # 6 ok, keyed by channel
        "not an object",                                            # 7
        {k: v for k, v in order(t).items() if k != "type"},        # 8 no type
        order(t, currency="XYZ"),                                   # 9 no FX rate
    ]
    async with http.post(server.make_url("/v1/events"), data=orjson.dumps(events), headers=AUTH) as response:
        assert response.status == 202
        body = await response.json()
    assert body["accepted"] == 4
    rejected = {r["index"]: r["error"] for r in body["rejected"]}
    assert sorted(rejected) == [1, 3, 4, 7, 8, 9]
    assert "channel" in rejected[1]
    assert "purchase" in rejected[3]
    assert "revenue" in rejected[4]
    assert "type" in rejected[8]
    assert "XYZ" in rejected[9]

    [(key, seen)] = await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t)
    assert seen == events[0] and key == t.encode()
    clicks = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)
    assert [e for _, e in clicks] == [events[2]]
    orders = await read_until(kafka_bootstrap, "orders", lambda e: e.get("event_id") == events[5]["event_id"])
    records = await consume_all(kafka_bootstrap, "orders", timeout=READ_TIMEOUT)
    assert [e for _, e in events_where(records, lambda e: e.get("tracking_id") == t)] == [events[5]]
    assert orders[0][1] == events[5]
    [(key, spent)] = await read_until(kafka_bootstrap, "spend", lambda e: e.get("channel") == channel)
    assert spent == events[6] and key == channel.encode()


async def test_batch_accepts_json_lines(kafka_bootstrap, server, http):
    t = tid()
    first, second = impression(t), click(t)
    body = orjson.dumps(first) + b"\n\n" + orjson.dumps(second) + b"\r\n"
    async with http.post(server.make_url("/v1/events"), data=body, headers=AUTH) as response:
        assert response.status == 202
        assert await response.json() == {"accepted": 2, "rejected": []}
    [(_, seen)] = await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t)
    [(_, clicked)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)
    assert seen == first and clicked == second


def padded(events: list[dict], size: int) -> bytes:
    body = orjson.dumps(events)
    assert len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"]"


async def test_batch_body_over_1_mib_is_413_and_nothing_is_produced(kafka_bootstrap, server, http):
    t = tid()
    body = padded([click(t)], MAX_BODY_BYTES + 1)
    assert len(body) == MAX_BODY_BYTES + 1
    async with http.post(server.make_url("/v1/events"), data=body, headers=AUTH) as response:
        assert response.status == 413
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


async def test_chunked_batch_body_over_1_mib_is_413_and_nothing_is_produced(kafka_bootstrap, server, http):
    t = tid()
    body = padded([click(t)], MAX_BODY_BYTES + 1)

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    async with http.post(server.make_url("/v1/events"), data=chunks(), headers=AUTH) as response:
        assert response.status == 413
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


async def test_batch_body_of_exactly_1_mib_is_accepted(kafka_bootstrap, server, http):
    t = tid()
    event = click(t)
    body = padded([event], MAX_BODY_BYTES)
    async with http.post(server.make_url("/v1/events"), data=body, headers=AUTH) as response:
        assert response.status == 202
        assert (await response.json())["accepted"] == 1
    [(_, clicked)] = await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)
    assert clicked == event


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer"}])
async def test_batch_without_a_valid_key_is_401_and_nothing_is_produced(kafka_bootstrap, server, http, headers):
    t = tid()
    async with http.post(server.make_url("/v1/events"), data=orjson.dumps([click(t)]), headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"]
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


async def test_batch_accepts_every_configured_key(kafka_bootstrap, server, http):
    t = tid()
    headers = {"Authorization": f"Bearer {OTHER_KEY}"}
    async with http.post(server.make_url("/v1/events"), data=orjson.dumps([click(t)]), headers=headers) as response:
        assert response.status == 202
    await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)


async def test_batch_api_is_closed_when_no_keys_are_configured(kafka_bootstrap, server, producer, http):
    t = tid()
    closed = await serve(build_app(settings_for(kafka_bootstrap, keys=()), producer))
    try:
        for headers in ({}, {"Authorization": "Bearer "}, AUTH):
            async with http.post(closed.make_url("/v1/events"), data=orjson.dumps([click(t)]),
                                 headers=headers) as response:
                assert response.status == 401
                assert "COLLECTOR_KEYS" in (await response.json())["error"]
    finally:
        await closed.close()
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


@pytest.mark.parametrize("body", [b"hello", b"[{\"type\": \"click\"", b"", b"{oops}"])
async def test_batch_body_that_is_not_json_is_400(server, http, body):
    async with http.post(server.make_url("/v1/events"), data=body, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["error"]


async def test_batch_json_lines_with_a_broken_line_is_400_and_nothing_is_produced(kafka_bootstrap, server, http):
    t = tid()
    body = orjson.dumps(click(t)) + b"\n{not json}\n"
    async with http.post(server.make_url("/v1/events"), data=body, headers=AUTH) as response:
        assert response.status == 400
        assert "line 2" in (await response.json())["error"]
    await only_sentinel_arrived(kafka_bootstrap, http, server, "clicks", click(t),
                                lambda e: e.get("tracking_id") == t)


# --- GET /healthz ----------------------------------------------------------------------------------


async def test_healthz_is_200_when_the_broker_is_reachable(server, http):
    async with http.get(server.make_url("/healthz")) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_healthz_is_503_with_a_dead_bootstrap_address(producer, http):
    dead = f"127.0.0.1:{free_port()}"
    unhealthy = await serve(build_app(settings_for(dead), producer))
    try:
        async with http.get(unhealthy.make_url("/healthz")) as response:
            assert response.status == 503
            assert (await response.json())["status"] != "ok"
    finally:
        await unhealthy.close()


# --- GET /metrics ----------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_events_and_produce_latency(kafka_bootstrap, producer, http):
    t = tid()
    app_server = await serve(build_app(settings_for(kafka_bootstrap), producer))
    try:
        url = app_server.make_url
        for _ in range(2):
            async with http.get(url("/px"), params={"e": "impression", "tid": t, "ch": "display"}) as response:
                assert response.status == 200
        async with http.get(url("/px"), params={"e": "order", "tid": t}) as response:
            assert response.status == 400
        async with http.get(url("/px"), params={"e": "click", "tid": t}) as response:
            assert response.status == 400
        batch = orjson.dumps([order(t), click(t), {"type": "nope"}])
        async with http.post(url("/v1/events"), data=batch, headers=AUTH) as response:
            assert response.status == 202
        async with http.post(url("/v1/events"), data=batch, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.post(url("/v1/events"), data=b"x" * (MAX_BODY_BYTES + 1), headers=AUTH) as response:
            assert response.status == 413
        async with http.get(url("/healthz")) as response:
            assert response.status == 200
        async with http.get(url("/metrics")) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            found = samples(await response.text())
    finally:
        await app_server.close()

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("collector_requests_total", route="px", status="200") == 2
    assert value("collector_requests_total", route="px", status="400") == 2
    assert value("collector_requests_total", route="events", status="202") == 1
    assert value("collector_requests_total", route="events", status="401") == 1
    assert value("collector_requests_total", route="events", status="413") == 1
    assert value("collector_requests_total", route="healthz", status="200") == 1
    assert value("collector_events_produced_total", type="impression") == 2
    assert value("collector_events_produced_total", type="order") == 1
    assert value("collector_events_produced_total", type="click") == 1
    assert value("collector_events_rejected_total", route="px") == 2
    assert value("collector_events_rejected_total", route="events") == 1
    assert value("collector_produce_latency_seconds_count") == 3  # two pixels, one batch
    assert value("collector_produce_latency_seconds_sum") > 0

    # and the counters agree with what reached the topics
    await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t, count=2)
    await read_until(kafka_bootstrap, "orders", lambda e: e.get("tracking_id") == t)
    await read_until(kafka_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)


@pytest.mark.parametrize("user_agent", [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
    "curl/8.5.0",
])
async def test_a_known_bot_gets_the_gif_and_nothing_is_produced_or_set(kafka_bootstrap, producer, http, user_agent):
    t = tid()
    app_server = await serve(build_app(settings_for(kafka_bootstrap), producer))
    try:
        url = app_server.make_url
        params = {"e": "click", "tid": t, "ch": "display"}
        async with http.get(url("/px"), params={"e": "click", "ch": "display"},  # no tid, no cookie
                            headers={"User-Agent": user_agent}) as response:
            assert response.status == 200 and await response.read() == GIF
            assert "Set-Cookie" not in response.headers  # no tid for a bot
        async with http.get(url("/px"), params=params, headers={"User-Agent": user_agent}) as response:
            assert response.status == 200 and await response.read() == GIF
        async with http.get(url("/metrics")) as response:
            found = samples(await response.text())
        assert found.get(("attribution_collector_bots_total", ())) == 2
        assert found.get(("collector_events_produced_total", (("type", "click"),)), 0.0) == 0
        # the same visitor's click through the batch API is the only one that reaches the topic
        await only_sentinel_arrived(kafka_bootstrap, http, app_server, "clicks", click(t),
                                    lambda e: e.get("tracking_id") == t)
    finally:
        await app_server.close()


# --- the command and the embedded broker -----------------------------------------------------------


async def test_collect_command_serves_and_stops_cleanly_on_sigterm(kafka_bootstrap, make_worker, http):
    t = tid()
    port = free_port()
    collector = make_worker(bootstrap=kafka_bootstrap, name="collector", args=("collect",),
                            env={"COLLECTOR_PORT": str(port), "COLLECTOR_KEYS": KEY})
    collector.web_port = port  # wait_http polls this port
    collector.wait_http("/healthz", timeout=60)
    async with http.get(f"http://127.0.0.1:{port}/px", params={"e": "impression", "tid": t, "ch": "display"}) as r:
        assert r.status == 200
    await read_until(kafka_bootstrap, "impressions", lambda e: e.get("tracking_id") == t)
    assert collector.stop(timeout=30) == 0
    log = collector.log_text()
    assert "(idempotent producer" in log
    assert "collector stopped" in log
    assert t not in log  # no per-request logging, nothing about the visitor


async def test_on_the_embedded_broker_the_collector_falls_back_to_a_plain_producer(tansu_bootstrap, http):
    t = tid()
    fallback, idempotent = await start_producer(tansu_bootstrap)
    try:
        assert not idempotent
        app_server = await serve(build_app(settings_for(tansu_bootstrap), fallback))
        try:
            async with http.get(app_server.make_url("/px"), params={"e": "click", "tid": t, "ch": "email"}) as r:
                assert r.status == 200
        finally:
            await app_server.close()
    finally:
        await fallback.stop()
    await read_until(tansu_bootstrap, "clicks", lambda e: e.get("tracking_id") == t)
