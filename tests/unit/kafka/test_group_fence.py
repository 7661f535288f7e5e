"""The zombie fence (streams.kafka.group_fence): a worker writes no changelog record while its group membership may
have lapsed, and after it learns of a new generation it drops the held records of partitions another worker owns or
has written since. No broker: a fake coordinator, fence and Kafka client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.config import Settings
from streams.core.events import Touch
from streams.core.journeys import Journey, Retention, seq_of
from streams.kafka.group_fence import ALIVE_AT, NO_GENERATION, GroupFence
from streams.kafka.tables import KEY_CODECS, VALUE_CODECS, KeyPartitionedTable
from streams.serving.store import open_store
from streams.stages.app import build
from streams.stages.topology import Wiring, may_write

SESSION_S = 6.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_with(generation: int, seen: int | None, alive_at: float | None) -> Any:
    coordinator = SimpleNamespace(generation=generation)
    if alive_at is not None:
        setattr(coordinator, ALIVE_AT, alive_at)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator)))
    return SimpleNamespace(_consumer=consumer, consumer_generation_id=seen)


def test_the_fence_is_open_while_a_heartbeat_of_the_generation_faust_applied_succeeded_recently() -> None:
    clock = Clock()
    fence = GroupFence(app_with(7, 7, clock.now - 1.0), SESSION_S, clock)
    assert fence.is_open()
    clock.now += 3.5  # 4.5 s since the last heartbeat: below 80% of the session timeout
    assert fence.is_open()
    clock.now += 0.5  # 5 s: the broker may drop the member soon; a paused worker waking up is far past it
    assert not fence.is_open()


@pytest.mark.parametrize(("generation", "seen", "alive_at"), [
    (NO_GENERATION, 7, 999.0),  # the broker said the member is gone (aiokafka reset the generation)
    (8, 7, 999.0),  # joined a new generation whose assignment Faust has not applied yet
    (7, 7, None),  # never heard from the group
])
def test_the_fence_is_closed_when_the_membership_is_not_known(generation: int, seen: int, alive_at: Any) -> None:
    assert not GroupFence(app_with(generation, seen, alive_at), SESSION_S, Clock()).is_open()


def test_in_a_new_generation_stages_wait_for_its_recovery_of_the_journeys() -> None:
    clock = Clock()
    app = app_with(8, 8, clock.now)
    w = SimpleNamespace(fence=GroupFence(app, SESSION_S, clock), journeys=SimpleNamespace(recovered_in=7))
    assert w.fence.is_open() and not may_write(w)  # a partition kept may hold rows older than another worker's
    w.journeys.recovered_in = 8
    assert may_write(w)


def test_without_a_started_consumer_there_is_nothing_to_fence() -> None:
    assert GroupFence(SimpleNamespace(_consumer=None), SESSION_S).is_open()
    assert may_write(SimpleNamespace()) and may_write(SimpleNamespace(fence=None))
    assert not may_write(SimpleNamespace(fence=GroupFence(app_with(NO_GENERATION, 7, 999.0), SESSION_S, Clock())))


class FakeFence:
    """What a table asks the fence: open or not, the applied generation, the assignment, a changelog's end."""

    def __init__(self) -> None:
        self.open, self.gen = True, 1
        self.assigned_tps: set[TP] = set()
        self.ends: dict[TP, int] = {}
        self.drops: list[tuple[str, int]] = []

    def is_open(self) -> bool:
        return self.open

    def generation(self) -> int:
        return self.gen

    def assigned(self, tp: TP) -> bool:
        return tp in self.assigned_tps

    async def end_offset(self, tp: TP) -> int:
        return self.ends[tp]

    def dropped(self, table: str, count: int) -> None:
        self.drops.append((table, count))


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, key: bytes, value: bytes | None, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()


class FakeClient:
    """The aiokafka producer as `send_batch` uses it: every batch acknowledged at once, offsets from 0 on."""

    def __init__(self) -> None:
        self.sent: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[Any]:
        records = self.sent.setdefault(partition, [])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=len(records)))
        records.extend(batch.records)
        return future


@pytest.fixture
def wiring() -> Iterator[Wiring]:
    yield build(Settings.from_env({"TOPIC_PARTITIONS": "4"}), "127.0.0.1:1", open_store(None))


def fenced(wiring: Wiring) -> tuple[Any, FakeFence, FakeClient]:
    table, fence, client = wiring.journeys, FakeFence(), FakeClient()
    table.fence = fence
    wiring.app._producer = SimpleNamespace(_ensure_producer=lambda: client)
    return table, fence, client


def keys_on(wiring: Wiring, partition: int, n: int) -> list[str]:
    return [key for key in (f"visitor-{i}" for i in range(200)) if wiring.partition_of(key) == partition][:n]


async def test_records_go_out_at_once_while_the_fence_is_open(wiring: Wiring) -> None:
    table, _, client = fenced(wiring)
    table.put_rows({key: b"row" for key in keys_on(wiring, 0, 2)})
    await table.send_changes()
    assert len(client.sent[0]) == 2 and not table.unsent
    await asyncio.sleep(0)  # the acknowledgement's callback
    assert table.acked_end == {0: 2}


async def test_held_records_wait_and_go_out_when_the_same_generation_is_confirmed(wiring: Wiring) -> None:
    table, fence, client = fenced(wiring)
    fence.open = False
    table.put_rows({key: b"row" for key in keys_on(wiring, 1, 3)})
    sending = asyncio.create_task(table.send_changes())
    await asyncio.sleep(0.2)
    assert not sending.done() and not client.sent, "records were written while the membership was unknown"
    fence.open = True  # a heartbeat of the same generation succeeded: the member was never dropped
    await asyncio.wait_for(sending, 2)
    assert len(client.sent[1]) == 3 and fence.drops == []


async def test_in_a_new_generation_held_records_go_only_where_the_partition_is_still_ours_and_unwritten(
    wiring: Wiring,
) -> None:
    table, fence, client = fenced(wiring)
    topic = table.changelog_topic.get_topic_name()
    table.put_rows({key: b"old" for key in keys_on(wiring, 0, 1) + keys_on(wiring, 1, 1) + keys_on(wiring, 2, 1)})
    await table.send_changes()  # this worker's last records: each partition's changelog ends at 1
    table.recovered_end = {3: 5}  # partition 3 recovered up to 5, nothing written by this worker since
    fence.open = False  # it stops past its session timeout; meanwhile it queues more
    table.put_rows({key: b"late" for p in range(4) for key in keys_on(wiring, p, 2)})
    sending = asyncio.create_task(table.send_changes())
    await asyncio.sleep(0.1)
    # it rejoins in generation 2 and keeps partitions 0, 2 and 3; partition 1 went to another worker, and another
    # worker wrote partition 2 while it was away (its changelog now ends past this worker's last record)
    fence.gen, fence.open = 2, True
    fence.assigned_tps = {TP(topic, 0), TP(topic, 2), TP(topic, 3)}
    fence.ends = {TP(topic, 0): 1, TP(topic, 2): 4, TP(topic, 3): 5}
    await asyncio.sleep(0.2)
    assert not sending.done() and len(client.sent[0]) == 1, "judged before the new generation's recovery"
    wiring.app.consumer_generation_id = 2
    await table.on_recovery_completed(set(), set())  # the others' records are read in
    table.put_rows({key: b"recovered" for key in keys_on(wiring, 2, 1)})  # made from what the recovery read
    await asyncio.wait_for(sending, 2)
    await table.send_changes()
    assert [value for _, value in client.sent[0]] == [b"old", b"late", b"late"]  # nobody wrote it: they go
    assert [value for _, value in client.sent[1]] == [b"old"]  # not this worker's now: dropped
    assert [value for _, value in client.sent[2]] == [b"old", b"recovered"]  # written by another: the late dropped
    assert [value for _, value in client.sent[3]] == [b"late", b"late"]  # unwritten since its recovery: they go
    assert sorted(fence.drops) == [("journeys", 2), ("journeys", 2)]


def test_every_key_partitioned_table_has_its_fence_counters_at_zero_from_the_start(wiring: Wiring) -> None:
    """A dashboard shows "none" for a worker that never met a zombie, not "no data"."""
    tables = [t.name for t in wiring.app.tables.values() if isinstance(t, KeyPartitionedTable)]
    assert "journeys" in tables and "partials" in tables
    for metric in ("attribution_fenced_changelog_records_total", "attribution_stale_changelog_records_total"):
        counted = {table: wiring.registry.get_sample_value(metric, {"table": table}) for table in tables}
        assert all(n is not None for n in counted.values()), f"{metric}: {counted}"


async def test_a_dropped_record_is_counted_by_table(wiring: Wiring) -> None:
    wiring.fence.on_dropped("journeys", 3)
    assert wiring.registry.get_sample_value("attribution_fenced_changelog_records_total", {"table": "journeys"}) == 3


def changelog_event(key: str, row: Any, partition: int = 0) -> Any:
    value = None if row is None else row
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=None if row is None else b"x",
                                                                         partition=partition))


def test_recovery_skips_a_partial_s_row_made_from_older_state_than_the_row_before_it(wiring: Wiring) -> None:
    """The records handed to the Kafka client before a worker was paused go out when it wakes, after the new owner's:
    recovery goes by the partials' sequence marks, not by the changelog's order."""
    table = wiring.partials
    old, new, other = [10, 5, {"a": [1.0]}], [20, 7, {"a": [3.0]}], [4, 0, {"b": [1.0]}]
    table.apply_changelog_batch([changelog_event("0|1|a", old), changelog_event("0|1|a", new),
                                 changelog_event("0|1|a", old), changelog_event("0|1|b", other)])
    assert table.data["0|1|a"] == new and table.data["0|1|b"] == other
    table.apply_changelog_batch([changelog_event("0|1|a", [20, 6, {"a": [2.0]}])])  # older than the row held
    assert table.data["0|1|a"] == new
    table.apply_changelog_batch([changelog_event("0|1|a", None), changelog_event("0|1|a", old)])  # after a tombstone
    assert table.data["0|1|a"] == old
    assert wiring.registry.get_sample_value("attribution_stale_changelog_records_total", {"table": "partials"}) == 2


def test_recovery_skips_a_channel_window_s_row_that_holds_a_source_at_older_marks(wiring: Wiring) -> None:
    table = wiring.channel_windows
    newer = [{"0": {"a": [2.0]}, "1": {"a": [1.0]}}, {"0": [9, 3], "1": [4, 1]}]
    older = [{"0": {"a": [1.0]}, "1": {"a": [1.0]}}, {"0": [5, 3], "1": [4, 1]}]
    fewer = [{"0": {"a": [2.0]}}, {"0": [9, 3]}]
    grown = [{"0": {"a": [2.0]}, "1": {"a": [1.0]}, "2": {"a": [5.0]}}, {"0": [9, 3], "1": [4, 1], "2": [1, 0]}]
    table.apply_changelog_batch([changelog_event("email|1", newer), changelog_event("email|1", older),
                                 changelog_event("email|1", fewer), changelog_event("email|1", grown)])
    assert table.data["email|1"] == grown
    assert wiring.registry.get_sample_value("attribution_stale_changelog_records_total",
                                            {"table": "channel-windows"}) == 2


def test_recovery_skips_a_journey_row_made_before_the_events_the_row_held_has_absorbed(wiring: Wiring) -> None:
    """A zombie's journey row, handed to the Kafka client before its pause, lands after the new owner's: recovery
    keeps the new owner's (its touchpoints), by the rows' marks (`journey_row_older`), in both recovery paths."""
    table, ts = wiring.journeys, 1796688000000
    journey = Journey()
    retention = Retention.of(wiring.settings)
    journey.admit(Touch("c", "c1", ts, "v1", "email", "(none)", None, 0.0), seq_of(10, 0), retention)
    zombie_s = journey.to_row()
    journey.admit(Touch("c", "c2", ts + 60_000, "v1", "google_ads", "generic", None, 0.0), seq_of(12, 0), retention)
    new_owner_s = journey.to_row()
    table.apply_changelog_batch([changelog_event("v1", new_owner_s), changelog_event("v1", zombie_s)])
    assert table.data["v1"] == new_owner_s
    table.data.data.clear()
    key = KEY_CODECS[table.key_serializer]("v1")
    table.apply_changelog_records(0, [(key, new_owner_s), (key, zombie_s)])
    assert table.data["v1"] == new_owner_s
    table.apply_changelog_records(0, [(key, None), (key, zombie_s)])  # after an erasure, any row stands
    assert table.data["v1"] == zombie_s
    assert wiring.registry.get_sample_value("attribution_stale_changelog_records_total", {"table": "journeys"}) == 2
    table.data.data.clear()


def test_the_bulk_recovery_read_skips_what_faust_s_recovery_skips(wiring: Wiring) -> None:
    """The memory store's bulk changelog read (`apply_changelog_records`) judges rows by the same marks."""
    table = wiring.partials
    table.data.data.clear()
    before = wiring.registry.get_sample_value("attribution_stale_changelog_records_total", {"table": "partials"}) or 0

    def record(key: str, row: Any) -> tuple[bytes, bytes | None]:
        return KEY_CODECS[table.key_serializer](key), None if row is None else VALUE_CODECS[table.value_serializer](row)

    old, new, other = [10, 5, {"a": [1.0]}], [20, 7, {"a": [3.0]}], [4, 0, {"b": [1.0]}]
    table.apply_changelog_records(0, [record("0|1|a", old), record("0|1|a", new), record("0|1|a", old),
                                      record("0|1|b", other), record("0|1|a", [20, 6, {"a": [2.0]}])])
    assert table.data["0|1|a"] == new and table.data["0|1|b"] == other
    table.apply_changelog_records(0, [record("0|1|a", None), record("0|1|a", old)])  # after a tombstone
    assert table.data["0|1|a"] == old
    after = wiring.registry.get_sample_value("attribution_stale_changelog_records_total", {"table": "partials"})
    assert after == before + 2
    table.data.data.clear()
