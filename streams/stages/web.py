"""The worker's HTTP endpoints on WEB_PORT: `/metrics` and the read API (CONTRACT.md section 6); the live page
and the endpoints only it needs are in `streams.stages.page`. With WEB_TOKEN set, the read API needs it.

The read API serves the latest messages the metrics and LTV stages saved in the store. The in-process
store starts empty, so a worker without Redis refills it at start from the tails of `metrics.channel`
and `metrics.ltv` (`LATEST_TAIL` records per partition): a restarted worker serves its figures again
within seconds, not an empty list until the next window changes.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.kafka.topics import METRICS_CHANNEL_TOPIC, METRICS_LTV_TOPIC, read_tails
from streams.stages import page
from streams.stages.ltv import LTV_NAMESPACE
from streams.stages.metrics import KPI_NAMESPACE
from streams.stages.topology import Wiring

LTV_OFF = {"error": "lifetime value is off on this worker (LTV_STAGE=off)"}
MARKOV_OFF = {"error": "the Markov model is off on this worker (MARKOV_STAGE=off)"}
LATEST_TAIL = 10_000  # metric messages read back per partition at start
log = logging.getLogger(__name__)


def latest_kpis(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    """Per channel the current and the last closed window, ordered by channel then window."""
    out: list[dict[str, Any]] = []
    for channel in sorted(stored):
        out.extend(orjson.loads(stored[channel]))
    return out


def latest_ltv(stored: dict[str, bytes]) -> list[dict[str, Any]]:
    """The latest `metrics.ltv` message per channel, ordered by channel."""
    return [orjson.loads(stored[channel]) for channel in sorted(stored)]


def latest_from_tails(kpi_values: list[bytes], ltv_values: list[bytes]) -> tuple[dict[str, dict[int, Any]],
                                                                                   dict[str, Any]]:
    """The metric messages read back: per channel its windows' newest `metrics.channel` message, and its
    newest `metrics.ltv` message (the values are in offset order within a channel's partition)."""
    windows: dict[str, dict[int, Any]] = {}
    for value in kpi_values:
        message = orjson.loads(value)
        windows.setdefault(message["channel"], {})[message["window_start"]] = message
    ltv = {message["channel"]: message for message in map(orjson.loads, ltv_values)}
    return windows, ltv


async def refill_latest(w: Wiring) -> None:
    """Seed the stages' latest messages from the metric topics, leaving alone what they published since."""
    kpi_values = await read_tails(w.bootstrap, METRICS_CHANNEL_TOPIC, LATEST_TAIL)
    ltv_values = await read_tails(w.bootstrap, METRICS_LTV_TOPIC, LATEST_TAIL) if w.settings.ltv_stage else []
    windows, ltv = latest_from_tails(kpi_values, ltv_values)
    metrics = w.state["metrics"]
    for channel, by_window in windows.items():
        known = metrics.latest.get(channel, {})
        for start in sorted(by_window)[-2:]:
            if start not in known:
                metrics.remember_latest(channel, start, by_window[start])
    await metrics.save_latest()
    channels = w.state.get("ltv-channels")
    if channels is not None:
        unpublished = {channel: message for channel, message in ltv.items() if channel not in channels.published}
        await w.store.put_latest(LTV_NAMESPACE, {channel: orjson.dumps(m) for channel, m in unpublished.items()})
    log.info("read API refilled from the metric topics: %d channels, %d with lifetime value", len(windows), len(ltv))


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


def rows_holding(w: Wiring, identifiers: list[str]) -> dict[str, int]:
    """Per table, the rows of this worker (every partition it holds) whose key or value holds one of the
    identifiers (an erasure check for operators, `GET /api/v1/erasure/check`; it reads every row)."""
    needles = [i.encode() for i in identifiers if i]
    found: dict[str, int] = {}
    for table in w.app.tables.values():
        n = 0
        for key, row in list(table.data.items()):
            text = str(key).encode() + b"\x00" + (row if isinstance(row, bytes) else orjson.dumps(row))
            n += any(needle in text for needle in needles)
        found[table.name] = n
    return found


def register(w: Wiring) -> None:
    if not w.settings.redis_url:

        @w.app.task
        async def refill() -> None:
            try:
                await refill_latest(w)
            except Exception as exc:  # noqa: BLE001 - the stages fill the read API as they publish
                log.warning("could not refill the read API from the metric topics (%s)", exc)

    @w.app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(w.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def kpis(web: Any, request: Any) -> Any:
        stored = await w.store.get_latest(KPI_NAMESPACE)
        return web.bytes(orjson.dumps(latest_kpis(stored)), content_type="application/json")

    async def state(web: Any, request: Any) -> Any:
        return web.bytes(orjson.dumps(state_summary(w)), content_type="application/json")

    async def ltv(web: Any, request: Any) -> Any:
        if not w.settings.ltv_stage:  # not stale figures from an earlier run: say why there are none
            return web.bytes(orjson.dumps(LTV_OFF), content_type="application/json", status=404)
        stored = await w.store.get_latest(LTV_NAMESPACE)
        return web.bytes(orjson.dumps(latest_ltv(stored)), content_type="application/json")

    async def markov(web: Any, request: Any) -> Any:
        """The latest `metrics.markov` message per channel, as every worker follows the topic."""
        if w.markov_effects is None:
            return web.bytes(orjson.dumps(MARKOV_OFF), content_type="application/json", status=404)
        return web.bytes(orjson.dumps(w.markov_effects.model.messages()), content_type="application/json")

    async def erasure_check(web: Any, request: Any) -> Any:
        """?tracking_id=..&customer_id=..: how many rows of each table of this worker still hold them."""
        identifiers = [request.query.get(name, "") for name in ("tracking_id", "customer_id")]
        return web.bytes(orjson.dumps(rows_holding(w, identifiers)), content_type="application/json")

    for path, handler in (("kpis", kpis), ("state", state), ("ltv", ltv), ("markov", markov),
                          ("erasure/check", erasure_check)):
        w.app.page(f"/api/v1/{path}", name=handler.__name__)(page.guard(w, handler))
    page.register(w, state_summary)
