"""Claims without Redis (streams/stages/claims.py): the claims table answers, refuses foreign partitions, sweeps."""

from __future__ import annotations

import pytest

from streams.core.claims import CUSTOMER_KEY_PREFIX, ORDER_KEY_PREFIX
from streams.stages.claims import NotOwned, TableClaims
from tests.fakes import FakeTable

DAY = 86_400_000


class PartitionedTable(FakeTable):
    def partition_for(self, key: str) -> int:
        return len(key) % 2


def claims_on(table: FakeTable, owned: set[int] | None = None) -> TableClaims:
    return TableClaims(table, lambda: {0, 1} if owned is None else owned)


async def test_first_orders_and_order_ids_are_rows_of_the_table() -> None:
    table = PartitionedTable()
    claims = claims_on(table)
    assert await claims.first_orders([("cust", "e1", 0), ("cust", "e2", 5)], DAY) == [True, False]
    assert await claims.claim_orders([("A-1", "e1", 0), ("A-1", "e9", 7)], DAY) == [True, False]
    assert table == {CUSTOMER_KEY_PREFIX + "cust": ["e1", 5 + DAY], ORDER_KEY_PREFIX + "A-1": ["e1", DAY]}


async def test_a_new_worker_on_the_same_table_gives_the_same_answers() -> None:
    table = PartitionedTable()
    await claims_on(table).first_orders([("cust", "e1", 0)], DAY)
    restarted = claims_on(PartitionedTable(table))  # the rows as the changelog restores them
    assert await restarted.first_orders([("cust", "e2", 10), ("cust", "e1", 0)], DAY) == [False, True]


async def test_a_claim_on_a_partition_of_another_worker_is_refused_and_changes_nothing() -> None:
    table = PartitionedTable()
    claims = claims_on(table, owned={0})
    with pytest.raises(NotOwned, match="set REDIS_URL"):
        await claims.claim_orders([("odd-key", "e1", 0)], DAY)  # "o|odd-key" has 9 characters: partition 1
    assert table == {}


async def test_the_sweep_forgets_owned_rows_whose_hold_ended_before_the_cutoff() -> None:
    table = PartitionedTable({"o|x": ["e1", 100], "o|yy": ["e2", 100], "o|z": ["e3", 500]})
    claims = claims_on(table, owned={1})  # "o|x" and "o|z" are on partition 1, "o|yy" on 0
    assert await claims.sweep(before_ms=200) == 1
    assert table == {"o|yy": ["e2", 100], "o|z": ["e3", 500]}
