"""Intake: input topics -> validated, normalised events re-keyed by tracking ID (spend by channel shard).

Stateless and thin: `streams.events` decides; this agent only moves bytes. Valid events of a
batch go out as one message per destination partition, so the next stage pays Faust's
per-message cost once per batch, not once per event. Each message, and a heartbeat to every
partition, carries this intake's touchpoint watermark (see `streams.watermarks`):

    {"src": "<worker>", "wm": <event time the touchpoint partitions are read up to>,
     "own": ["<topic>/<partition>", ...: the touchpoint partitions that "wm" is about],
     "mx": <the highest event time read before this batch>, "e": [[key, row], ...]}

`mx` gives every journey partition the stream's event time, so that lateness is judged the
same way on a partition that has been quiet for a while as on a busy one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import orjson

from streams.app import Wiring, instance_name
from streams.events import TOPIC_TYPES, Spend, parse_message
from streams.journeys import SEQ_PER_MESSAGE, spend_key
from streams.watermarks import NOTHING_READ, TouchProgress

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.02
HEARTBEAT_INTERVAL_S = 0.2
LAG_REPORT_INTERVAL_S = 5.0
FUTURE_TOLERANCE_MS = 300_000  # a clock far in the future must not close every window
# Conversions wait until these are read past their ts: touchpoints (so none is missed) and the other
# conversions (so a customer's earlier order is judged first, whatever partition it came on).
WATERMARK_TOPICS = ("impressions", "clicks", "leads", "orders")


def route_key(event: Any) -> str:
    """Journeys are keyed by tracking ID; spend has none and is keyed by its channel's shard."""
    return spend_key(event.channel, event.event_id) if isinstance(event, Spend) else event.tracking_id


def dlq_record(error: str, topic: str, partition: int, offset: int, index: int | None, raw: bytes | None) -> bytes:
    text = "" if raw is None else raw.decode("utf-8", errors="replace")
    return orjson.dumps(
        {"error": error, "topic": topic, "partition": partition, "offset": offset, "index": index, "value": text}
    )


class Intake:
    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.source = instance_name(w.settings)
        self.progress = TouchProgress()
        self.mark = NOTHING_READ  # the watermark of the last heartbeat: conversions wait for the first
        self.owned: list[str] | None = None  # the input partitions ("topic/partition") that `mark` is about
        self.invalid = {topic: w.metrics.events.labels(kind, "invalid") for topic, kind in TOPIC_TYPES.items()}
        self.stream_time = 0  # highest event time read (never ahead of now by more than the tolerance)
        self.last_lag_report = 0.0
        self.reported_lag: set[tuple[str, str]] = set()

    async def handle(self, batch: list[Any]) -> None:
        routed: dict[int, list[list[Any]]] = defaultdict(list)
        read: list[tuple[Any, int, int | None]] = []
        for event in batch:
            message = event.message
            valid, rejections = parse_message(message.value, message.topic, self.w.settings)
            for rejection in rejections:
                self.invalid[message.topic].inc()
                record = dlq_record(
                    rejection.error, message.topic, message.partition, message.offset, rejection.index, message.value
                )
                await self.w.dlq.send(value=record)
            for item in valid:
                key = route_key(item)
                routed[self.w.partition_of(key)].append([key, list(item)])
            if message.topic in WATERMARK_TOPICS:
                read.append((message.tp, message.offset, max((item.ts for item in valid), default=None)))
        for partition, items in routed.items():
            for start in range(0, len(items), SEQ_PER_MESSAGE):
                await self.send(partition, self.mark, items[start : start + SEQ_PER_MESSAGE])
        # Counted as read only once sent: a heartbeat must never overtake the events it vouches for.
        for tp, offset, max_ts in read:
            self.progress.saw(tp, offset, max_ts)
        if routed:
            newest = max(row[2] for items in routed.values() for _, row in items)
            self.stream_time = max(self.stream_time, min(newest, int(time.time() * 1000) + FUTURE_TOLERANCE_MS))

    async def send(self, partition: int, watermark: int, items: list[list[Any]]) -> None:
        value = orjson.dumps({"src": self.source, "wm": watermark, "own": self.owned, "mx": self.stream_time,
                              "e": items})
        await self.w.journey_events.send(value=value, partition=partition)

    async def refresh_watermark(self) -> None:
        """Ask the broker for the end offsets of the owned partitions and compare with what was read."""
        owned = {tp for tp in self.w.app.assignor.assigned_actives() if tp.topic in WATERMARK_TOPICS}
        self.progress.forget(owned)
        consumer = self.w.app.consumer
        asked_at = int(time.time() * 1000)
        try:
            ends = await consumer.highwaters(*owned) if owned else {}
        except Exception as exc:  # noqa: BLE001 - the broker is away: keep the last mark, conversions wait
            log.warning("end offsets unavailable (%s): the watermark stays at %d", exc, self.mark)
            return
        self.mark = self.progress.watermark(owned, ends.get, lambda tp: _unseen_at(consumer, tp), asked_at)
        self.owned = sorted(f"{tp.topic}/{tp.partition}" for tp in owned)

    async def heartbeat(self) -> None:
        """Tell every journey partition how far this intake has read, even when nothing is routed there."""
        await self.refresh_watermark()
        for partition in range(self.w.settings.topic_partitions):
            await self.send(partition, self.mark, [])
        if time.monotonic() - self.last_lag_report >= LAG_REPORT_INTERVAL_S:
            self.last_lag_report = time.monotonic()
            self.report_consumer_lag()

    def report_consumer_lag(self) -> None:
        consumer = self.w.app.consumer
        owned = {tp for tp in self.w.app.assignor.assigned_actives() if tp.topic in TOPIC_TYPES}
        gauge = self.w.metrics.consumer_lag
        for tp in owned:
            end, position = consumer.highwater(tp), _position(consumer, tp)
            if end is not None and position is not None:
                gauge.labels(tp.topic, str(tp.partition)).set(max(0, end - position))
        for labels in list(self.reported_lag - {(tp.topic, str(tp.partition)) for tp in owned}):
            gauge.remove(*labels)  # a partition given away in a rebalance is another worker's to report
        self.reported_lag = {(tp.topic, str(tp.partition)) for tp in owned}


def _unseen_at(consumer: Any, tp: Any) -> int | None:
    """Where the intake stands on a partition it has not read a message from since it got it. While
    Faust has handed nothing of it to the agents, that is the fetch position; once it has, messages
    wait in Faust's buffers, unread by the intake, and the committed offset it started from counts
    (the fetch position would call the partition read to its end before its touchpoints are absorbed)."""
    if consumer._read_offset.get(tp) is None:
        return _position(consumer, tp)
    return consumer._committed_offset.get(tp)


def _position(consumer: Any, tp: Any) -> int | None:
    """The next offset the consumer will read from tp, where aiokafka knows it (None otherwise)."""
    try:
        state = consumer._thread._ensure_consumer()._subscription.subscription.assignment.state_value(tp)
        return None if state is None or not state.has_valid_position else state.position
    except (AttributeError, AssertionError, KeyError):
        return None


def register(w: Wiring) -> None:
    intake = Intake(w)
    w.state["intake"] = intake
    # A heartbeat must not run while a batch is half sent: its mark would already count the batch's
    # touchpoints and could reach a journey partition before them (found by the kill -9 test).
    sending = asyncio.Lock()

    @w.app.agent(w.inputs, name="intake")
    async def intake_agent(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            async with sending:
                await intake.handle(batch)

    @w.app.timer(HEARTBEAT_INTERVAL_S, name="intake-heartbeat")
    async def heartbeat() -> None:
        async with sending:
            await intake.heartbeat()
