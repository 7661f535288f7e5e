"""Claims on customers and order ids without Redis: the worker's changelogged `claims` table.

A row per customer (`c|<customer_id>`) and per order id (`o|<order_id>`), judged by
`streams.core.claims`, so they survive a kill -9 and a restart like every other table. A key's row lives
on the partition `murmur2(key)` gives it; one worker owns every partition when `REDIS_URL` is unset (the
worker refuses to join a group that has another member, and a claim on a partition it does not own is
refused here, so the conversion waits instead of being judged without its customer's history).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streams.core.claims import CUSTOMER_KEY_PREFIX, ORDER_KEY_PREFIX, claim, expired
from streams.kafka.tables import KeyPartitionedTable

SWEEP_CHUNK = 2_000  # rows forgotten per changelog batch, as the journeys' sweep


class NotOwned(RuntimeError):
    """A claim whose row lives on a partition of another worker."""


class TableClaims:
    """`streams.serving.store.Claims` on a KeyPartitionedTable; `owned()` names the partitions it may judge."""

    def __init__(self, table: KeyPartitionedTable, owned: Callable[[], set[int]]) -> None:
        self.table = table
        self.owned = owned

    async def first_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        return self._claim(CUSTOMER_KEY_PREFIX, orders, ttl_ms, refresh=True)

    async def claim_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        return self._claim(ORDER_KEY_PREFIX, orders, ttl_ms, refresh=False)

    async def written(self) -> None:
        await self.table.send_changes()

    def _claim(self, prefix: str, claims: Sequence[tuple[str, str, int]], ttl_ms: int, refresh: bool) -> list[bool]:
        keys = [prefix + key for key, _, _ in claims]
        owned = self.owned()
        foreign = sorted({self.table.partition_for(key) for key in keys} - owned)
        if foreign:
            raise NotOwned(
                f"claims on partitions {foreign} belong to another worker: without REDIS_URL one worker must own "
                "every partition; set REDIS_URL to run several workers"
            )
        answers = []
        changed: dict[str, Any] = {}
        for key, (_, event_id, ts) in zip(keys, claims, strict=True):
            row = changed.get(key) or self.table.get(key)
            holds, after = claim(row, event_id, ts, ttl_ms, refresh)
            if after != row:
                changed[key] = after
            answers.append(holds)
        self.table.put_rows(changed)
        return answers

    async def forget_customer(self, customer_id: str) -> int:
        """Erasure: the customer's claim goes (a tombstone on the changelog); their next order is a first one."""
        key = CUSTOMER_KEY_PREFIX + customer_id
        if self.table.row(key) is None:
            return 0
        self.table.put_rows({key: None})
        await self.table.send_changes()
        return 1

    async def sweep(self, before_ms: int) -> int:
        """Forget owned rows whose hold ended before `before_ms`, a chunk at a time; a row claimed again
        meanwhile is judged again. Returns how many were forgotten."""
        keys = self._expired(list(self.table.data.keys()), before_ms)
        gone = 0
        for start in range(0, len(keys), SWEEP_CHUNK):
            chunk = self._expired(keys[start:start + SWEEP_CHUNK], before_ms)
            self.table.put_rows(dict.fromkeys(chunk))
            await self.table.send_changes()
            gone += len(chunk)
        return gone

    def _expired(self, keys: list[str], before_ms: int) -> list[str]:
        owned, data = self.owned(), self.table.data
        return [key for key in keys if (row := data.get(key)) and expired(row, before_ms)
                and self.table.partition_for(key) in owned]
