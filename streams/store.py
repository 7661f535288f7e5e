"""The small store the worker needs beyond Kafka: Redis when `REDIS_URL` is set, else in process.

Two uses, both global across partitions and workers:
- first orders of customers (new vs returning), written so a replay gives the same answer:
  `SET customer:<id> <first order event_id> NX`, then compare with the order's own id;
- the latest KPI messages for `GET /api/v1/kpis` and `/api/v1/ltv`.
Calls are batched: one pipeline per call, never one round trip per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

CUSTOMER_PREFIX = "attribution:customer:"
LATEST_PREFIX = "attribution:latest:"


class Store(Protocol):
    async def first_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """For each (customer_id, order event_id): is it that customer's first order?"""
        ...

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None: ...

    async def get_latest(self, namespace: str) -> dict[str, bytes]: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store: exact for one worker; several workers need Redis to share customers."""

    def __init__(self) -> None:
        self.customers: dict[str, str] = {}
        self.latest: dict[str, dict[str, bytes]] = {}

    async def first_orders(self, orders: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        return [self.customers.setdefault(customer, event_id) == event_id for customer, event_id in orders]

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
