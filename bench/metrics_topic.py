"""The engine's output as the benchmark sees it: the metrics.channel topic read from the start (MetricsWatcher),
and where a backlog sits between the stages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import data
from bench.processes import BenchError
from streams.kafka.topics import METRICS_CHANNEL_TOPIC
from streams.stages.intake import INTAKE_GROUP
from streams.stages.topology import JOURNEY_TOPIC
from tests.integration.services import create_topics

# --- the metric topic, watched ----------------------------------------------------------------------


async def decoded_batches(consumer: AIOKafkaConsumer) -> AsyncIterator[tuple[float, list[Any]]]:
    """Every batch the consumer gets, as (time received, its JSON messages decoded), until cancelled."""
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        received = time.time()
        yield received, [orjson.loads(record.value) for records in batches.values() for record in records]


async def read_from_start(bootstrap: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    """A started consumer (no group) of every partition of `topic`, from the beginning; creates the topic."""
    await create_topics(bootstrap, [topic], partitions)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=200,  # min bytes 1: data still comes at once
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


class MetricsWatcher:
    """Reads metrics.channel from the start and keeps the latest figures per (channel, window)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.latest: dict[tuple[str, int], tuple[int, float]] = {}
        self.log: list[tuple[float, str, int, int, float]] = []  # (received, channel, window, touches, conv)
        self.touches = 0
        self.conversions = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None
        self.reached: dict[str, float] = {}
        self.admin: AIOKafkaAdminClient | None = None

    async def start(self, partitions: int) -> None:
        self.consumer = await read_from_start(self.bootstrap, METRICS_CHANNEL_TOPIC, partitions)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        async for received, messages in decoded_batches(self.consumer):
            for message in messages:
                self.absorb(received, message)

    def absorb(self, received: float, message: dict[str, Any]) -> None:
        key = (message["channel"], message["window_start"])
        touches = int(message["impressions"]) + int(message["clicks"])
        conversions = float(message["leads"]) + float(message["orders"])
        old_touches, old_conversions = self.latest.get(key, (0, 0.0))
        self.latest[key] = (touches, conversions)
        self.touches += touches - old_touches
        self.conversions += conversions - old_conversions
        self.log.append((received, key[0], key[1], touches, conversions))

    def check(self, expected: data.Expected) -> bool:
        """Notes when the touchpoints, then everything, were first all reflected; True when both are."""
        if self.task is not None and self.task.done():
            self.task.result()  # raises what stopped the reader
            raise BenchError("the metrics.channel reader stopped")
        last = self.log[-1][0] if self.log else time.time()
        if "touches" not in self.reached and self.touches >= expected.touches:
            self.reached["touches"] = last
        if "conversions" not in self.reached and self.conversions >= expected.conversions - 1e-6 * expected.events:
            self.reached["conversions"] = last
        return len(self.reached) == 2

    async def pipeline(self, partitions: int) -> tuple[int, int]:
        """(input messages the engine's group has committed, messages its intake has sent to the journeys
        topic): where a backlog sits between the stages."""
        assert self.consumer is not None
        if self.admin is None:
            self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self.admin.start()
        try:
            if JOURNEY_TOPIC not in await self.admin.list_topics():
                return 0, 0  # not created by the worker yet: asking for its offsets would auto-create it
            committed = await self.admin.list_consumer_group_offsets(INTAKE_GROUP)
            journey = [TopicPartition(JOURNEY_TOPIC, p) for p in range(partitions)]
            ends = await self.consumer.end_offsets(journey)
        except Exception:  # noqa: BLE001 - a diagnostic: not there yet
            return 0, 0
        read = sum(o.offset for tp, o in committed.items() if tp.topic in data.INPUT_TOPICS and o.offset > 0)
        return read, sum(ends.values())

    async def records_written(self) -> dict[str, int]:
        """Records on every topic the engine writes (all but the inputs): what it cost the broker."""
        assert self.consumer is not None
        if self.admin is None:
            self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self.admin.start()
        topics = [t for t in await self.admin.list_topics()
                  if t not in data.INPUT_TOPICS and not t.startswith(("__", "bench-"))]  # bench-: the naive app
        described = await self.admin.describe_topics(topics)
        tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
        ends = await self.consumer.end_offsets(tps)
        out: dict[str, int] = defaultdict(int)
        for tp, end in ends.items():
            out[tp.topic] += end
        return dict(out)

    async def stop(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.consumer is not None:
            await self.consumer.stop()

