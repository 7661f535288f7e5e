"""The journeys stage's check of the offsets Faust hands it (`streams.agents.skipped`): a range skipped
before a record, also at a partition's first record of a generation, is read and put in first; records
handed on again skip nothing. No broker: the reader is replaced by one that serves from a list."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents.skipped import OffsetTracker, with_skipped_records


def never_committed(partition: int) -> int | None:
    return None


def test_consecutive_offsets_from_the_committed_one_skip_nothing() -> None:
    tracker = OffsetTracker()
    assert [tracker.skipped(1, 0, offset, lambda p: 7) for offset in (7, 8, 9)] == [None, None, None]


def test_a_jump_ahead_is_the_range_skipped() -> None:
    tracker = OffsetTracker()
    assert tracker.skipped(1, 0, 3, lambda p: 3) is None
    assert tracker.skipped(1, 0, 4, lambda p: 3) is None
    assert tracker.skipped(1, 0, 9, lambda p: 3) == (5, 9)
    assert tracker.skipped(1, 0, 10, lambda p: 3) is None


def test_a_first_record_past_the_committed_offset_is_a_skip() -> None:
    """After a restart Faust handed on a partition committed at 7 from offset 21 (and one never committed
    from 13): only the committed offset says where the stream starts."""
    tracker = OffsetTracker()
    assert tracker.skipped(1, 1, 21, lambda p: 7) == (7, 21)
    assert tracker.skipped(1, 3, 13, never_committed) == (0, 13)


def test_records_handed_on_again_skip_nothing_and_do_not_lower_the_mark() -> None:
    tracker = OffsetTracker()
    for offset in range(10):
        tracker.skipped(1, 0, offset, never_committed)
    assert tracker.skipped(1, 0, 4, never_committed) is None  # a seek back: read again, absorbed as replays
    assert tracker.skipped(1, 0, 10, never_committed) is None
    assert tracker.skipped(1, 0, 12, never_committed) == (11, 12)


def test_partitions_are_followed_apart() -> None:
    tracker = OffsetTracker()
    tracker.skipped(1, 0, 0, never_committed)
    tracker.skipped(1, 1, 0, never_committed)
    assert tracker.skipped(1, 1, 1, never_committed) is None
    assert tracker.skipped(1, 0, 2, never_committed) == (1, 2)


def test_a_new_generation_starts_every_partition_at_its_committed_offset() -> None:
    """After a rebalance the partition may have been another worker's: what it read is not a skip."""
    tracker = OffsetTracker()
    tracker.skipped(1, 0, 5, lambda p: 5)
    assert tracker.skipped(2, 0, 40, lambda p: 40) is None
    assert tracker.skipped(2, 0, 42, lambda p: 40) == (41, 42)


def event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))


class ListReader:
    def __init__(self) -> None:
        self.reads: list[tuple[int, int, int]] = []

    async def read(self, partition: int, start: int, end: int) -> list[Any]:
        self.reads.append((partition, start, end))
        return [event(partition, offset) for offset in range(start, end)]


@pytest.mark.asyncio
async def test_skipped_records_are_put_in_before_the_record_that_follows_them() -> None:
    reader = ListReader()
    batch = [event(0, 7), event(1, 0), event(0, 10), event(1, 1), event(0, 11)]
    filled = await with_skipped_records(batch, OffsetTracker(), reader, 1, lambda p: 7 if p == 0 else None)  # type: ignore[arg-type]
    assert [(e.message.partition, e.message.offset) for e in filled] == [
        (0, 7), (1, 0), (0, 8), (0, 9), (0, 10), (1, 1), (0, 11)]
    assert reader.reads == [(0, 8, 10)]
