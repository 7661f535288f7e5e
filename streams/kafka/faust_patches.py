"""Small, tested corrections to faust-streaming 0.15 that the engine's exactness depends on.

`drain_producer_buffer_on_flush`: Faust writes table changes to their changelogs through a buffer
(`ProducerBuffer`, fed by `table[key] = value`), and before it commits input offsets it calls
`producer.flush()`, which is meant to drain that buffer. It does not: `ProducerBuffer.flush` gives up
as soon as 0.1 s pass without a message leaving the buffer (a busy event loop, a full client
accumulator), and the message it is sending at that moment is not waited for either. The offsets are
then committed while table changes that absorbed those inputs are still only in memory, and a crash
(kill -9) loses them for good: the restarted worker neither has the state nor reads the input again.
Found by tests/integration/test_reliability.py (events lost from the metrics after kill -9 mid-run).
The corrected flush returns only when the buffer is empty and nothing is on its way into the client.

`seek_uncommitted_partitions_to_beginning`: after every rebalance Faust seeks the stream partitions back
to their committed offsets, to undo whatever its fetcher read meanwhile: `Consumer.getmany` drops the
fetched records of a partition that was paused between the fetch and the hand-over (it was, for the
table recovery), while the client's position has moved past them. aiokafka's `seek_to_committed` skips
a partition that has no committed offset yet, so for such a partition those records are never read:
after a kill -9 before the worker's first offset commit, the restarted worker went on from the end of
the journeys topic and lost every event routed there before the crash (found by
tests/integration/test_reliability.py). Such a partition is now sought to its beginning, which is what
`consumer_auto_offset_reset="earliest"` means for it.

`set_fetch_limits`: the worker consumer's fetch wait (hard-coded to 1.5 s by Faust) and fetch size.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

_IN_FLIGHT = "_attribution_in_flight"


def drain_producer_buffer_on_flush() -> None:
    """Make `ProducerBuffer.flush` wait until every buffered message has been handed to the Kafka client
    (the client's own flush, which Faust calls right after, then waits for the broker's acks)."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, "drains", False):
        return
    send_pending = ProducerBuffer._send_pending

    async def _send_pending(self: Any, fut: Any) -> None:
        setattr(self, _IN_FLIGHT, getattr(self, _IN_FLIGHT, 0) + 1)
        try:
            await send_pending(self, fut)
        finally:
            setattr(self, _IN_FLIGHT, getattr(self, _IN_FLIGHT) - 1)

    async def flush(self: Any) -> None:
        while self.size or getattr(self, _IN_FLIGHT, 0):
            if self.state != "running":
                raise RuntimeError(f"Cannot flush: Producer not Running ({self.size} messages unsent)")
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)

    flush.drains = True  # type: ignore[attr-defined]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


def seek_uncommitted_partitions_to_beginning() -> None:
    """After Faust's seek to the committed offsets, seek stream partitions without one to their beginning."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread.seek_to_committed, "seeks_uncommitted", False):
        return
    seek_to_committed = AIOKafkaConsumerThread.seek_to_committed

    async def seek(self: Any) -> Any:
        committed = await seek_to_committed(self)
        changelogs = self.app.tables.changelog_topics
        uncommitted = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if uncommitted:
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *uncommitted)
        return committed

    seek.seeks_uncommitted = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread.seek_to_committed = seek  # type: ignore[method-assign]


def set_fetch_limits(max_wait_ms: int, min_bytes: int) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500 in its worker consumer (p50 latency 1.2-1.7 s) and leaves
    fetch_min_bytes at 1: the consumer Faust builds gets these instead (see streams.stages.topology)."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    limits = (max_wait_ms, min_bytes)
    if getattr(thread._create_worker_consumer, "fetch_limits", None) == limits:
        return
    original = getattr(thread._create_worker_consumer, "original", thread._create_worker_consumer)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms, consumer._fetch_min_bytes = limits
        return consumer

    create_worker_consumer.original = original  # type: ignore[attr-defined]
    create_worker_consumer.fetch_limits = limits  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer
