"""Intake against a real Apache Kafka broker and a real worker (CONTRACT.md sections 2, 4 and 6).

Valid, repeated and broken inputs go to the input topics of a broker of this module's own (the
topic names are fixed by the contract, so a fresh broker keeps them clean). The test then reads
what the worker made of them: `events.dlq` (every broken input exactly once, with its reason,
topic, partition, offset, batch index and raw value), the internal journey topic (every valid
input exactly once, re-keyed by tracking ID), `attributions` (a repeated conversion counts once)
and the worker's Prometheus counters.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import KafkaBroker, WorkerProcess, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
JOURNEY_TOPIC = "attribution-journey-events"  # internal: [key, normalised event row] pairs
SPEND_KEY_PREFIX = "\x00spend/"  # the journey topic's key of spend (it has no tracking ID)
WAIT_S = 60.0
TYPES = ("impression", "click", "lead", "order", "spend")
TOPIC_OF = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders", "spend": "spend"}


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def worker(broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        {"TOPIC_PARTITIONS": str(PARTITIONS), "FX_RATES": "EUR=1.1", "ATTRIBUTION_GRACE": "500ms"},
        bootstrap=broker.bootstrap,
        log_dir=tmp_path_factory.mktemp("intake-worker"),
        name="intake-worker",
    ).start()
    try:
        process.wait_http("/metrics", timeout=90)
        yield process
    finally:
        process.stop(timeout=15)
        print(f"--- {process.name} log ---\n{process.tail(60)}")


# --- helpers -------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_of(key: str) -> int:
    """Kafka's default partitioner, which the contract's re-keying by tracking ID relies on."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def scrape(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def events_total(samples: dict, type_: str, outcome: str) -> float:
    return samples.get(("attribution_events_total", (("outcome", outcome), ("type", type_))), 0.0)


def counter_by_channel(samples: dict, name: str) -> dict[str, float]:
    out: dict[str, float] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels)["channel"]] += value
    return dict(out)


async def settle(check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `check` until it is true or `timeout` passes; the caller's assertions then say what differs."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.3)


def journey_items(value: bytes) -> list[list[Any]]:
    """The [key, event row] pairs of an internal journey message: a JSON array of them, or an object
    that carries them under "e" (with the sender's watermark; a heartbeat carries none)."""
    message = orjson.loads(value)
    return message.get("e") or [] if isinstance(message, dict) else message


def schema(name: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(orjson.loads((ROOT / "schemas" / f"{name}.json").read_bytes()))


# --- the scenario ----------------------------------------------------------------------------------------


class Scenario:
    """What the test sends, and what it expects: built once, sent once, checked by several tests."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.run = run
        base = now_ms() - 120_000
        self.base = base
        t1, t2, t3 = f"{run}-t1", f"{run}-t2", f"{run}-t3"
        self.impression = {"event_id": f"{run}-i1", "type": "impression", "ts": base, "tracking_id": t1,
                           "channel": "display", "campaign": "launch", "cost": 0.002}
        self.click1 = {"event_id": f"{run}-c1", "type": "click", "ts": base + 1_000, "tracking_id": t1,
                       "channel": "google_ads", "campaign": "brand", "cost": 0.5}
        self.click2 = {"event_id": f"{run}-c2", "type": "click", "ts": base + 2_000, "tracking_id": t2,
                       "channel": "facebook", "affiliate_id": None, "extra_field": {"kept": True}}
        iso = (datetime.fromtimestamp((base + 3_000) / 1000, UTC).astimezone(timezone(timedelta(hours=2))))
        self.lead1 = {"event_id": f"{run}-l1", "type": "lead", "ts": iso.isoformat(), "tracking_id": t1,
                      "customer_id": f"{run}-cust"}
        self.lead2 = {"event_id": f"{run}-l2", "type": "lead", "ts": base + 4_000, "tracking_id": t3}
        self.order1 = {"event_id": f"{run}-o1", "type": "order", "ts": base + 5_000, "tracking_id": t1,
                       "order_id": f"{run}-order-1", "revenue": 50, "currency": "EUR", "margin": 0.4}
        # a reloaded thank-you page: same order_id, another event_id
        self.order1_reload = {**self.order1, "event_id": f"{run}-o1-reload", "ts": base + 6_000}
        self.spend = {"event_id": f"{run}-s1", "type": "spend", "ts": base + 7_000, "channel": "display",
                      "campaign": "launch", "amount": 10, "currency": "USD"}

        bad_click = {k: v for k, v in self.click2.items() if k != "channel"}
        bad_click["event_id"] = f"{run}-c-bad"
        self.click_batch = [self.click1, bad_click, self.click2]  # index 1: no channel
        self.lead_batch = [  # index 0: ts not a time; index 2: not an object
            {"event_id": f"{run}-l-bad", "type": "lead", "ts": "yesterday", "tracking_id": t3},
            self.lead2,
            42,
        ]
        self.repeats = {  # type -> inputs sent again, each a repeat of an event already sent
            "impression": [self.impression],
            "click": [self.click1],
            "order": [self.order1_reload],
        }

        # (topic, raw value or None, [(index, words the error must name)]) for every broken input
        self.bad: list[tuple[str, bytes | None, list[tuple[int | None, tuple[str, ...]]]]] = [
            ("impressions", b"this is not json {", [(None, ("json",))]),
            ("clicks", b'\xff\xfe{"type": "click"}', [(None, ("utf-8",))]),
            ("impressions", orjson.dumps({**self.click1, "event_id": f"{run}-wrong-type"}),
             [(None, ("type", "impression"))]),
            ("orders", orjson.dumps({"event_id": f"{run}-o-missing", "type": "order", "ts": base,
                                      "tracking_id": t1}), [(None, ("order_id", "revenue"))]),
            ("orders", orjson.dumps({**self.order1, "event_id": f"{run}-o-neg", "order_id": f"{run}-neg",
                                      "revenue": -5}), [(None, ("revenue", "-5"))]),
            ("spend", orjson.dumps({**self.spend, "event_id": f"{run}-s-neg", "amount": -1}),
             [(None, ("amount", "-1"))]),
            ("clicks", orjson.dumps({**self.click1, "event_id": f"{run}-c-neg", "cost": -0.5}),
             [(None, ("cost", "-0.5"))]),
            ("orders", orjson.dumps({**self.order1, "event_id": f"{run}-o-xyz", "order_id": f"{run}-xyz",
                                      "currency": "XYZ"}), [(None, ("XYZ",))]),
            ("spend", b'"just a string"', [(None, ("object",))]),
            ("spend", b"[]", [(None, ("empty",))]),
            ("leads", None, [(None, ("empty",))]),
            ("clicks", orjson.dumps(self.click_batch), [(1, ("channel",))]),
            ("leads", orjson.dumps(self.lead_batch), [(0, ("ts",)), (2, ("object",))]),
        ]
        self.good: list[tuple[str, bytes]] = [
            ("impressions", orjson.dumps(self.impression)),
            ("leads", orjson.dumps(self.lead1)),
            ("orders", orjson.dumps(self.order1)),
            ("spend", orjson.dumps(self.spend)),
        ]

    def valid_inputs(self) -> list[dict[str, Any]]:
        """Every valid event object sent, once per time it was sent (repeats included)."""
        firsts = [self.impression, self.click1, self.click2, self.lead1, self.lead2, self.order1, self.spend]
        return firsts + [event for repeated in self.repeats.values() for event in repeated]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sent(broker: KafkaBroker, worker: WorkerProcess) -> dict[str, Any]:
    """Send the scenario (each message on its own, in this order) and note where each broken one landed."""
    scenario = Scenario()
    placed = []
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for topic, value in scenario.good:
            await producer.send_and_wait(topic, value)
        for topic, value, expected in scenario.bad:
            key = b"a-key" if value is None else None  # Kafka wants a key or a value
            meta = await producer.send_and_wait(topic, value, key=key)
            placed.append((topic, meta.partition, meta.offset, value, expected))
        for type_, events in scenario.repeats.items():
            for event in events:
                await producer.send_and_wait(TOPIC_OF[type_], orjson.dumps(event))
    finally:
        await producer.stop()
    return {"scenario": scenario, "bad": placed}


# --- tests -------------------------------------------------------------------------------------------------


async def test_every_rejected_input_is_on_the_dlq_once_with_its_reason_place_and_raw_value(
    broker: KafkaBroker, sent: dict[str, Any]
) -> None:
    expected = {}
    for topic, partition, offset, raw, errors in sent["bad"]:
        for index, words in errors:
            expected[topic, partition, offset, index] = (raw, words)

    records = await consume_all(broker.bootstrap, "events.dlq", until=lambda rs: len(rs) >= len(expected),
                                timeout=WAIT_S)
    await asyncio.sleep(1.0)  # anything sent twice would be right behind
    records = await consume_all(broker.bootstrap, "events.dlq", timeout=15)

    valid_dlq = schema("dlq")
    found = Counter()
    for record in records:
        message = orjson.loads(record.value)
        valid_dlq(message)
        where = (message["topic"], message["partition"], message["offset"], message["index"])
        found[where] += 1
        assert where in expected, f"unexpected DLQ message {message}"
        raw, words = expected[where]
        assert message["value"] == ("" if raw is None else raw.decode("utf-8", errors="replace")), message
        for word in words:
            assert word.lower() in message["error"].lower(), f"error should name {word!r}: {message}"
    assert set(found) == set(expected), f"missing on the DLQ: {sorted(set(expected) - set(found), key=str)}"
    assert all(count == 1 for count in found.values()), f"on the DLQ more than once: {found}"


async def test_every_valid_input_reaches_the_journey_stage_once_keyed_by_tracking_id(
    broker: KafkaBroker, sent: dict[str, Any]
) -> None:
    scenario: Scenario = sent["scenario"]
    wanted = Counter(event["event_id"] for event in scenario.valid_inputs())

    def seen(records: list[Any]) -> Counter:
        return Counter(row[1] for record in records for _, row in journey_items(record.value))

    await consume_all(broker.bootstrap, JOURNEY_TOPIC, until=lambda rs: sum(seen(rs).values()) >= sum(wanted.values()),
                      timeout=WAIT_S)
    await asyncio.sleep(1.0)
    records = await consume_all(broker.bootstrap, JOURNEY_TOPIC, timeout=15)

    assert seen(records) == wanted
    # every message tells the journey stage how many partitions each touchpoint topic has, owned or not
    counts = {"impressions": PARTITIONS, "clicks": PARTITIONS, "leads": PARTITIONS, "orders": PARTITIONS}
    assert orjson.loads(records[-1].value)["n"] == counts
    by_id = {}
    for record in records:
        for key, row in journey_items(record.value):
            assert record.partition == partition_of(key), f"{key!r} is on partition {record.partition}"
            by_id[row[1]] = (key, row)
    for event in scenario.valid_inputs():
        key, row = by_id[event["event_id"]]
        if event["type"] == "spend":  # the channel's shard: a number below SPEND_SHARDS
            channel_prefix, shard = key.rsplit("/", 1)
            assert channel_prefix == SPEND_KEY_PREFIX + event["channel"] and 0 <= int(shard) < 64
        else:
            assert key == event["tracking_id"]
    # normalised at intake: ts to epoch ms, money to the reporting currency
    assert by_id[scenario.lead1["event_id"]][1][2] == scenario.base + 3_000
    order_row = by_id[scenario.order1["event_id"]][1]
    assert order_row[5] == pytest.approx(55.0)


async def test_prometheus_counts_invalid_and_duplicate_inputs_by_type(
    broker: KafkaBroker, worker: WorkerProcess, sent: dict[str, Any]
) -> None:
    scenario: Scenario = sent["scenario"]
    invalid = Counter()
    for topic, _, _, _, errors in sent["bad"]:
        invalid[next(t for t, name in TOPIC_OF.items() if name == topic)] += len(errors)
    duplicate = Counter({type_: len(events) for type_, events in scenario.repeats.items()})
    ok = Counter(event["type"] for event in scenario.valid_inputs()) - duplicate

    def agrees() -> bool:
        samples = scrape(worker)
        return all(
            events_total(samples, t, "invalid") == invalid[t]
            and events_total(samples, t, "duplicate") == duplicate[t]
            and events_total(samples, t, "ok") == ok[t]
            for t in TYPES
        )

    await settle(agrees)
    await asyncio.sleep(1.0)
    samples = scrape(worker)
    for t in TYPES:
        assert events_total(samples, t, "invalid") == invalid[t], f"invalid {t}"
        assert events_total(samples, t, "duplicate") == duplicate[t], f"duplicate {t}"
        assert events_total(samples, t, "ok") == ok[t], f"ok {t}"
        assert events_total(samples, t, "late") == 0, f"late {t}"

    # each DLQ message is one invalid input of its topic's type
    records = await consume_all(broker.bootstrap, "events.dlq", timeout=15)
    dlq_per_type = Counter(
        next(t for t, name in TOPIC_OF.items() if name == orjson.loads(r.value)["topic"]) for r in records
    )
    assert dlq_per_type == +invalid


async def test_a_repeated_event_counts_once_in_figures_and_attributions(
    broker: KafkaBroker, worker: WorkerProcess, sent: dict[str, Any]
) -> None:
    scenario: Scenario = sent["scenario"]
    conversions = {scenario.lead1["event_id"], scenario.lead2["event_id"], scenario.order1["event_id"]}

    def keys(records: list[Any]) -> list[str]:
        return [r.key.decode() for r in records]

    await consume_all(broker.bootstrap, "attributions", until=lambda rs: conversions <= set(keys(rs)),
                      timeout=WAIT_S)
    await asyncio.sleep(1.5)  # longer than the grace: a second attribution of the reload would be out
    records = await consume_all(broker.bootstrap, "attributions", timeout=15)
    assert sorted(keys(records)) == sorted(conversions)
    (order,) = [orjson.loads(r.value) for r in records if r.key.decode() == scenario.order1["event_id"]]
    assert order["revenue"] == pytest.approx(55.0)
    assert order["currency"] == "USD"

    samples = scrape(worker)
    assert counter_by_channel(samples, "attribution_impressions_total") == {"display": 1}
    assert counter_by_channel(samples, "attribution_clicks_total") == {"google_ads": 1, "facebook": 1}
    assert sum(counter_by_channel(samples, "attribution_orders_total").values()) == pytest.approx(1.0)
    assert sum(counter_by_channel(samples, "attribution_revenue_total").values()) == pytest.approx(55.0)
    assert sum(counter_by_channel(samples, "attribution_leads_total").values()) == pytest.approx(2.0)
    spend = counter_by_channel(samples, "attribution_spend_total")
    assert spend["display"] == pytest.approx(10.002)
    assert spend["google_ads"] == pytest.approx(0.5)


async def test_the_worker_keeps_running_after_bad_input(worker: WorkerProcess, sent: dict[str, Any]) -> None:
    assert worker.alive
    worker.wait_http("/metrics", timeout=10)
