"""The worker's HTTP endpoints on WEB_PORT: `/metrics` and the read API (CONTRACT.md section 6)."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.agents.metrics import KPI_NAMESPACE
from streams.app import Wiring


def latest_kpis(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    """Per channel the current and the last closed window, ordered by channel then window."""
    out: list[dict[str, Any]] = []
    for channel in sorted(stored):
        out.extend(orjson.loads(stored[channel]))
    return out


def register(w: Wiring) -> None:
    @w.app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(w.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @w.app.page("/api/v1/kpis")
    async def kpis(web: Any, request: Any) -> Any:
        stored = await w.store.get_latest(KPI_NAMESPACE)
        return web.bytes(orjson.dumps(latest_kpis(stored)), content_type="application/json")
