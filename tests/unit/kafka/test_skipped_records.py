"""The check of the offsets Faust hands every stage it feeds
(`streams.kafka.skipped_records`): a range skipped before a record, also at a partition's first record of a
generation, is read and put in first; a record handed on again is dropped; a partition starts at Faust's
committed offset, else the broker's, else 0. No broker: the reader is replaced by one that serves from a
list."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from faust.types import TP

from streams.kafka import skipped_records
from streams.kafka.skipped_records import (
    OffsetTracker,
    SkippedRecordGuard,
    SkippedRecordGuards,
    SkippedRecordReader,
    with_skipped_records,
)


def placed(tracker: OffsetTracker, partition: int, *offsets: int) -> list[tuple[int, int] | None]:
    return [tracker.place(partition, offset) for offset in offsets]


def started(partition: int, at: int, generation: int = 1) -> OffsetTracker:
    tracker = OffsetTracker()
    assert tracker.starts(generation, partition)
    tracker.start(partition, at)
    return tracker


def test_consecutive_offsets_from_the_start_skip_nothing() -> None:
    assert placed(started(0, 7), 0, 7, 8, 9) == [(7, 7), (8, 8), (9, 9)]


def test_a_jump_ahead_is_the_range_skipped() -> None:
    assert placed(started(0, 3), 0, 3, 4, 9, 10) == [(3, 3), (4, 4), (5, 9), (10, 10)]


def test_a_first_record_past_the_start_is_a_skip() -> None:
    """After a restart Faust handed on a partition committed at 7 from offset 21 (and one never committed
    from 13): only where the stream was sought to says where it starts."""
    assert placed(started(1, 7), 1, 21) == [(7, 21)]
    assert placed(started(3, 0), 3, 13) == [(0, 13)]


def test_a_record_handed_on_again_is_dropped_and_does_not_lower_the_mark() -> None:
    tracker = started(0, 0)
    placed(tracker, 0, *range(10))
    assert placed(tracker, 0, 4, 9, 10, 12) == [None, None, (10, 10), (11, 12)]


def test_partitions_are_followed_apart() -> None:
    tracker = started(0, 0)
    assert not tracker.starts(1, 0) and tracker.starts(1, 1)
    tracker.start(1, 0)
    assert placed(tracker, 1, 0, 1) == [(0, 0), (1, 1)]
    assert placed(tracker, 0, 0, 2) == [(0, 0), (1, 2)]


def test_a_new_generation_starts_every_partition_again() -> None:
    """After a rebalance the partition may have been another worker's: what it read is not a skip."""
    tracker = started(0, 5)
    placed(tracker, 0, 5)
    assert tracker.starts(2, 0)
    tracker.start(0, 40)
    assert placed(tracker, 0, 40, 42) == [(40, 40), (41, 42)]


def event(partition: int, offset: int, topic: str = "partials") -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, topic=topic))


class ListReader:
    """Serves any range; the broker's committed offsets are `on_broker`."""

    def __init__(self, on_broker: dict[int, int | None], topic: str = "partials") -> None:
        self.on_broker = on_broker
        self.topic = topic
        self.reads: list[tuple[int, int, int]] = []

    async def committed(self, partition: int) -> int | None:
        return self.on_broker.get(partition)

    async def read(self, partition: int, start: int, end: int) -> list[Any]:
        self.reads.append((partition, start, end))
        return [event(partition, offset, self.topic) for offset in range(start, end)]

    async def close(self) -> None:
        self.closed = True


def offsets(events: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in events]


@pytest.mark.asyncio
async def test_skipped_records_are_put_in_before_the_record_that_follows_them() -> None:
    reader = ListReader({})
    batch = [event(0, 7), event(1, 0), event(0, 10), event(1, 1), event(0, 11)]
    filled = await with_skipped_records(batch, OffsetTracker(), reader, 1, {0: 7}.get)  # type: ignore[arg-type]
    assert offsets(filled) == [(0, 7), (1, 0), (0, 8), (0, 9), (0, 10), (1, 1), (0, 11)]
    assert reader.reads == [(0, 8, 10)]


@pytest.mark.asyncio
async def test_where_faust_has_no_committed_offset_yet_the_broker_s_counts_then_the_beginning() -> None:
    """A clean restart: the first records came before Faust's seek had set its committed offsets; taking
    the beginning for their start read everything again (and judged it late again)."""
    reader = ListReader({0: 30})
    batch = [event(0, 30), event(0, 31), event(1, 2)]
    filled = await with_skipped_records(batch, OffsetTracker(), reader, 1, lambda p: None)  # type: ignore[arg-type]
    assert offsets(filled) == [(0, 30), (0, 31), (1, 0), (1, 1), (1, 2)]
    assert reader.reads == [(1, 0, 2)]


@pytest.mark.asyncio
async def test_records_handed_on_twice_in_a_batch_are_absorbed_once() -> None:
    batch = [event(0, 5), event(0, 6), event(0, 5), event(0, 6), event(0, 7)]
    filled = await with_skipped_records(batch, OffsetTracker(), ListReader({}), 1, {0: 5}.get)  # type: ignore[arg-type]
    assert offsets(filled) == [(0, 5), (0, 6), (0, 7)]


@pytest.mark.asyncio
async def test_a_guard_starts_at_faust_s_committed_offset_of_its_own_topic_and_follows_the_generation() -> None:
    """The guard each single-topic agent (journeys, metrics, LTV customers) puts before its stage."""
    consumer = SimpleNamespace(_committed_offset={TP("partials", 0): 4, TP("other-topic", 1): 9})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    guard = SkippedRecordGuard(app, "127.0.0.1:1", "partials", "attribution")
    reader = guard.reader = ListReader({1: 2})  # type: ignore[assignment]
    async with guard:
        assert offsets(await guard([event(0, 6), event(1, 3), event(0, 6)])) == [(0, 4), (0, 5), (0, 6), (1, 2),
                                                                                 (1, 3)]
        assert reader.reads == [(0, 4, 6), (1, 2, 3)]
        app.consumer_generation_id = 2  # a rebalance: where the other worker left partition 0 is not a skip
        consumer._committed_offset[TP("partials", 0)] = 20
        assert offsets(await guard([event(0, 20)])) == [(0, 20)]
    assert reader.closed  # the agent's end closes the guard's consumer


def topic_offsets(events: list[Any]) -> list[tuple[str, int, int]]:
    return [(e.message.topic, e.message.partition, e.message.offset) for e in events]


@pytest.mark.asyncio
async def test_an_agent_of_two_topics_follows_each_topic_s_offsets_apart_and_keeps_the_batch_s_order() -> None:
    """Signals and LTV channels read two topics with the same partition numbers: offset 3 of one topic
    says nothing of the other's, and a skipped range goes in before the record of its own topic."""
    committed = {TP("metrics.channel", 0): 3, TP("metrics.campaign", 0): 10}
    app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset=committed), consumer_generation_id=1)
    guards = SkippedRecordGuards(app, "127.0.0.1:1", ("metrics.channel", "metrics.campaign"), "attribution")
    readers = {topic: ListReader({}, topic) for topic in guards.guards}
    for topic, guard in guards.guards.items():
        guard.reader = readers[topic]  # type: ignore[assignment]
    batch = [event(0, 3, "metrics.channel"), event(0, 12, "metrics.campaign"), event(0, 4, "metrics.channel"),
             event(0, 12, "metrics.campaign"), event(0, 6, "metrics.channel")]
    async with guards:
        filled = await guards(batch)
    assert topic_offsets(filled) == [
        ("metrics.channel", 0, 3), ("metrics.campaign", 0, 10), ("metrics.campaign", 0, 11),
        ("metrics.campaign", 0, 12), ("metrics.channel", 0, 4), ("metrics.channel", 0, 5), ("metrics.channel", 0, 6),
    ]
    assert readers["metrics.channel"].reads == [(0, 5, 6)] and readers["metrics.campaign"].reads == [(0, 10, 12)]
    assert all(reader.closed for reader in readers.values())


class FlakyConsumer:
    """A consumer whose every call fails with `failure` once `calls` calls were served (None: never fails)."""

    def __init__(self, committed: int | None = None, records: list[int] | None = None,
                 failure: BaseException | None = None, calls: int = 0) -> None:
        self.committed_offset, self.records = committed, list(records or [])
        self.failure, self.calls = failure, calls
        self.sought: int | None = None
        self.stopped = False

    def serve(self) -> None:
        if self.failure is not None and self.calls == 0:
            raise self.failure
        self.calls -= 1

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.sought = offset

    async def committed(self, tp: Any) -> int | None:
        self.serve()
        return self.committed_offset

    async def getmany(self, tp: Any, timeout_ms: int) -> dict[Any, list[Any]]:
        self.serve()
        assert self.sought is not None
        batch = [SimpleNamespace(offset=o) for o in self.records if o >= self.sought][:2]
        self.sought = batch[-1].offset + 1 if batch else self.sought
        return {tp: batch}

    async def stop(self) -> None:
        self.stopped = True


def reader_of(consumers: list[FlakyConsumer], monkeypatch: pytest.MonkeyPatch) -> SkippedRecordReader:
    monkeypatch.setattr(skipped_records, "RETRY_S", 0.0)
    reader = SkippedRecordReader("127.0.0.1:1", "partials", "attribution")
    queue = list(consumers)

    async def started() -> Any:
        if reader.consumer is None:
            reader.consumer = queue.pop(0)  # type: ignore[assignment]
        return reader.consumer

    reader.started = started  # type: ignore[method-assign]
    return reader


@pytest.mark.asyncio
async def test_the_committed_offset_is_asked_again_of_a_fresh_consumer_while_the_broker_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker restart left aiokafka's client without metadata ("Did we not perform bootstrap?"): the metrics
    stage's agent crashed on it and the metric topics stopped."""
    broken = FlakyConsumer(failure=AssertionError("Did we not perform bootstrap?"))
    still_away = FlakyConsumer(failure=KafkaError("coordinator not available"))
    back = FlakyConsumer(committed=42)
    reader = reader_of([broken, still_away, back], monkeypatch)
    assert await reader.committed(3) == 42
    assert broken.stopped and still_away.stopped and not back.stopped


@pytest.mark.asyncio
async def test_a_skipped_range_read_across_an_outage_goes_on_after_what_it_had(monkeypatch: pytest.MonkeyPatch) -> None:
    first = FlakyConsumer(records=list(range(20)), failure=KafkaError("connection closed"), calls=1)
    second = FlakyConsumer(records=list(range(20)))
    reader = reader_of([first, second], monkeypatch)
    got = await reader.read(0, 5, 10)
    assert [e.message.offset for e in got] == [5, 6, 7, 8, 9]
    assert first.stopped
