"""Business decisions end to end (CONTRACT.md section 7): lifetime value by acquisition channel and
switch-off signals, on a fresh Apache Kafka broker with a real worker that is SIGKILLed mid-stream.

The story: customers are acquired by google_ads (profitable) and tiktok (losing money) and come
back through email. One customer's first order arrives after a later one was already taken as
first. `metrics.ltv` must end with the exact lifetime figures per acquiring channel, computed here
independently from the events sent, although the worker was killed with SIGKILL and restarted in
the middle; `signals` must carry exactly one `pause` for tiktok and one `scale` for google_ads.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.config import Settings
from streams.kafka.topics import PUBLIC_TOPICS, ensure_topics, partition_counts
from streams.stages.topology import CHANGELOG_TOPICS, INTERNAL_TOPICS
from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTITIONS = 3
S = 1_000
MIN = 60 * S
WAIT_S = 60.0
FIGURES = ("customers", "orders", "repeat_orders", "revenue", "gross_profit", "spend")
TOPICS = {"click": "clicks", "order": "orders", "spend": "spend"}
CAMPAIGNS = {"google_ads": "brand", "tiktok": "ugc", "email": "newsletter"}
SPEND = [("google_ads", 25.0), ("google_ads", 15.0), ("tiktok", 300.0)]


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


class Story:
    """The events sent, and what the contract says they add up to (computed without the engine)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.orders: dict[str, list[tuple[int, str, float, float, str]]] = {}  # customer -> orders

    def visit(self, customer: str, channel: str, ts: int, revenue: float, margin: float | None = None,
              ) -> list[dict[str, Any]]:
        """A click in `channel` on a fresh tracking ID, then the customer's order on it 5 s later."""
        tid = uid("tid")
        click = {"event_id": uid("click"), "type": "click", "ts": ts - 5 * S, "tracking_id": tid,
                 "channel": channel, "campaign": CAMPAIGNS[channel]}
        order = {"event_id": uid("order"), "type": "order", "ts": ts, "tracking_id": tid, "order_id": uid("oid"),
                 "revenue": revenue, "customer_id": customer}
        if margin is not None:
            order["margin"] = margin
        self.orders.setdefault(customer, []).append(
            (ts, order["event_id"], revenue, revenue * (1.0 if margin is None else margin), channel))
        return [click, order]

    def expected_ltv(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for orders in self.orders.values():
            first = min(orders)  # by (ts, event_id): last click = the only click of its tracking ID
            figures = out.setdefault(first[4], dict.fromkeys(FIGURES, 0.0))
            figures["customers"] += 1
            figures["orders"] += len(orders)
            figures["repeat_orders"] += len(orders) - 1
            figures["revenue"] += sum(o[2] for o in orders)
            figures["gross_profit"] += sum(o[3] for o in orders)
        for channel, amount in SPEND:
            out.setdefault(channel, dict.fromkeys(FIGURES, 0.0))["spend"] += amount
        return out

    def credited(self, channel: str) -> tuple[float, float]:
        """Revenue and gross profit credited to `channel` by the orders' own touchpoints (last click)."""
        orders = [o for orders in self.orders.values() for o in orders if o[4] == channel]
        return sum(o[2] for o in orders), sum(o[3] for o in orders)


async def send(bootstrap: str, events: list[dict[str, Any]]) -> None:
    """Clicks first, then orders and spend: each to its topic, keyed by tracking ID (spend by channel)."""
    for kind in ("click", "order", "spend"):
        batch = [e for e in events if e["type"] == kind]
        for event in batch:
            key = (event.get("tracking_id") or event["channel"]).encode()
            await produce(bootstrap, TOPICS[kind], [orjson.dumps(event)], key=key)


def latest(records: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out[record.key.decode()] = orjson.loads(record.value)
    return out


async def ltv_until(bootstrap: str, condition: Callable[[dict[str, dict[str, Any]]], bool]) -> dict[str, Any]:
    records = await consume_all(bootstrap, "metrics.ltv", until=lambda rs: condition(latest(rs)), timeout=WAIT_S)
    return latest(records)


def window_sums(records: list[Any]) -> dict[str, dict[str, float]]:
    """`metrics.channel`: per channel, the sum over windows of each window's latest message."""
    windows: dict[tuple[str, int], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        message = orjson.loads(record.value)
        windows[message["channel"], message["window_start"]] = message
    out: dict[str, dict[str, float]] = {}
    for (channel, _), message in windows.items():
        sums = out.setdefault(channel, {"revenue": 0.0, "gross_profit": 0.0, "spend": 0.0})
        for name in sums:
            sums[name] += message[name]
    return out


def matches(message: dict[str, Any] | None, expected: dict[str, float], with_spend: bool = True) -> bool:
    if message is None:
        return False
    names = FIGURES if with_spend else FIGURES[:-1]
    return all(message[name] == pytest.approx(expected[name], abs=1e-6) for name in names)


def get_json(worker: WorkerProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=5) as response:  # noqa: S310
        return orjson.loads(response.read())


def gauges(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name.startswith(("attribution_ltv_", "attribution_signal"))
    }


async def create_engine_topics(bootstrap: str) -> None:
    """As the worker does at start, then wait until the broker's metadata shows every partition.

    Right after creation a fresh broker describes some topics with 0 partitions for up to ~1 s
    (measured), which the worker's start-up check takes for a mismatch (see the lead's notes)."""
    await ensure_topics(bootstrap, Settings(topic_partitions=PARTITIONS), PUBLIC_TOPICS + INTERNAL_TOPICS,
                        CHANGELOG_TOPICS)
    deadline = time.monotonic() + 30
    while set((await partition_counts(bootstrap, INTERNAL_TOPICS + CHANGELOG_TOPICS)).values()) != {PARTITIONS}:
        assert time.monotonic() < deadline, "the engine's topics did not show their partitions"
        await asyncio.sleep(0.1)


async def test_lifetime_value_and_signals_survive_a_sigkill(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess]
) -> None:
    broker = kafka_broker_factory()
    bootstrap = broker.bootstrap
    await create_engine_topics(bootstrap)
    env = {
        "TOPIC_PARTITIONS": str(PARTITIONS),
        "ATTRIBUTION_MODEL": "last_click",
        "ATTRIBUTION_GRACE": "1s",
        "KAFKA_SESSION_TIMEOUT": "6s",
        "SIGNAL_WINDOW": "30m",
        "SIGNAL_MIN_SPEND": "20",
        "LOG_LEVEL": "INFO",
    }
    worker = make_worker(bootstrap=bootstrap, env=env, name="business-worker")
    worker.wait_http("/metrics", timeout=90)
    story = Story(base=int(time.time() * 1000) - 20 * MIN)
    base = story.base

    # Acquired by paid channels; half of them come back through email (some twice), some without margin.
    first_orders, comebacks = [], []
    for i in range(6):
        first_orders += story.visit(f"g{i}", "google_ads", base + i * S, 80.0, margin=0.5)
        first_orders += story.visit(f"t{i}", "tiktok", base + 30 * S + i * S, 20.0)
        comebacks += story.visit(f"g{i}", "email", base + 5 * MIN + i * S, 30.0 + i, margin=0.5)
        if i % 2:
            comebacks += story.visit(f"t{i}", "email", base + 6 * MIN + i * S, 15.0)
            comebacks += story.visit(f"t{i}", "email", base + 7 * MIN + i * S, 12.5, margin=0.8)
    # x1's later order arrives first (email takes the customer), its first order by event time later.
    later_first = story.visit("x1", "email", base + 10 * MIN, 50.0)
    earliest = story.visit("x1", "tiktok", base + 1 * MIN, 30.0)

    await send(bootstrap, first_orders + comebacks[: len(comebacks) // 2])
    await ltv_until(bootstrap, lambda m: bool(m))  # the LTV stage is under way ...
    assert worker.kill() == -9  # ... and dies mid-stream
    await send(bootstrap, comebacks[len(comebacks) // 2:] + later_first)
    worker.restart()
    await ltv_until(bootstrap, lambda m: m.get("email", {}).get("customers") == 1.0)
    await send(bootstrap, earliest)

    expected = story.expected_ltv()
    assert set(expected) == {"google_ads", "tiktok"}  # email acquired nobody in the end
    figures = await ltv_until(bootstrap, lambda m: all(
        matches(m.get(ch), expected[ch], with_spend=False) for ch in expected) and matches(
        m.get("email"), dict.fromkeys(FIGURES, 0.0), with_spend=False))
    assert figures["email"]["customers"] == 0.0 and figures["email"]["clv"] is None

    # Only now the spend: tiktok loses money, google_ads pays back, email spends nothing. First the
    # metric windows must show every order's credit, or a signal would judge half the revenue.
    credited = {channel: story.credited(channel) for channel in ("google_ads", "tiktok", "email")}

    def all_credited(records: list[Any]) -> bool:
        sums = window_sums(records)
        return all(channel in sums and (sums[channel]["revenue"], sums[channel]["gross_profit"]) == pytest.approx(
            credited[channel]) for channel in credited)

    records = await consume_all(bootstrap, "metrics.channel", until=all_credited, timeout=WAIT_S)
    assert all_credited(records), f"metrics.channel: {window_sums(records)}, expected {credited}: " + "; ".join(
        f"{r.partition}/{r.offset} {m['channel']} {m['window_start']} clicks {m['clicks']} revenue {m['revenue']}"
        f"{' final' if m['final'] else ''}" for r in records for m in [orjson.loads(r.value)])
    spend_ts = base + 15 * MIN
    await send(bootstrap, [
        {"event_id": uid("spend"), "type": "spend", "ts": spend_ts + i * S, "channel": channel,
         "campaign": CAMPAIGNS[channel], "amount": amount}
        for i, (channel, amount) in enumerate(SPEND)
    ])
    figures = await ltv_until(bootstrap, lambda m: all(matches(m.get(ch), expected[ch]) for ch in expected))
    for channel, want in expected.items():
        message = figures[channel]
        assert message["clv"] == pytest.approx(want["revenue"] / want["customers"])
        assert message["cac"] == pytest.approx(want["spend"] / want["customers"])
        assert message["ltv_cac"] == pytest.approx(message["clv"] / message["cac"])
    assert figures["google_ads"]["customers"] == 6 and figures["tiktok"]["customers"] == 7
    assert figures["google_ads"]["repeat_orders"] == 6 and figures["tiktok"]["repeat_orders"] == 7

    # Switch-off signals: exactly one action per key, channel and campaign level.
    wanted = {"tiktok": "pause", "tiktok/ugc": "pause", "google_ads": "scale", "google_ads/brand": "scale"}
    await consume_all(bootstrap, "signals", until=lambda rs: set(wanted) <= {r.key.decode() for r in rs},
                      timeout=WAIT_S)
    await asyncio.sleep(3.0)  # three more judgements: nothing more may come
    signals = await consume_all(bootstrap, "signals", timeout=15)
    announced = sorted((r.key.decode(), orjson.loads(r.value)["action"]) for r in signals)
    assert announced == sorted(wanted.items())
    pause = next(orjson.loads(r.value) for r in signals if r.key == b"tiktok")
    revenue, gross_profit = story.credited("tiktok")
    assert pause["spend"] == 300.0 and pause["campaign"] is None
    assert pause["revenue"] == pytest.approx(revenue) and pause["gross_profit"] == pytest.approx(gross_profit)
    assert pause["romi"] == pytest.approx((gross_profit - 300.0) / 300.0)
    assert pause["reason"] == f"romi {pause['romi']:.2f} under floor 0 on spend 300.00 over 30m"
    assert pause["span_end"] - pause["span_start"] == 30 * MIN

    # The read API and the gauges of the worker that owns the keys (the only one here).
    api = {message["channel"]: message for message in get_json(worker, "/api/v1/ltv")}
    assert {ch: api[ch] for ch in expected} == {ch: figures[ch] for ch in expected}
    samples = gauges(worker)
    assert samples[("attribution_ltv_ltv_cac", (("channel", "google_ads"),))] == pytest.approx(
        figures["google_ads"]["ltv_cac"])
    assert samples[("attribution_ltv_clv", (("channel", "tiktok"),))] == pytest.approx(figures["tiktok"]["clv"])
    assert samples[("attribution_ltv_cac", (("channel", "tiktok"),))] == pytest.approx(figures["tiktok"]["cac"])
    signal = {(dict(labels)["channel"], dict(labels)["campaign"], dict(labels)["action"]): value
              for (name, labels), value in samples.items() if name == "attribution_signal"}
    assert signal[("tiktok", "", "pause")] == 1.0 and signal[("tiktok", "", "scale")] == 0.0
    assert signal[("google_ads", "brand", "scale")] == 1.0 and signal[("google_ads", "brand", "keep")] == 0.0
    assert not any(channel == "email" for channel, _, _ in signal)
