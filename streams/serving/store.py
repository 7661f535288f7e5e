"""The small store the worker needs beyond Kafka: Redis when `REDIS_URL` is set, else in process.

Two uses:
- claims on customers and order ids (`Claims`), global across partitions and workers: is an order its
  customer's first (new vs returning), and does an event hold its order_id (a second order with the same
  order_id is a duplicate whatever its event_id or tracking ID). Judged in event time by
  `streams.core.claims`; a replay gives the same answer. Redis keeps them for several workers; without
  Redis they live in the worker's changelogged `claims` table (`streams.stages.claims`).
- the latest KPI messages for `GET /api/v1/kpis` and `/api/v1/ltv` (`Store`): Redis, or in process
  (refilled from the metric topics at start, `streams.stages.web`).
Calls are batched: one pipeline per call, never one round trip per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

CUSTOMER_PREFIX = "attribution:customer:"
ORDER_PREFIX = "attribution:order:"
LATEST_PREFIX = "attribution:latest:"
# KEYS[1]: the claimed key; ARGV: event_id, ts, ttl_ms, refresh (1/0). The value is "holder|expires_at_ms",
# as streams.core.claims.claim judges it; a value of the older form (the holder alone) holds until Redis drops
# it. Event time decides; Redis's own expiry (PX, wall clock, twice the hold after the last write) only bounds
# its memory, and ends no hold that event time still counts unless the stream stalls for longer than a hold.
CLAIM_SCRIPT = """
local row = redis.call('GET', KEYS[1])
local ts, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local holder, expires = nil, 0
if row then
  holder, expires = string.match(row, '^(.*)|(%d+)$')
  if holder then expires = tonumber(expires) else holder, expires = row, math.huge end
end
if (not row) or ts >= expires then
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. (ts + ttl), 'PX', 2 * ttl)
  return 1
end
if ARGV[4] == '1' and ts + ttl > expires then
  redis.call('SET', KEYS[1], holder .. '|' .. (ts + ttl), 'PX', 2 * ttl)
end
if holder == ARGV[1] then return 1 end
return 0
"""


class Claims(Protocol):
    async def first_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        """For each (customer_id, order event_id, ts): is it that customer's first order?"""
        ...

    async def claim_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        """For each (order_id, event_id, ts): is this event the one that holds the order_id?"""
        ...

    async def written(self) -> None:
        """Return once every claim made so far survives a crash of this worker."""
        ...

    async def sweep(self, before_ms: int) -> int:
        """Forget the claims whose hold ended before `before_ms` of event time; returns how many."""
        ...

    async def forget_customer(self, customer_id: str) -> int:
        """Erasure: forget the customer's claim (their next order is a first order again); returns the rows."""
        ...


class Store(Protocol):
    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None: ...

    async def get_latest(self, namespace: str) -> dict[str, bytes]: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The latest KPI messages in process; claims live in the worker's `claims` table."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, bytes]] = {}

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None:
        self.latest.setdefault(namespace, {}).update(items)

    async def get_latest(self, namespace: str) -> dict[str, bytes]:
        return dict(self.latest.get(namespace, {}))

    async def close(self) -> None:
        return None


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.claim_script = self.client.register_script(CLAIM_SCRIPT)

    async def first_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        return await self._claim(CUSTOMER_PREFIX, orders, ttl_ms, refresh=True)

    async def claim_orders(self, orders: Sequence[tuple[str, str, int]], ttl_ms: int) -> list[bool]:
        return await self._claim(ORDER_PREFIX, orders, ttl_ms, refresh=False)

    async def _claim(
        self, prefix: str, claims: Sequence[tuple[str, str, int]], ttl_ms: int, refresh: bool
    ) -> list[bool]:
        if not claims:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for key, event_id, ts in claims:
                await self.claim_script(keys=[prefix + key], args=[event_id, ts, ttl_ms, int(refresh)], client=pipe)
            replies = await pipe.execute()
        return [reply == 1 for reply in replies]

    async def written(self) -> None:
        return None  # Redis answered: its persistence is Redis's own (appendonly)

    async def sweep(self, before_ms: int) -> int:
        return 0  # each key expires by itself (PX), at most a hold's length after its last claim

    async def forget_customer(self, customer_id: str) -> int:
        return int(await self.client.delete(CUSTOMER_PREFIX + customer_id))

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None:
        if items:
            await self.client.hset(LATEST_PREFIX + namespace, mapping=items)

    async def get_latest(self, namespace: str) -> dict[str, bytes]:
        raw = await self.client.hgetall(LATEST_PREFIX + namespace)
        return {key.decode(): value for key, value in raw.items()}

    async def close(self) -> None:
        await self.client.aclose()


def open_store(redis_url: str | None) -> RedisStore | MemoryStore:
    return RedisStore(redis_url) if redis_url else MemoryStore()
