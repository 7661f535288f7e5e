"""Switches of the worker build: LTV_STAGE=off (issue #10: no lifetime-value agents or tables, no customer
orders, a clear 404 on the read API) and WORKER_INTAKE=off (no intake: `attribution intake` reads the inputs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.events import Order
from streams.core.journeys import Journey
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.serving.store import MemoryStore
from streams.stages.app import build
from streams.stages.journeys import JourneyStage
from tests.fakes import FakeTable

T0 = 1_763_800_000_000
LTV_AGENTS = {"ltv-customers", "ltv-channels"}


def settings(ltv_stage: bool, tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings.from_env({}), ltv_stage=ltv_stage, state_dir=str(tmp_path))


@pytest.mark.parametrize("on", [True, False])
def test_build_registers_the_ltv_stage_only_when_on(on: bool, tmp_path: Path) -> None:
    w = build(settings(on, tmp_path), "127.0.0.1:9", MemoryStore())  # builds only: nothing connects
    assert (set(w.app.agents) >= LTV_AGENTS) is on
    assert (set(w.app.tables) >= LTV_AGENTS) is on
    assert {"journeys", "metrics", "signals"} <= set(w.app.agents)
    assert w.state["intake"] in w.app._extra_services  # its own consumer group, started with the app
    assert ("ltv-customers" in w.state) is on


def test_a_worker_with_worker_intake_off_has_no_intake_and_all_its_stages(tmp_path: Path) -> None:
    w = build(dataclasses.replace(settings(True, tmp_path), worker_intake=False), "127.0.0.1:9", MemoryStore())
    assert "intake" not in w.state and not any(type(s).__name__ == "IntakeReader" for s in w.app._extra_services)
    assert {"journeys", "metrics", "signals", "ltv-customers", "ltv-channels"} <= set(w.app.agents)


@pytest.mark.parametrize(("on", "status"), [(True, 200), (False, 404)])
async def test_the_ltv_read_api_says_when_the_stage_is_off(on: bool, status: int, tmp_path: Path) -> None:
    w = build(settings(on, tmp_path), "127.0.0.1:9", MemoryStore())
    async with TestClient(TestServer(w.app.web.web_app)) as client:
        response = await client.get("/api/v1/ltv")
        body = orjson.loads(await response.read())
    assert response.status == status
    assert response.content_type == "application/json"
    assert (body == []) if on else ("LTV_STAGE=off" in body["error"])


@pytest.mark.parametrize("on", [True, False])
async def test_the_journeys_stage_sends_customer_orders_only_when_on(on: bool, tmp_path: Path) -> None:
    sent: dict[str, list[Any]] = {"attributions": [], "customer_orders": []}

    def topic(name: str) -> SimpleNamespace:
        async def send(value: bytes, partition: int) -> None:
            sent[name].append((partition, [record["cid"] for record in orjson.loads(value)]))

        return SimpleNamespace(send_soon=lambda key, value: sent[name].append(key), send=send)

    w = SimpleNamespace(
        settings=settings(on, tmp_path), metrics=WorkerMetrics(CollectorRegistry(), 10), journeys={},
        partials=FakeTable(), partition_of=lambda key: partition_of(key, 4),
        attributions=topic("attributions"), customer_orders=topic("customer_orders"),
        affiliates=SimpleNamespace(by_id={}, by_promo_code={}),
    )
    stage = JourneyStage(w)  # type: ignore[arg-type]
    order = Order("o", "e-1", T0, "tid-1", "order-1", 50.0, None, None, "cust-1")
    journey = Journey()
    journey.add_pending(7, order)
    w.journeys["tid-1"] = journey.to_row()

    stage.apply([(0, "tid-1", 7, order)], set(), {"e-1": True})
    await stage.send_customer_orders()

    assert sent["attributions"] == [b"e-1"]  # attributed and counted either way
    assert sent["customer_orders"] == ([(partition_of("cust-1", 4), ["cust-1"])] if on else [])
    assert w.partials  # the metric partials still take the order
