"""Kafka's default partitioner (murmur2) for a key: the intake routes by it and tables find a key's partition by it."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

PARTITION_CACHE_SIZE = 1 << 15  # recent keys' partitions: ~170 B each, so at most ~5.5 MiB


@lru_cache(maxsize=PARTITION_CACHE_SIZE)  # pure-Python murmur2 (~2 us) per event, again per table write of its key
def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a key: routing and tables agree."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
