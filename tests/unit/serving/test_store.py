"""The in-process store: the same answers as Redis gives (SET NX then compare), replays included."""

from __future__ import annotations

from streams.serving.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_first_order_of_a_customer_is_new_and_a_replay_of_it_too() -> None:
    store = MemoryStore()
    assert await store.first_orders([("c1", "o1"), ("c2", "o2")], ttl_ms=1000) == [True, True]
    assert await store.first_orders([("c1", "o3")], ttl_ms=1000) == [False]
    assert await store.first_orders([("c1", "o1")], ttl_ms=1000) == [True]


async def test_a_customer_is_forgotten_a_retention_after_their_last_order() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    await store.first_orders([("c1", "o1")], ttl_ms=10_000)
    clock.now = 8.0
    assert await store.first_orders([("c1", "o2")], ttl_ms=10_000) == [False]  # an order refreshes retention
    clock.now = 17.0
    assert await store.first_orders([("c1", "o3")], ttl_ms=10_000) == [False]
    clock.now = 28.0
    assert await store.first_orders([("c1", "o4")], ttl_ms=10_000) == [True]


async def test_an_order_id_is_held_by_its_first_event_and_a_replay_of_that_event() -> None:
    store = MemoryStore()
    assert await store.claim_orders([("A-1", "e1")], ttl_ms=1000) == [True]
    assert await store.claim_orders([("A-1", "e2")], ttl_ms=1000) == [False]
    assert await store.claim_orders([("A-1", "e1")], ttl_ms=1000) == [True]


async def test_an_order_id_is_free_again_after_the_dedup_window() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    await store.claim_orders([("A-1", "e1")], ttl_ms=5_000)
    clock.now = 4.0
    assert await store.claim_orders([("A-1", "e2")], ttl_ms=5_000) == [False]  # a repeat does not extend it
    clock.now = 5.5
    assert await store.claim_orders([("A-1", "e2")], ttl_ms=5_000) == [True]


async def test_latest_messages_are_kept_per_namespace_and_key() -> None:
    store = MemoryStore()
    await store.put_latest("kpis", {"google": b"1"})
    await store.put_latest("kpis", {"google": b"2", "email": b"3"})
    assert await store.get_latest("kpis") == {"google": b"2", "email": b"3"}
    assert await store.get_latest("ltv") == {}
