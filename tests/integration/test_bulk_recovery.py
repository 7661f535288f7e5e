"""The memory store's bulk changelog read (`streams.kafka.bulk_recovery`) on the real broker: a table's
changelog records, written by the table itself, are read back from each partition's start to its end into
the same rows, and Faust is told the last offset read so that it reads only what follows. The restart of a
real worker through it is in test_reliability.py (kill -9 on the memory store) and bench/state.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from streams.config import Settings
from streams.kafka.bulk_recovery import read_in_bulk
from streams.serving.store import open_store
from streams.stages.app import build
from streams.stages.topology import Wiring
from tests.integration.services import create_topics
from tests.integration.test_business import uid

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTITIONS = 3
VISITORS = 3_000


@pytest.fixture(scope="module")
def wiring() -> Iterator[Wiring]:
    yield build(Settings.from_env({"TOPIC_PARTITIONS": str(PARTITIONS)}), "127.0.0.1:1", open_store(None))


async def write_changelog(bootstrap: str, topic: str, table: Any) -> dict[int, int]:
    """Rows for VISITORS keys, then a second row for every third and a deletion of every seventh, as the
    table queues them, sent to `topic`; the end offset of each partition."""
    keys = [f"visitor-{n}" for n in range(VISITORS)]
    table.put_rows({key: ["first", n] for n, key in enumerate(keys)})
    table.put_rows({key: ["second", n] for n, key in enumerate(keys) if n % 3 == 0})
    table.put_rows({key: None for n, key in enumerate(keys) if n % 7 == 0})
    queued, table.unsent = table.unsent, {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for partition, records in queued.items():
            for key, value in records:
                await producer.send(topic, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return {partition: len(records) for partition, records in queued.items()}


@pytest.fixture
def table(wiring: Wiring) -> Iterator[Any]:
    """The claims table (JSON rows), left empty after the test."""
    yield wiring.claims_table
    wiring.claims_table.data.data.clear()
    wiring.claims_table.data._key_partition.clear()


async def changelog(bootstrap: str, table: Any, partitions: int) -> tuple[str, dict[int, int]]:
    """A new topic of `partitions` holding the table's changelog records (`write_changelog`), and the table
    emptied, as a restarted worker's is; the topic and each written partition's end offset."""
    topic = uid("bulk-changelog")
    await create_topics(bootstrap, [topic], partitions=partitions)
    ends = await write_changelog(bootstrap, topic, table)
    table.data.data.clear()
    table.data._key_partition.clear()
    return topic, ends


def expected_rows() -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    for n in range(VISITORS):
        if n % 7:
            rows[f"visitor-{n}"] = ["second" if n % 3 == 0 else "first", n]
    return rows


async def test_a_changelog_read_in_bulk_gives_the_table_s_rows_and_faust_the_offset_to_go_on_from(
    kafka_bootstrap: str, table: Any
) -> None:
    topic, ends = await changelog(kafka_bootstrap, table, PARTITIONS + 1)  # the last partition stays empty
    destination: dict[TP, Any] = {TP(topic, p): None for p in range(PARTITIONS + 1)}

    await read_in_bulk(kafka_bootstrap, dict.fromkeys(destination, table), destination, {}, budget_s=60.0)

    assert dict(table.data.data) == expected_rows()
    assert destination == {**{TP(topic, p): end - 1 for p, end in ends.items()}, TP(topic, PARTITIONS): None}


async def test_with_no_time_left_nothing_is_read_and_faust_reads_from_the_start(
    kafka_bootstrap: str, table: Any
) -> None:
    topic, _ = await changelog(kafka_bootstrap, table, PARTITIONS)
    destination: dict[TP, Any] = {TP(topic, p): None for p in range(PARTITIONS)}

    await read_in_bulk(kafka_bootstrap, dict.fromkeys(destination, table), destination, {}, budget_s=0.0)

    assert not table.data.data
    assert destination == dict.fromkeys(destination)


async def test_a_partition_already_read_up_to_an_offset_is_read_from_the_next_one(
    kafka_bootstrap: str, table: Any
) -> None:
    """A partition kept through a rebalance: Faust holds the last offset its recovery applied, and the bulk
    read goes on after it (here partition 0 was applied to its last record: nothing of it is read again)."""
    topic, ends = await changelog(kafka_bootstrap, table, PARTITIONS)
    destination: dict[TP, Any] = {TP(topic, 0): ends[0] - 1, TP(topic, 1): -1, TP(topic, 2): None}

    await read_in_bulk(kafka_bootstrap, dict.fromkeys(destination, table), destination, {}, budget_s=60.0)

    assert destination == {TP(topic, p): end - 1 for p, end in ends.items()}
    assert dict(table.data.data) == {key: row for key, row in expected_rows().items() if table.partition_for(key)}


async def test_nothing_past_faust_s_highwater_is_read(kafka_bootstrap: str, table: Any) -> None:
    """Faust's recovery reads a partition up to the highwater it took when it began, and stops with a
    `ConsistencyError` when told of an offset past it: a record written after it (by the worker that had the
    partition before, seen in the churn test) is not applied."""
    topic, ends = await changelog(kafka_bootstrap, table, PARTITIONS)
    destination: dict[TP, Any] = dict.fromkeys((TP(topic, p) for p in range(PARTITIONS)), None)
    highwaters = {TP(topic, 0): 9, TP(topic, 1): None, TP(topic, 2): ends[2] - 1}

    await read_in_bulk(kafka_bootstrap, dict.fromkeys(destination, table), destination, highwaters, budget_s=60.0)

    assert destination == {TP(topic, 0): 9, TP(topic, 1): ends[1] - 1, TP(topic, 2): ends[2] - 1}
    first_ten = [n for n in range(VISITORS) if table.partition_for(f"visitor-{n}") == 0][:10]  # offsets 0-9
    assert {key: row for key, row in table.data.data.items() if table.partition_for(key) == 0} == {
        f"visitor-{n}": ["first", n] for n in first_ten}
