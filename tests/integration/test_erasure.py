"""Erasure end to end (CONTRACT.md section 10), on Apache Kafka with Redis and a real worker.

A customer C visits twice (tracking IDs T1, T2: a click, a lead, two orders), a visitor T3 leaves a lead,
and a bystander B (tracking ID TB, customer CB) orders. Then C is erased by `customer_id` (an
`erasure-requests` message) and T3 by `tracking_id` (`attribution forget`). Afterwards no table of the
worker (scanned live), no compacted changelog read to its end, no Redis key and no latest `attributions`
message per key holds C, T1, T2 or T3; the bystander's rows are all still there; the metric figures are
the same as before; `erasure-log` has both confirmations. Once with the in-memory store, once with RocksDB
and a kill -9 after the requests were read and before they were confirmed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from streams.stages.topology import CHANGELOG_TOPICS
from tests.integration.reliability_support import poll
from tests.integration.services import ROOT, KafkaBroker, WorkerProcess, _attribution_argv, consume_all, produce
from tests.integration.test_business import create_engine_topics, get_json, uid

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

S = 1_000
WAIT_S = 90.0
TOPICS = {"click": "clicks", "lead": "leads", "order": "orders"}


class Story:
    def __init__(self) -> None:
        base = int(time.time() * 1000) - 10 * 60 * S
        self.c, self.t1, self.t2, self.t3 = uid("cust"), uid("tid"), uid("tid"), uid("tid")
        self.cb, self.tb = uid("cust"), uid("tid")
        self.erased = (self.c, self.t1, self.t2, self.t3)
        self.events: list[dict[str, Any]] = [
            click(self.t1, "google_ads", base),
            {"event_id": uid("lead"), "type": "lead", "ts": base + 20 * S, "tracking_id": self.t1,
             "customer_id": self.c},
            order(self.t1, self.c, base + 40 * S, 120.0),
            click(self.t2, "email", base + 60 * S),
            order(self.t2, self.c, base + 80 * S, 30.0),
            click(self.t3, "facebook", base + 100 * S),
            {"event_id": uid("lead"), "type": "lead", "ts": base + 120 * S, "tracking_id": self.t3},
            click(self.tb, "google_ads", base + 140 * S),
            order(self.tb, self.cb, base + 160 * S, 50.0),
        ]
        self.conversions = {e["event_id"] for e in self.events if e["type"] != "click"}
        self.bystander = next(e["event_id"] for e in self.events if e.get("customer_id") == self.cb)
        self.erased_conversions = self.conversions - {self.bystander}


def click(tid: str, channel: str, ts: int) -> dict[str, Any]:
    return {"event_id": uid("click"), "type": "click", "ts": ts, "tracking_id": tid, "channel": channel,
            "campaign": "c"}


def order(tid: str, customer: str, ts: int, revenue: float) -> dict[str, Any]:
    return {"event_id": uid("order"), "type": "order", "ts": ts, "tracking_id": tid, "order_id": uid("oid"),
            "revenue": revenue, "customer_id": customer}


def env(redis_url: str, state_store: str, **extra: str) -> dict[str, str]:
    return {"TOPIC_PARTITIONS": "3", "ATTRIBUTION_GRACE": "1s", "KAFKA_SESSION_TIMEOUT": "6s", "LOG_LEVEL": "INFO",
            "REDIS_URL": redis_url, "STATE_STORE": state_store, "MARKOV_INTERVAL": "1s", **extra}


async def send(bootstrap: str, events: list[dict[str, Any]]) -> None:
    for kind in ("click", "lead", "order"):  # touchpoints first, as the journeys would have them
        for event in (e for e in events if e["type"] == kind):
            await produce(bootstrap, TOPICS[kind], [orjson.dumps(event)], key=event["tracking_id"].encode())


def latest_per_key(records: list[Any]) -> dict[tuple[str, bytes], bytes | None]:
    out: dict[tuple[str, bytes], bytes | None] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        out[record.topic, record.key or b""] = record.value
    return out


def holding(items: dict[tuple[str, bytes], bytes | None], identifiers: tuple[str, ...]) -> list[str]:
    """The (topic, key) whose latest value is a row (not a tombstone) and whose key or value holds one of the
    identifiers. A tombstone's key names what it deletes until compaction drops it (`delete.retention.ms`)."""
    needles = [i.encode() for i in identifiers]
    return [f"{topic}:{key!r}" for (topic, key), value in items.items()
            if value is not None and any(n in key or n in value for n in needles)]


def figures(records: list[Any], topic: str, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The latest message per key of a metric topic (by window for metrics.channel), summed per channel."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.topic == topic:
            message = orjson.loads(record.value)
            latest[message["channel"], message.get("window_start", 0)] = message
    out: dict[str, dict[str, float]] = {}
    for (channel, _), message in latest.items():
        sums = out.setdefault(channel, dict.fromkeys(names, 0.0))
        for name in names:
            sums[name] += message[name]
    return out


METRIC_NAMES = {"metrics.channel": ("leads", "orders", "revenue", "new_customers", "clicks"),
                "metrics.ltv": ("customers", "orders", "repeat_orders", "revenue"),
                "metrics.markov": ("paths", "converting_paths")}


async def all_figures(bootstrap: str) -> dict[str, Any]:
    records = await consume_all(bootstrap, list(METRIC_NAMES), timeout=20)
    return {topic: figures(records, topic, names) for topic, names in METRIC_NAMES.items()}


async def redis_items(url: str) -> dict[tuple[str, bytes], bytes | None]:
    client = redis.Redis.from_url(url)
    try:
        items: dict[tuple[str, bytes], bytes | None] = {}
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            if kind == "string":
                items["redis", key] = await client.get(key)
            elif kind == "hash":
                items["redis", key] = orjson.dumps({k.decode(): v.decode() for k, v in
                                                    (await client.hgetall(key)).items()})
            else:
                items["redis", key] = kind.encode()
        return items
    finally:
        await client.aclose()


def forget(bootstrap: str, tracking_id: str) -> None:
    done = subprocess.run([*_attribution_argv(), "forget", "--tracking-id", tracking_id], cwd=ROOT,
                          env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap}, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def confirmations(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def scan(workers: list[WorkerProcess], tracking_id: str, customer_id: str) -> dict[str, int]:
    """Rows still holding the identifiers, per table, summed over the workers (each scans what it holds)."""
    total: dict[str, int] = {}
    for worker in workers:
        for table, n in get_json(worker, f"/api/v1/erasure/check?tracking_id={tracking_id}"
                                         f"&customer_id={customer_id}").items():
            total[table] = total.get(table, 0) + n
    return total


async def play(bootstrap: str, redis_url: str, workers: list[WorkerProcess], kill: bool) -> None:
    worker = workers[0]
    story = Story()
    await send(bootstrap, story.events)
    attributed = await consume_all(bootstrap, "attributions", timeout=WAIT_S, until=lambda rs: {
        orjson.loads(r.value)["conversion_id"] for r in rs} >= story.conversions)
    assert {orjson.loads(r.value)["conversion_id"] for r in attributed} >= story.conversions
    # the figures settle: the customer stage and the chain publish within a few seconds
    before = await poll(lambda: _settled(bootstrap), timeout=60, interval=3)
    assert before, "the metric figures never settled"
    before = await all_figures(bootstrap)
    assert before["metrics.ltv"] and before["metrics.channel"]["google_ads"]["orders"] == pytest.approx(2.0)
    assert sum(f["customers"] for f in before["metrics.ltv"].values()) == pytest.approx(2.0)
    held = scan(workers, story.t1, story.c)
    assert held["journeys"] >= 1 and held["ltv-customers"] == 1 and held["erasure-links"] >= 1, held

    await produce(bootstrap, "erasure-requests", [orjson.dumps({"customer_id": story.c})])
    forget(bootstrap, story.t3)
    await produce(bootstrap, "erasure-requests", [b'{"tracking_id": ""}'])  # rejected, with its reason
    if kill:
        worker.wait_for_log(r"erasure \S+: part \S+ waits", timeout=60)
        assert worker.kill() == -9
        worker.env["ERASURE_DELAY"] = "0ms"
        worker.restart()
        worker.wait_http("/metrics", timeout=90)

    logged = await consume_all(bootstrap, "erasure-log", timeout=WAIT_S,
                               until=lambda rs: len({orjson.dumps(m["request"]) for m in confirmations(rs)}) >= 2)
    requests = {orjson.dumps(m["request"]): m for m in confirmations(logged)}
    assert set(requests) == {orjson.dumps({"customer_id": story.c}), orjson.dumps({"tracking_id": story.t3})}
    assert all(m["rows"] > 0 and m["erased_at"] > 0 for m in requests.values()), requests
    dead = await consume_all(bootstrap, "events.dlq", timeout=10)
    assert any(orjson.loads(r.value)["topic"] == "erasure-requests"
               and "tracking_id must be a string" in orjson.loads(r.value)["error"] for r in dead)

    await asyncio.sleep(2)  # the last changelog records of the parts
    for tid in (story.t1, story.t2, story.t3):  # every table of every worker, live (RocksDB: the databases)
        held = scan(workers, tid, story.c)
        assert not any(held.values()), (tid, held)
    kept = scan(workers, story.tb, story.cb)
    assert kept["journeys"] >= 1 and kept["ltv-customers"] == 1, kept  # the scan does find what is there

    changelogs = latest_per_key(await consume_all(bootstrap, list(CHANGELOG_TOPICS), timeout=30))
    assert not holding(changelogs, story.erased), holding(changelogs, story.erased)
    assert holding(changelogs, (story.tb, story.cb))

    stored = await redis_items(redis_url)
    assert not holding(stored, story.erased), holding(stored, story.erased)
    assert holding(stored, (story.cb,))

    latest = latest_per_key(await consume_all(bootstrap, "attributions", timeout=20))
    assert not holding(latest, story.erased), holding(latest, story.erased)
    for conversion in story.erased_conversions:
        assert orjson.loads(latest["attributions", conversion.encode()]) == {"conversion_id": conversion,
                                                                           "erased": True}
    assert orjson.loads(latest["attributions", story.bystander.encode()])["customer_id"] == story.cb

    after = await all_figures(bootstrap)
    for topic in METRIC_NAMES:
        assert set(after[topic]) == set(before[topic]), topic
        for channel, sums in before[topic].items():
            assert after[topic][channel] == pytest.approx(sums), (topic, channel, sums, after[topic][channel])


async def _settled(bootstrap: str) -> bool:
    """Two reads of the figures 3 s apart agree, and every topic has some."""
    first = await all_figures(bootstrap)
    await asyncio.sleep(3)
    second = await all_figures(bootstrap)
    return all(first.values()) and first == second


@pytest.mark.parametrize("state_store, workers, kill", [("memory", 1, False), ("rocksdb", 1, True),
                                                        ("memory", 2, False)])
async def test_erasure_by_customer_and_by_tracking_id_leaves_no_identifier_and_keeps_the_figures(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess], redis_url: str,
    state_store: str, workers: int, kill: bool,
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    extra = {"ERASURE_DELAY": "8s"} if kill else {}
    started = [make_worker(bootstrap=broker.bootstrap, env=env(redis_url, state_store, **extra), name=f"eraser{i}")
               for i in range(workers)]
    for worker in started:
        worker.wait_http("/metrics", timeout=90)
    if workers > 1:  # both in the group, each owning some partitions, before anything is sent
        assert await poll(lambda: all(get_json(w, "/api/v1/state")["journey_partitions"] for w in started),
                          timeout=90), "the partitions were never shared"
    await play(broker.bootstrap, redis_url, started, kill)
