"""Synthetic input for the benchmark: a realistic mix of events, pre-encoded as Kafka messages. Pure.

Visitors run concurrently (a pool of active journeys, one picked at random per event): each one
sees a few impressions of one channel (sometimes of a second channel too), maybe clicks, and a few
of those who clicked leave a lead or an order. Spend rows come every `SPEND_EVERY` events per
channel/campaign. `ts` rises steadily across the stream, so every visitor's events are in order.

Expected mix (seed 7): ~89% impressions, ~8% clicks, ~1.5% conversions, ~1% spend.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

CHANNELS = ("google_ads", "facebook", "tiktok", "email", "affiliate", "influencer")
CAMPAIGNS = ("brand", "generic", "retargeting")
TOUCH_TOPICS = ("impressions", "clicks")
CONVERSION_TOPICS = ("leads", "orders")
INPUT_TOPICS = ("impressions", "clicks", "leads", "orders", "spend")
ACTIVE_VISITORS = 2_000
SPEND_EVERY = 100  # one spend row per this many events
BATCH_SIZE = 100  # events per message in the batched shape


@dataclass
class Expected:
    """What a stream holds, for checking the metric topics against it."""

    events: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    tracking_ids: int = 0
    customer_orders: int = 0  # orders with a customer_id: what the lifetime-value stage takes

    @property
    def touches(self) -> int:
        return self.by_topic["impressions"] + self.by_topic["clicks"]

    @property
    def conversions(self) -> int:
        return self.by_topic["leads"] + self.by_topic["orders"]


class Visitor:
    __slots__ = ("tid", "steps")

    def __init__(self, tid: str, steps: list[tuple[str, str, str]]) -> None:
        self.tid = tid
        self.steps = steps  # (kind, channel, campaign), consumed from the end


class EventSource:
    """An endless, seeded stream of contract-shaped event dicts with a given `ts` per event."""

    def __init__(self, seed: int = 7, prefix: str = "b", order_rate: float = 0.12) -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.order_rate = order_rate  # chance that a visitor who clicked orders
        self.visitors: list[Visitor] = []
        self.serial = 0
        self.visitor_serial = 0
        self.since_spend = 0
        self.spend_cursor = 0

    def _new_visitor(self) -> Visitor:
        rng = self.rng
        self.visitor_serial += 1
        channel, campaign = rng.choice(CHANNELS), rng.choice(CAMPAIGNS)
        steps: list[tuple[str, str, str]] = []
        if rng.random() < 0.25:  # multi-touch: first seen on another channel
            other = rng.choice(CHANNELS)
            steps += [("impression", other, rng.choice(CAMPAIGNS))] * (1 + int(rng.expovariate(1 / 2)))
        steps += [("impression", channel, campaign)] * (1 + int(rng.expovariate(1 / 5)))
        if rng.random() < 0.6:
            steps += [("click", channel, campaign)] * (1 + int(rng.random() < 0.3))
            if rng.random() < 0.12:
                steps.append(("lead", channel, campaign))
            if rng.random() < self.order_rate:
                steps.append(("order", channel, campaign))
        steps.reverse()
        return Visitor(f"{self.prefix}v{self.visitor_serial}", steps)

    def next_event(self, ts: int) -> tuple[str, dict[str, Any]]:
        """(topic, event) for event time `ts`."""
        rng = self.rng
        self.serial += 1
        event_id = f"{self.prefix}e{self.serial}"
        self.since_spend += 1
        if self.since_spend >= SPEND_EVERY:
            self.since_spend = 0
            self.spend_cursor += 1
            channel = CHANNELS[self.spend_cursor % len(CHANNELS)]
            campaign = CAMPAIGNS[(self.spend_cursor // len(CHANNELS)) % len(CAMPAIGNS)]
            amount = round(rng.uniform(1, 20), 2)
            return "spend", {"event_id": event_id, "type": "spend", "ts": ts, "channel": channel,
                             "campaign": campaign, "amount": amount, "currency": "USD"}
        while len(self.visitors) < ACTIVE_VISITORS:
            self.visitors.append(self._new_visitor())
        index = rng.randrange(len(self.visitors))
        visitor = self.visitors[index]
        kind, channel, campaign = visitor.steps.pop()
        if not visitor.steps:
            self.visitors[index] = self.visitors[-1]
            self.visitors.pop()
        return self.event(visitor.tid, kind, channel, campaign, ts, event_id)

    def event(self, tid: str, kind: str, channel: str, campaign: str, ts: int,
              event_id: str) -> tuple[str, dict[str, Any]]:
        """(topic, event) of one step of a visitor's journey."""
        rng = self.rng
        base: dict[str, Any] = {"event_id": event_id, "type": kind, "ts": ts, "tracking_id": tid}
        if kind in ("impression", "click"):
            base["channel"] = channel
            base["campaign"] = campaign
            if kind == "click" and channel == "google_ads":
                base["cost"] = round(rng.uniform(0.2, 2.0), 2)
            if kind == "click" and channel in ("affiliate", "influencer"):
                base["affiliate_id"] = f"aff{rng.randrange(20)}"
            return kind + "s", base
        if kind == "lead":
            base["customer_id"] = f"c{tid}"
            return "leads", base
        base.update(order_id=f"o{event_id}", revenue=round(rng.uniform(10, 200), 2), currency="USD")
        if rng.random() < 0.7:
            base["customer_id"] = f"c{tid}"
        return "orders", base

    def whole_journey(self, ts: int) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        """One new visitor's events, all of them (for the memory measurement)."""
        visitor = self._new_visitor()
        events = []
        for kind, channel, campaign in reversed(visitor.steps):
            self.serial += 1
            events.append(self.event(visitor.tid, kind, channel, campaign, ts + self.serial,
                                     f"{self.prefix}e{self.serial}"))
        return visitor.tid, events


@dataclass
class Dataset:
    """Pre-encoded messages: (topic, key, value, partition) in production order."""

    shape: str  # "single" or "batched"
    messages: list[tuple[str, bytes | None, bytes, int | None]]
    expected: Expected


def build(n: int, shape: str, start_ms: int, span_ms: int, seed: int = 7, partitions: int = 4,
          order_rate: float = 0.12) -> Dataset:
    """`n` events with `ts` spread evenly over [start_ms, start_ms + span_ms), as one event per message
    (keyed by tracking ID, like the collector) or JSON arrays of BATCH_SIZE events per topic. `order_rate`:
    the chance that a visitor who clicked orders (0.12, the realistic mix; higher for an order-heavy mix)."""
    source = EventSource(seed, order_rate=order_rate)
    expected = Expected()
    tids: set[str] = set()
    per_topic: dict[str, list[dict[str, Any]]] = {topic: [] for topic in INPUT_TOPICS}
    messages: list[tuple[str, bytes | None, bytes, int | None]] = []
    round_robin = 0
    for i in range(n):
        topic, event = source.next_event(start_ms + (i * span_ms) // n)
        expected.by_topic[topic] += 1
        expected.customer_orders += topic == "orders" and "customer_id" in event
        if "tracking_id" in event:
            tids.add(event["tracking_id"])
        if shape == "single":
            key = event.get("tracking_id") or event["channel"]
            messages.append((topic, key.encode(), orjson.dumps(event), None))
            continue
        pending = per_topic[topic]
        pending.append(event)
        if len(pending) >= BATCH_SIZE:
            messages.append((topic, None, orjson.dumps(pending), round_robin % partitions))
            round_robin += 1
            pending.clear()
    for topic, pending in per_topic.items():
        if pending:
            messages.append((topic, None, orjson.dumps(pending), round_robin % partitions))
            round_robin += 1
    expected.events = n
    expected.tracking_ids = len(tids)
    return Dataset(shape, messages, expected)


def live_ticks(source: EventSource, rate: float, tick_s: float) -> Iterator[int]:
    """How many events each tick carries to reach `rate` events/s on average (carrying the remainder)."""
    carry = 0.0
    while True:
        carry += rate * tick_s
        count = int(carry)
        carry -= count
        yield count
