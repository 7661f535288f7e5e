"""`SkippedRecordReader` on the real broker: it reads exactly the range asked for, in order, also when the
partition has more records after it."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from streams.agents.skipped import SkippedRecordReader
from tests.integration.services import create_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_the_reader_returns_exactly_the_skipped_range_in_order(kafka_bootstrap: str) -> None:
    topic = f"skipped-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(20):
            await producer.send_and_wait(topic, f"m{n}".encode(), partition=1)
    finally:
        await producer.stop()
    reader = SkippedRecordReader(kafka_bootstrap, topic)
    try:
        events = await reader.read(1, 5, 12)
        assert [(e.message.partition, e.message.offset, e.message.value) for e in events] == [
            (1, n, f"m{n}".encode()) for n in range(5, 12)]
        assert [e.message.offset for e in await reader.read(1, 18, 20)] == [18, 19]  # the end of the partition
    finally:
        await reader.close()
