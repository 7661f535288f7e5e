"""The in-process store: the latest KPI messages per namespace and key (claims: tests/unit/stages/test_claims.py)."""

from __future__ import annotations

from streams.serving.store import MemoryStore


async def test_latest_messages_are_kept_per_namespace_and_key() -> None:
    store = MemoryStore()
    await store.put_latest("kpis", {"google": b"1"})
    await store.put_latest("kpis", {"google": b"2", "email": b"3"})
    assert await store.get_latest("kpis") == {"google": b"2", "email": b"3"}
    assert await store.get_latest("ltv") == {}
