"""Consent end to end (CONTRACT.md section 10), on Apache Kafka with Redis and a real worker.

A visitor without consent (`"consent": false`) sees an ad, clicks it, leaves a lead and orders; a visitor with consent
(no `consent` field) clicks and orders. The metric topics count both visitors' events (the one without consent's
conversions under `(direct)`, never a new customer), while no table of the worker (scanned live), no compacted
changelog read to its end, no Redis key and no `attributions` message holds the first visitor's tracking ID,
customer ID or order ID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streams.stages.topology import CHANGELOG_TOPICS
from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce
from tests.integration.test_business import create_engine_topics, uid
from tests.integration.test_erasure import holding, latest_per_key, redis_items, scan

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

S = 1_000
WAIT_S = 90.0
TOPICS = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders"}


def event(kind: str, tid: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": uid(kind), "type": kind, "ts": ts, "tracking_id": tid, **fields}


def channel_totals(records: list[Any], channels: set[str]) -> dict[str, dict[str, float]]:
    """The latest message per (channel, window) of `metrics.channel`, summed per channel, for these channels."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        message = orjson.loads(record.value)
        if message["channel"] in channels:
            latest[message["channel"], message["window_start"]] = message
    out: dict[str, dict[str, float]] = {}
    for (channel, _), message in latest.items():
        sums = out.setdefault(channel, {})
        for name in ("impressions", "clicks", "leads", "orders", "revenue", "spend", "new_customers"):
            sums[name] = sums.get(name, 0.0) + message[name]
    return out


async def test_events_without_consent_are_counted_and_stored_nowhere(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess], redis_url: str,
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    worker = make_worker(bootstrap=broker.bootstrap, name="consent", env={
        "TOPIC_PARTITIONS": "3", "ATTRIBUTION_GRACE": "1s", "REDIS_URL": redis_url})
    worker.wait_http("/metrics", timeout=90)

    base = int(time.time() * 1000) - 5 * 60 * S
    anon, anon_customer, anon_order = uid("anon"), uid("cust"), uid("oid")
    known, known_customer = uid("tid"), uid("cust")
    social, search = uid("social"), uid("search")  # channels of this test alone
    refused = {"consent": False}
    events = [
        event("impression", anon, base, channel=social, campaign="c", cost=0.01, **refused),
        event("click", anon, base + 10 * S, channel=social, campaign="c", cost=0.4, **refused),
        event("lead", anon, base + 30 * S, customer_id=anon_customer, **refused),
        event("order", anon, base + 60 * S, order_id=anon_order, revenue=80.0, customer_id=anon_customer,
              **refused),
        event("click", known, base + 90 * S, channel=search, campaign="c", cost=1.5),
        event("order", known, base + 120 * S, order_id=uid("oid"), revenue=50.0, customer_id=known_customer),
    ]
    for kind in TOPICS:  # touchpoints first
        values = [orjson.dumps(e) for e in events if e["type"] == kind]
        await produce(broker.bootstrap, TOPICS[kind], values, key=None)
    known_order = events[-1]["event_id"]

    expected = {
        social: {"impressions": 1, "clicks": 1, "leads": 0, "orders": 0, "revenue": 0, "spend": 0.41,
                 "new_customers": 0},
        search: {"impressions": 0, "clicks": 1, "leads": 0, "orders": 1, "revenue": 50.0, "spend": 1.5,
                 "new_customers": 1},
    }

    def complete(records: list[Any]) -> bool:
        totals = channel_totals(records, {social, search, "(direct)"})
        return (all(totals.get(c) == pytest.approx(f) for c, f in expected.items())
                and totals.get("(direct)", {}).get("orders", 0) >= 1)

    records = await consume_all(broker.bootstrap, "metrics.channel", until=complete, timeout=WAIT_S)
    totals = channel_totals(records, {social, search, "(direct)"})
    for channel, figures in expected.items():
        assert totals.get(channel) == pytest.approx(figures), (channel, totals.get(channel))
    direct = totals["(direct)"]  # the conversions without consent: no touchpoints looked up, never a new customer
    assert (direct["leads"], direct["orders"], direct["revenue"], direct["new_customers"]) == (1, 1, 80.0, 0)

    attributions = await consume_all(broker.bootstrap, "attributions", timeout=20,
                                     until=lambda rs: any(r.key == known_order.encode() for r in rs))
    assert [r.key.decode() for r in attributions] == [known_order]  # none for a conversion without consent

    identifiers = (anon, anon_customer, anon_order)
    held = scan([worker], anon, anon_customer)
    assert not any(held.values()), held
    assert any(scan([worker], known, known_customer).values())  # the scan finds what is there
    changelogs = latest_per_key(await consume_all(broker.bootstrap, list(CHANGELOG_TOPICS), timeout=30))
    assert not holding(changelogs, identifiers), holding(changelogs, identifiers)
    assert holding(changelogs, (known,))
    stored = await redis_items(redis_url)
    assert not holding(stored, identifiers), holding(stored, identifiers)
    dead = await consume_all(broker.bootstrap, "events.dlq", timeout=5)
    assert dead == []
