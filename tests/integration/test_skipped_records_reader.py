"""`SkippedRecordReader` on the real broker: it reads exactly the range asked for, in order, also when the
partition has more records after it, and the group's committed offset (None where it never committed),
without joining the group or committing."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka.skipped_records import SkippedRecordReader
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
    group = f"group-{topic}"
    committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 1)])
        await committer.commit({TopicPartition(topic, 1): 5})
    finally:
        await committer.stop()
    reader = SkippedRecordReader(kafka_bootstrap, topic, group)
    try:
        assert (await reader.committed(1), await reader.committed(0)) == (5, None)
        events = await reader.read(1, 5, 12)
        assert [(e.message.partition, e.message.offset, e.message.value) for e in events] == [
            (1, n, f"m{n}".encode()) for n in range(5, 12)]
        assert [e.message.offset for e in await reader.read(1, 18, 20)] == [18, 19]  # the end of the partition
        assert await reader.committed(1) == 5  # reading committed nothing
    finally:
        await reader.close()
