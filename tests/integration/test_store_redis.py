"""RedisStore judges claims exactly as streams.core.claims does (event time), on a real Redis."""

from __future__ import annotations

import random
import uuid

import pytest

from streams.core.claims import claim
from streams.serving.store import CUSTOMER_PREFIX, ORDER_PREFIX, RedisStore

pytestmark = pytest.mark.integration
DAY = 86_400_000


async def test_first_orders_and_order_claims_are_idempotent_on_redis(redis_url: str) -> None:
    store = RedisStore(redis_url)
    customer, order_id = f"c-{uuid.uuid4()}", f"o-{uuid.uuid4()}"
    try:
        assert await store.first_orders([(customer, "e1", 0)], ttl_ms=DAY) == [True]
        assert await store.first_orders([(customer, "e2", 10), (customer, "e1", 0)], ttl_ms=DAY) == [False, True]
        assert await store.claim_orders([(order_id, "e1", 0)], ttl_ms=DAY) == [True]
        assert await store.claim_orders([(order_id, "e2", 10), (order_id, "e1", 0)], ttl_ms=DAY) == [False, True]
        await store.put_latest("kpis-test", {"google": b"1"})
        assert await store.get_latest("kpis-test") == {"google": b"1"}
    finally:
        await store.close()


@pytest.mark.parametrize("refresh", [True, False])
async def test_redis_gives_the_answers_of_the_pure_claim_rule_on_random_claims(redis_url: str, refresh: bool) -> None:
    rng = random.Random(7)
    store = RedisStore(redis_url)
    rows: dict[str, object] = {}
    keys = [f"k-{uuid.uuid4()}" for _ in range(5)]
    try:
        for _ in range(20):
            batch = [(rng.choice(keys), rng.choice("abcd") + "|x", rng.randrange(0, 50) * DAY) for _ in range(10)]
            expected = []
            for key, event_id, ts in batch:
                holds, rows[key] = claim(rows.get(key), event_id, ts, 10 * DAY, refresh)
                expected.append(holds)
            judge = store.first_orders if refresh else store.claim_orders
            assert await judge(batch, ttl_ms=10 * DAY) == expected
    finally:
        await store.close()


async def test_a_value_of_the_older_form_keeps_its_holder(redis_url: str) -> None:
    store = RedisStore(redis_url)
    customer, order_id = f"c-{uuid.uuid4()}", f"o-{uuid.uuid4()}"
    try:
        await store.client.set(CUSTOMER_PREFIX + customer, "e1")  # written by a worker before event-time claims
        await store.client.set(ORDER_PREFIX + order_id, "e1")
        assert await store.first_orders([(customer, "e2", 10**13), (customer, "e1", 0)], ttl_ms=DAY) == [False, True]
        assert await store.claim_orders([(order_id, "e2", 10**13)], ttl_ms=DAY) == [False]
    finally:
        await store.close()
