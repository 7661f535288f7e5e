"""The partitioner (streams/kafka/partitioner.py) gives every key the partition Kafka's own murmur2 gives it."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka.partitioner import partition_of


def kafka_partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_twenty_thousand_random_keys_land_where_kafka_puts_them() -> None:
    rng = random.Random(2026)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_|/é€"
    for _ in range(20_000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 64)))
        partitions = rng.choice([1, 3, 4, 8, 12, 64, 1000])
        assert partition_of(key, partitions) == kafka_partition(key, partitions), (key, partitions)


@given(st.text(max_size=80), st.integers(1, 4096))
def test_any_text_key_lands_where_kafka_puts_it(key: str, partitions: int) -> None:
    assert partition_of(key, partitions) == kafka_partition(key, partitions)
