"""RedisStore gives the same answers as the in-process store, on a real Redis."""

from __future__ import annotations

import uuid

import pytest

from streams.serving.store import RedisStore

pytestmark = pytest.mark.integration


async def test_first_orders_and_order_claims_are_idempotent_on_redis(redis_url: str) -> None:
    store = RedisStore(redis_url)
    customer, order_id = f"c-{uuid.uuid4()}", f"o-{uuid.uuid4()}"
    try:
        assert await store.first_orders([(customer, "e1")], ttl_ms=60_000) == [True]
        assert await store.first_orders([(customer, "e2"), (customer, "e1")], ttl_ms=60_000) == [False, True]
        assert await store.claim_orders([(order_id, "e1")], ttl_ms=60_000) == [True]
        assert await store.claim_orders([(order_id, "e2"), (order_id, "e1")], ttl_ms=60_000) == [False, True]
        await store.put_latest("kpis-test", {"google": b"1"})
        assert await store.get_latest("kpis-test") == {"google": b"1"}
    finally:
        await store.close()
