"""Records that Faust's consumer skipped, read again directly (every stage that a Faust agent feeds).

After a restart or a rebalance, faust-streaming 0.15's consumer can hand a stream partition's records on
with some missing (a seek to the committed offsets lands while its fetcher hands out records from before
it), and books the missing offsets as a gap, which counts as acknowledged: the next commit passes them
and their events are never processed. Found by the 100,000-event kill -9 test: touchpoints lost after the
restart, their conversions credited to other channels or never attributed, one run in three or four.

The journeys stage must absorb every message of its partitions, in offset order (its sequence marks skip
anything below a mark already passed), so it checks the offsets it is handed and reads a skipped range
itself, with a consumer of its own (it reads the worker group's commits but never joins it), before the
record that follows the range. Offsets are followed within one consumer generation: after a rebalance a
partition starts at its committed offset, asked of the broker where Faust has not yet set it (the first
records can arrive before Faust's own seek has). A record handed on a second time is dropped: it was
absorbed the first time (passed on again, it was judged late again and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from itertools import groupby
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

log = logging.getLogger(__name__)
WAIT_WARNING_S = 30.0
RETRY_S = 0.5
# What aiokafka raises while the broker is away: its errors, OSError, and an AssertionError from a client that
# lost its cluster metadata ("Did we not perform bootstrap?") or a coordinator routine it broke (seen when the
# broker restarted under the metrics stage: the agent crashed and the metric topics stopped).
BROKER_AWAY = (KafkaError, OSError, AssertionError)


class OffsetTracker:
    """The next offset expected of each partition of one topic, within a consumer generation."""

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}
        self.generation: Any = None

    def starts(self, generation: Any, partition: int) -> bool:
        """Whether the partition's next record is its first of this generation: `start` must say where
        the stream was sought to."""
        if generation != self.generation:
            self.expected.clear()
            self.generation = generation
        return partition not in self.expected

    def start(self, partition: int, offset: int) -> None:
        self.expected[partition] = offset

    def place(self, partition: int, offset: int) -> tuple[int, int] | None:
        """Note that `offset` was handed on: the range [start, offset) skipped just before it (empty when
        none), or None for a record handed on before (it was absorbed then)."""
        expected = self.expected[partition]
        if offset < expected:
            return None
        self.expected[partition] = offset + 1
        return expected, offset


class SkippedRecordReader:
    """Reads ranges of a topic's partitions with a consumer of its own, started on first use."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group  # whose committed offsets it reads; it never joins the group or commits
        self.consumer: AIOKafkaConsumer | None = None

    async def committed(self, partition: int) -> int | None:
        """The group's committed offset of the partition on the broker (None: never committed)."""
        tp = TopicPartition(self.topic, partition)
        warned_at = time.monotonic()
        while True:  # the broker away: wait for it, with a fresh consumer once it is back
            try:
                consumer = await self.started()
                consumer.assign([tp])
                return await consumer.committed(tp)  # type: ignore[no-any-return]
            except BROKER_AWAY as exc:
                warned_at = await self.after_failure(exc, warned_at, f"the committed offset of {tp}")

    async def read(self, partition: int, start: int, end: int) -> list[Any]:
        """Records start..end-1 of the partition, as events of a batch (`event.message` is the record)."""
        log.warning("offsets %d-%d of %s/%d were skipped by the stream; reading them directly",
                    start, end - 1, self.topic, partition)
        tp = TopicPartition(self.topic, partition)
        records: list[Any] = []
        warned_at = time.monotonic()
        sought = False
        while True:  # the broker away: wait for it, as the stream does
            try:
                consumer = await self.started()
                if not sought:
                    consumer.assign([tp])
                    consumer.seek(tp, records[-1].message.offset + 1 if records else start)
                    sought = True
                fetched = await consumer.getmany(tp, timeout_ms=1000)
            except BROKER_AWAY as exc:
                sought = False
                warned_at = await self.after_failure(exc, warned_at, f"offsets {start}-{end - 1} of {tp}")
                continue
            for record in fetched.get(tp, []):
                if record.offset >= end:  # also when retention deleted the range: it cannot be read
                    return records
                records.append(SimpleNamespace(message=record))
                if record.offset == end - 1:
                    return records
            if time.monotonic() - warned_at > WAIT_WARNING_S:
                warned_at = time.monotonic()
                log.warning("still reading offsets %d-%d of %s/%d", start, end - 1, self.topic, partition)

    async def after_failure(self, exc: BaseException, warned_at: float, what: str) -> float:
        """Drop the consumer (aiokafka's can be left broken by an outage) and wait a little; say so now and then."""
        await self.close_quietly()
        if time.monotonic() - warned_at > WAIT_WARNING_S:
            log.warning("still waiting for the broker to read %s: %r", what, exc)
            warned_at = time.monotonic()
        await asyncio.sleep(RETRY_S)
        return warned_at

    async def close_quietly(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def started(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                             enable_auto_commit=False, auto_offset_reset="earliest",
                                             client_id="attribution-skipped-records")
            await self.consumer.start()
        return self.consumer

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


async def with_skipped_records(events: list[Any], tracker: OffsetTracker, reader: SkippedRecordReader,
                               generation: Any, committed: Callable[[int], int | None]) -> list[Any]:
    """The batch without records handed on before, and with every skipped range read and put in before
    the record that follows it. `committed(partition)`: Faust's committed offset where it knows it."""
    out: list[Any] = []
    for event in events:
        message = event.message
        if tracker.starts(generation, message.partition):
            start = committed(message.partition)
            if start is None:
                start = await reader.committed(message.partition)
            tracker.start(message.partition, start or 0)
        gap = tracker.place(message.partition, message.offset)
        if gap is None:
            continue
        if gap[0] < gap[1]:
            out += await reader.read(message.partition, *gap)
        out.append(event)
    return out


class SkippedRecordGuard:
    """What an agent of one topic needs to get every record of its partitions once, in order: call it on
    each batch (`batch = await guard(batch)`) inside `async with guard:`, which closes its consumer when
    the agent ends. `group`: the Faust app's."""

    def __init__(self, app: Any, bootstrap: str, topic: str, group: str) -> None:
        self.app = app
        self.topic = topic
        self.offsets = OffsetTracker()
        self.reader = SkippedRecordReader(bootstrap, topic, group)

    def committed(self, partition: int) -> int | None:
        """Faust's committed offset of the partition (None until its seek has set it, or never committed)."""
        return self.app.consumer._committed_offset.get(TP(self.topic, partition))  # type: ignore[no-any-return]

    async def __call__(self, batch: list[Any]) -> list[Any]:
        return await with_skipped_records(batch, self.offsets, self.reader, self.app.consumer_generation_id,
                                          self.committed)

    async def close(self) -> None:
        await self.reader.close()

    async def __aenter__(self) -> SkippedRecordGuard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SkippedRecordGuards:
    """The guard of an agent that reads several topics (signals, LTV channels): each record goes past its own
    topic's `SkippedRecordGuard`, in the batch's order. Used as the single-topic guard is."""

    def __init__(self, app: Any, bootstrap: str, topics: Iterable[str], group: str) -> None:
        self.guards = {topic: SkippedRecordGuard(app, bootstrap, topic, group) for topic in topics}

    async def __call__(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        for topic, run in groupby(batch, key=lambda event: event.message.topic):
            out += await self.guards[topic](list(run))
        return out

    async def close(self) -> None:
        for guard in self.guards.values():
            await guard.close()

    async def __aenter__(self) -> SkippedRecordGuards:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
