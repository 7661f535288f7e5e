"""Records of the journeys topic that Faust's consumer skipped, read again directly.

After a restart or a rebalance, faust-streaming 0.15's consumer can hand a stream partition's records on
with some missing (a seek to the committed offsets lands while its fetcher hands out records from before
it), and books the missing offsets as a gap, which counts as acknowledged: the next commit passes them
and their events are never processed. Found by the 100,000-event kill -9 test: touchpoints lost after the
restart, their conversions credited to other channels or never attributed, one run in three or four.

The journeys stage must absorb every message of its partitions, in offset order (its sequence marks skip
anything below a mark already passed), so it checks the offsets it is handed and reads a skipped range
itself, with a consumer of its own (no group), before the message that follows the range. Offsets are
followed within one consumer generation: after a rebalance a partition starts at its committed offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
WAIT_WARNING_S = 30.0


class OffsetTracker:
    """The next offset expected of each partition of one topic, within a consumer generation."""

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}
        self.generation: Any = None

    def skipped(self, generation: Any, partition: int, offset: int,
                committed: Callable[[int], int | None]) -> tuple[int, int] | None:
        """Note that `offset` was handed on; return the range [start, end) skipped just before it, if any.
        A partition's first offset in a generation is expected at `committed(partition)`, where the stream
        starts (None: never committed, the beginning). An offset handed on again skips nothing."""
        if generation != self.generation:
            self.expected.clear()
            self.generation = generation
        expected = self.expected.get(partition)
        if expected is None:
            expected = committed(partition) or 0
        self.expected[partition] = max(expected, offset + 1)
        return (expected, offset) if offset > expected else None


class SkippedRecordReader:
    """Reads ranges of a topic's partitions with a consumer of its own, started on first use."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer: AIOKafkaConsumer | None = None

    async def read(self, partition: int, start: int, end: int) -> list[Any]:
        """Records start..end-1 of the partition, as events of a batch (`event.message` is the record)."""
        log.warning("offsets %d-%d of %s/%d were skipped by the stream; reading them directly",
                    start, end - 1, self.topic, partition)
        consumer = await self.started()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[Any] = []
        warned_at = time.monotonic()
        while True:  # the broker away: wait for it, as the stream does
            fetched = await consumer.getmany(tp, timeout_ms=1000)
            for record in fetched.get(tp, []):
                if record.offset >= end:  # also when retention deleted the range: it cannot be read
                    return records
                records.append(SimpleNamespace(message=record))
                if record.offset == end - 1:
                    return records
            if time.monotonic() - warned_at > WAIT_WARNING_S:
                warned_at = time.monotonic()
                log.warning("still reading offsets %d-%d of %s/%d", start, end - 1, self.topic, partition)

    async def started(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                             auto_offset_reset="earliest", client_id="attribution-skipped-records")
            await self.consumer.start()
        return self.consumer

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


async def with_skipped_records(events: list[Any], tracker: OffsetTracker, reader: SkippedRecordReader,
                               generation: Any, committed: Callable[[int], int | None]) -> list[Any]:
    """The batch with every skipped range read and put in before the event that follows it."""
    out: list[Any] = []
    for event in events:
        message = event.message
        gap = tracker.skipped(generation, message.partition, message.offset, committed)
        if gap is not None:
            out += await reader.read(message.partition, *gap)
        out.append(event)
    return out
