"""The worker's HTTP endpoints on WEB_PORT: `/metrics` and the read API (CONTRACT.md section 6)."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.stages.ltv import LTV_NAMESPACE
from streams.stages.metrics import KPI_NAMESPACE
from streams.stages.topology import Wiring

LTV_OFF = {"error": "lifetime value is off on this worker (LTV_STAGE=off)"}


def latest_kpis(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    """Per channel the current and the last closed window, ordered by channel then window."""
    out: list[dict[str, Any]] = []
    for channel in sorted(stored):
        out.extend(orjson.loads(stored[channel]))
    return out


def latest_ltv(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    """The latest `metrics.ltv` message per channel, ordered by channel."""
    return [orjson.loads(stored[channel]) for channel in sorted(stored)]


def state_summary(w: Wiring) -> dict[str, Any]:
    """Read-only sizes of the worker's state (for operators and tests): keys per table, conversions
    waiting out the grace, and the journey partitions this worker owns."""
    stage = w.state.get("journeys")
    return {
        "journeys": len(w.journeys.data),
        "partials": len(w.partials.data),
        "channel_windows": len(w.channel_windows.data),
        "pending_conversions": len(stage.grace) if stage is not None else 0,
        "journey_partitions": sorted(w.assigned(w.journey_events.get_topic_name())),
    }


def register(w: Wiring) -> None:
    @w.app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(w.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @w.app.page("/api/v1/kpis")
    async def kpis(web: Any, request: Any) -> Any:
        stored = await w.store.get_latest(KPI_NAMESPACE)
        return web.bytes(orjson.dumps(latest_kpis(stored)), content_type="application/json")

    @w.app.page("/api/v1/state")
    async def state(web: Any, request: Any) -> Any:
        return web.bytes(orjson.dumps(state_summary(w)), content_type="application/json")

    @w.app.page("/api/v1/ltv")
    async def ltv(web: Any, request: Any) -> Any:
        if not w.settings.ltv_stage:  # not stale figures from an earlier run: say why there are none
            return web.bytes(orjson.dumps(LTV_OFF), content_type="application/json", status=404)
        stored = await w.store.get_latest(LTV_NAMESPACE)
        return web.bytes(orjson.dumps(latest_ltv(stored)), content_type="application/json")
