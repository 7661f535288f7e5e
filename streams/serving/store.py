"""The small store the worker needs beyond Kafka: Redis when `REDIS_URL` is set, else in process.

Uses, all global across partitions and workers:
- first orders of customers (new vs returning), written so a replay gives the same answer:
  `SET customer:<id> <first order event_id> NX`, then compare with the order's own id;
- order ids, the same way (`SET order:<id> <event_id> NX PX <DEDUP_WINDOW>`): a second order
  with the same order_id is a duplicate whatever its event_id or tracking ID;
- the latest KPI messages for `GET /api/v1/kpis` and `/api/v1/ltv`.
Calls are batched: one pipeline per call, never one round trip per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

CUSTOMER_PREFIX = "attribution:customer:"
ORDER_PREFIX = "attribution:order:"
LATEST_PREFIX = "attribution:latest:"


class Store(Protocol):
    async def first_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """For each (customer_id, order event_id): is it that customer's first order?"""
        ...

    async def claim_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """For each (order_id, event_id): is this event the one that holds the order_id?"""
        ...

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None: ...

    async def get_latest(self, namespace: str) -> dict[str, bytes]: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store: exact for one worker; several workers need Redis to share customers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.customers: dict[str, tuple[str, float]] = {}  # id -> (first order event_id, expires at)
        self.orders: dict[str, tuple[str, float]] = {}
        self.latest: dict[str, dict[str, bytes]] = {}

    async def first_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        return [self._claim(self.customers, customer, event_id, ttl_ms, True) for customer, event_id in orders]

    async def claim_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        return [self._claim(self.orders, order_id, event_id, ttl_ms, False) for order_id, event_id in orders]

    def _claim(self, claims: dict[str, tuple[str, float]], key: str, value: str, ttl_ms: int, touch: bool) -> bool:
        now = self.clock()
        held = claims.get(key)
        if held is None or held[1] <= now:
            held = (value, now + ttl_ms / 1000)
        elif touch:
            held = (held[0], now + ttl_ms / 1000)
        claims[key] = held
        if len(claims) % 10_000 == 0:
            for stale in [k for k, (_, expires) in claims.items() if expires <= now]:
                del claims[stale]
        return held[0] == value

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

    async def first_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        if not orders:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for customer, event_id in orders:
                key = CUSTOMER_PREFIX + customer
                pipe.set(key, event_id, nx=True, px=ttl_ms)
                pipe.get(key)
                pipe.pexpire(key, ttl_ms)  # retention counts from the customer's last order
            replies = await pipe.execute()
        return [replies[3 * i + 1] == event_id.encode() for i, (_, event_id) in enumerate(orders)]

    async def claim_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        if not orders:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for order_id, event_id in orders:
                pipe.set(ORDER_PREFIX + order_id, event_id, nx=True, px=ttl_ms)
                pipe.get(ORDER_PREFIX + order_id)
            replies = await pipe.execute()
        return [replies[2 * i + 1] == event_id.encode() for i, (_, event_id) in enumerate(orders)]

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None:
        if items:
            await self.client.hset(LATEST_PREFIX + namespace, mapping=items)

    async def get_latest(self, namespace: str) -> dict[str, bytes]:
        raw = await self.client.hgetall(LATEST_PREFIX + namespace)
        return {key.decode(): value for key, value in raw.items()}

    async def close(self) -> None:
        await self.client.aclose()


def open_store(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else MemoryStore()
