"""Baseline 1, the Python ceiling: a raw aiokafka `getmany` loop with orjson decode, nothing else.

    python -m bench.raw_consumer BOOTSTRAP EXPECTED_EVENTS TIMEOUT_S

Reads the five input topics from the earliest offset (manual assignment, no group), decodes every
value with orjson (an array counts as its elements) and prints one JSON line with the count, the
seconds from the first record to the last and the CPU seconds the process used meanwhile.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.data import INPUT_TOPICS


async def consume(bootstrap: str, expected: int, timeout_s: float) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for topic in INPUT_TOPICS for p in (consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for topic in INPUT_TOPICS
                for p in (consumer.partitions_for_topic(topic) or ())
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        loads = orjson.loads
        events = messages = 0
        first = last = cpu_first = cpu_last = 0.0
        deadline = time.monotonic() + timeout_s
        while events < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                if not first:
                    first, cpu_first = time.monotonic(), time.process_time()
                for record in records:
                    value = loads(record.value)
                    events += len(value) if isinstance(value, list) else 1
                messages += len(records)
            last, cpu_last = time.monotonic(), time.process_time()
        return {"events": events, "messages": messages, "seconds": last - first if first else 0.0,
                "cpu_seconds": cpu_last - cpu_first, "done": events >= expected}
    finally:
        await consumer.stop()


def main() -> None:
    bootstrap, expected, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(orjson.dumps(asyncio.run(consume(bootstrap, expected, timeout_s))).decode(), flush=True)


if __name__ == "__main__":
    main()
