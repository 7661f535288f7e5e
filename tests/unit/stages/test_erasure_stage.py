"""Erasure in the stages without Kafka (CONTRACT.md section 10): each owner erases its rows and keeps the
figures, and one confirmation comes once every part (found ones included) has reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streams.config import Settings
from streams.core.events import Touch
from streams.core.journeys import Journey, Retention
from streams.kafka.partitioner import partition_of
from streams.stages.erasure import Erasers, ErasureStage, link_key_partition
from streams.stages.ltv import CustomerStage, customer_key
from streams.stages.markov import ERASED_KEY_PREFIX, PathStage
from tests.fakes import FakeTable
from tests.unit.core.test_ltv import customer_records, events, totals
from tests.unit.core.test_ltv import wiring as ltv_wiring
from tests.unit.stages.test_markov_stage import total
from tests.unit.stages.test_markov_stage import wiring as markov_wiring

T0 = 1_763_800_000_000
N = 4


async def test_an_erased_customer_leaves_no_row_and_the_lifetime_figures_stay_also_after_a_restart() -> None:
    table = FakeTable()
    stage = CustomerStage(ltv_wiring(table))
    stage.absorb_batch(events(customer_records(12) + customer_records(12, day=1)))
    before = totals(stage)

    assert await stage.erase("cust-3") == 1
    assert await stage.erase("cust-3") == 0  # erasing twice is harmless

    assert not [key for key in table if "cust-3" in key] and customer_key(0, "cust-4")[0] == "c"
    assert totals(stage) == before
    restarted = CustomerStage(ltv_wiring(table))
    restarted.rebuild(set(range(N)))
    assert totals(restarted) == before


async def test_an_erased_visitor_leaves_no_path_row_and_the_chain_keeps_its_paths(tmp_path: Path) -> None:
    w = markov_wiring(tmp_path, {})
    paths = PathStage(w, lambda: T0 + 10_000, lambda partition: 0)  # type: ignore[arg-type]
    paths.rebuild(set(range(N)))
    retention = Retention.of(Settings())
    for tid, channel in (("tid-a", "email"), ("tid-b", "search")):
        journey = Journey()
        journey.admit(Touch("c", f"{tid}-1", T0, tid, channel, "(none)", None, 0.0), 1, retention)
        w.journeys[tid] = journey.to_row()
        paths.converted(tid, T0 + 1_000, Journey.from_row(w.journeys[tid]).touchpoints(), 10.0)
    before = {p: dict(b) for p, b in paths.sums.items()}

    assert await paths.erase("tid-a") == 1
    assert await paths.erase("tid-a") == 0

    assert "tid-a" not in w.markov_paths
    anonymous = [key for key in w.markov_paths if key.startswith(ERASED_KEY_PREFIX)]
    assert len(anonymous) == 1 and w.partition_of(anonymous[0]) == w.partition_of("tid-a")
    assert {p: dict(b) for p, b in paths.sums.items()} == before
    restarted = PathStage(w, lambda: T0 + 10_000, lambda partition: 0)  # type: ignore[arg-type]
    restarted.rebuild(set(range(N)))
    assert total(restarted.sums) == total(paths.sums)


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[int | None, bytes | None, bytes]] = []

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, key: bytes | None = None, value: bytes = b"", partition: int | None = None) -> None:
        self.sent.append((partition, key, value))


class LinkTable(FakeTable):
    def partition_for(self, key: str) -> int:
        return link_key_partition(lambda k: partition_of(k, N))(key)


def erasure_wiring(tmp_path: Path) -> Any:
    async def flush() -> None:
        return None

    return SimpleNamespace(
        settings=dataclasses.replace(Settings(), topic_partitions=N, state_dir=str(tmp_path)),
        erasure_links=LinkTable(), erasure_ledger=FakeTable(), erasers=Erasers(), state={},
        erasure_topic=Topic("attribution-erasures"), erasure_log=Topic("erasure-log"),
        attributions=Topic("attributions"), dlq=Topic("events.dlq"),
        partition_of=lambda key: partition_of(key, N), assigned=lambda topic: set(range(N)),
        app=SimpleNamespace(producer=SimpleNamespace(flush=flush), tables={}),
    )


async def deliver(stage: ErasureStage, w: Any) -> None:
    """Hand every message sent to the internal topic to the stage, as the owners would read them."""
    while w.erasure_topic.sent:
        _, _, value = w.erasure_topic.sent.pop(0)
        await stage.handle(value)
        await stage.confirm()


async def test_a_customer_erasure_reaches_its_tracking_ids_and_is_confirmed_once(tmp_path: Path) -> None:
    w = erasure_wiring(tmp_path)
    stage = ErasureStage(w)
    journeys = {"tid-1": "row", "tid-2": "row", "tid-9": "row"}

    async def erase_journey(tid: str) -> int:
        return 1 if journeys.pop(tid, None) else 0

    ledger = {"A-1": "cust-1", "A-2": "cust-1", "A-9": "cust-9"}  # order ID -> the customer its ledger row names

    async def erase_ledger_customer(order_id: str) -> int:
        return 1 if ledger.pop(order_id, None) else 0

    w.erasers.register("t", "journeys", erase_journey)
    w.erasers.register("o", "order-ledger", erase_ledger_customer)
    stage.note_conversion("tid-1", "lead-1", "cust-1", T0)
    stage.note_conversion("tid-1", "order-1", "cust-1", T0 + 1, "A-1")
    stage.note_conversion("tid-2", "order-2", "cust-1", T0 + 2, "A-2")
    stage.note_conversion("tid-9", "order-9", "cust-9", T0 + 3)
    await stage.send_links()
    await deliver(stage, w)
    assert w.erasure_links.row("c|cust-1")[1:] == [["tid-1", "tid-2"], ["A-1", "A-2"]]

    await stage.request(0, 41, orjson.dumps({"customer_id": "cust-1"}))
    await deliver(stage, w)

    logged = [orjson.loads(value) for _, _, value in w.erasure_log.sent]
    assert len(logged) == 1 and logged[0]["request"] == {"customer_id": "cust-1"}
    # journeys 2, attribution messages 3, links: the customer's and the two visitors', ledger rows 2
    assert logged[0]["rows"] == 2 + 3 + 3 + 2
    assert set(journeys) == {"tid-9"} and set(ledger) == {"A-9"}
    superseded = {key.decode(): orjson.loads(value) for _, key, value in w.attributions.sent}
    assert superseded == {c: {"conversion_id": c, "erased": True} for c in ("lead-1", "order-1", "order-2")}
    assert not [key for key in w.erasure_links if "cust-1" in key or "tid-1" in key or "tid-2" in key]
    assert "cust-1" not in str(w.erasure_ledger)  # a closed marker names nobody

    await stage.request(0, 41, orjson.dumps({"customer_id": "cust-1"}))  # read again after a crash
    await deliver(stage, w)
    assert len(w.erasure_log.sent) == 1


@pytest.mark.parametrize("raw", [b"not json", b'{"tracking_id": 7}', b"{}"])
async def test_a_bad_request_goes_to_the_dead_letter_topic(raw: bytes, tmp_path: Path) -> None:
    w = erasure_wiring(tmp_path)
    stage = ErasureStage(w)
    await stage.request(2, 5, raw)
    (dead,) = [orjson.loads(value) for _, _, value in w.dlq.sent]
    assert dead["topic"] == "erasure-requests" and (dead["partition"], dead["offset"]) == (2, 5)
    assert dead["value"] == raw.decode() and dead["error"]
    assert not w.erasure_topic.sent


async def test_a_complete_request_whose_confirmation_a_crash_lost_is_confirmed_by_the_check(tmp_path: Path) -> None:
    w = erasure_wiring(tmp_path)
    stage = ErasureStage(w)
    await stage.request(1, 7, orjson.dumps({"tracking_id": "tid-1"}))
    await deliver(stage, w)
    assert len(w.erasure_log.sent) == 1
    complete_row = {"req": {"tracking_id": "tid-1"}, "at": 0, "want": ["t:x"], "done": {"t:x": 2}}
    w.erasure_ledger.put_rows({"1-7": complete_row})  # as recovered: complete, never closed

    await stage.check()

    assert len(w.erasure_log.sent) == 2 and orjson.loads(w.erasure_log.sent[-1][2])["rows"] == 2
    assert "closed" in w.erasure_ledger["1-7"]


async def test_the_check_forgets_old_closed_markers_and_the_sweep_expired_links(tmp_path: Path) -> None:
    w = erasure_wiring(tmp_path)
    stage = ErasureStage(w)
    w.erasure_ledger.put_rows({"0-1": {"closed": 0}, "0-2": {"closed": 2**50}})
    await stage.check()
    assert set(w.erasure_ledger) == {"0-2"}

    stage.note_conversion("tid-old", "lead-old", None, T0)
    stage.note_conversion("tid-new", "lead-new", None, T0 + w.settings.customer_retention_ms)
    w.state["journeys"] = SimpleNamespace(stream_time=T0 + w.settings.customer_retention_ms + 1)
    await stage.sweep_links()
    assert set(w.erasure_links) == {"t|tid-new"}
