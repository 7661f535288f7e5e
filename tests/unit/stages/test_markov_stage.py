"""The Markov stage without Kafka (CONTRACT.md section 8): its switch, `models.markov` and ATTRIBUTION_MODEL=markov
on an attribution, and the per-partition path counts kept from the table (incrementally, and rebuilt after a
restart, the same)."""

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
from streams.core.events import Order, Touch
from streams.core.journeys import Journey, Retention
from streams.core.markov import PathCounts, counts_of
from streams.core.paths import bucket_ms, bucket_of
from streams.core.watermarks import CAUGHT_UP
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.serving.store import MemoryStore
from streams.stages.app import build
from streams.stages.journeys import JourneyStage
from streams.stages.markov import ChainStage, PathStage
from tests.fakes import FakeFence, FakeTable

T0 = 1_763_800_000_000
DAY = 86_400_000
PARTITIONS = 4


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return dataclasses.replace(Settings.from_env({}), state_dir=str(tmp_path), **changes)


@pytest.mark.parametrize("on", [True, False])
def test_build_registers_the_markov_stage_only_when_on(on: bool, tmp_path: Path) -> None:
    w = build(settings(tmp_path, markov_stage=on), "127.0.0.1:9", MemoryStore())  # builds only: nothing connects
    assert ("markov-chain" in w.app.agents) is on
    assert ({"markov-paths", "markov-chain"} <= set(w.app.tables)) is on
    assert (w.state["journeys"].paths is not None) is on


@pytest.mark.parametrize(("on", "status"), [(True, 200), (False, 404)])
async def test_the_markov_read_api_says_when_the_stage_is_off(on: bool, status: int, tmp_path: Path) -> None:
    w = build(settings(tmp_path, markov_stage=on), "127.0.0.1:9", MemoryStore())
    async with TestClient(TestServer(w.app.web.web_app)) as client:
        response = await client.get("/api/v1/markov")
        body = orjson.loads(await response.read())
    assert response.status == status
    assert (body == []) if on else ("MARKOV_STAGE=off" in body["error"])


def touch(event_id: str, ts: int, channel: str, tid: str = "tid-1") -> Touch:
    return Touch("c", event_id, ts, tid, channel, "(none)", None, 0.0)


def wiring(tmp_path: Path, effects: dict[str, float], **changes: Any) -> SimpleNamespace:
    return SimpleNamespace(
        settings=settings(tmp_path, **changes), metrics=WorkerMetrics(CollectorRegistry(), 10), journeys=FakeTable(),
        partials=FakeTable(), markov_paths=FakeTable(), partition_of=lambda key: partition_of(key, PARTITIONS),
        markov_effects=SimpleNamespace(current=effects), assigned=lambda topic: set(range(PARTITIONS)),
        journey_events=SimpleNamespace(get_topic_name=lambda: "journeys"),
    )


def journey_of(*touches: Touch) -> Journey:
    journey = Journey()
    retention = Retention.of(Settings())
    for i, t in enumerate(touches):
        journey.admit(t, i + 1, retention)
    return journey


@pytest.mark.parametrize("model", ["markov", "last_click"])
def test_a_conversion_carries_models_markov_and_markov_can_drive_the_credits(model: str, tmp_path: Path) -> None:
    w = wiring(tmp_path, {"search": 0.6, "email": 0.2}, attribution_model=model)
    stage = JourneyStage(w)  # type: ignore[arg-type]
    journey = journey_of(touch("t1", T0, "email"), touch("t2", T0 + 1, "search"), touch("t3", T0 + 2, "search"))
    order = Order("o", "e-1", T0 + 60_000, "tid-1", "order-1", 100.0, None, None, None)  # past MIN_CLICK_GAP
    message, credited = stage.attribute(journey, order, None, {}, False)
    markov = {c["channel"]: c["weight"] for c in message["models"]["markov"]}
    assert markov == pytest.approx({"email": 0.25, "search": 0.75})  # RE 0.2 and 0.6 over the path's channels
    assert message["model"] == model
    expected = markov if model == "markov" else {"search": 1.0}
    assert {c["channel"]: c["weight"] for c in message["credits"]} == pytest.approx(expected)
    assert {channel: weight for channel, _, _, weight in credited} == pytest.approx(expected)


def test_without_removal_effects_models_markov_is_linear(tmp_path: Path) -> None:
    stage = JourneyStage(wiring(tmp_path, {}))  # type: ignore[arg-type]
    journey = journey_of(touch("t1", T0, "email"), touch("t2", T0 + 1, "search"))
    order = Order("o", "e-1", T0 + 10, "tid-1", "order-1", 100.0, None, None, None)
    message, _ = stage.attribute(journey, order, None, {}, False)
    assert message["models"]["markov"] == message["models"]["linear"]


def total(sums: dict[int, dict[int, PathCounts]]) -> PathCounts:
    out = PathCounts()
    for buckets in sums.values():
        for counts in buckets.values():
            out.add(counts)
    return out


def test_path_counts_follow_conversions_and_timeouts_and_a_rebuild_gives_the_same(tmp_path: Path) -> None:
    clock = {"now": T0}
    w = wiring(tmp_path, {})
    paths = PathStage(w, lambda: clock["now"], lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    paths.rebuild(set(range(PARTITIONS)))
    timeout = w.settings.path_timeout_ms
    visitors = {"a": [("email", 0), ("search", 60_000)], "b": [("video", 0)], "c": [("display", 5_000)]}
    for tid, touches in visitors.items():
        journey = journey_of(*(touch(f"{tid}{i}", T0 + dt, ch, tid) for i, (ch, dt) in enumerate(touches)))
        w.journeys[tid] = journey.to_row()
        paths.seen({tid: journey})
    # b converts before its path times out; a and c time out; then a converts, crediting its null path
    b = Journey.from_row(w.journeys["b"])
    paths.converted("b", T0 + 1000, b.touchpoints(), 30.0)
    clock["now"] = T0 + 60_000 + timeout
    paths.close_timed_out()
    assert total(paths.sums) == counts_of([(["video"], True, 30.0), (["email", "search"], False, 0.0),
                                           (["display"], False, 0.0)])
    a = Journey.from_row(w.journeys["a"])
    paths.converted("a", T0 + 2 * DAY, a.touchpoints(), 50.0)
    expected = counts_of([(["video"], True, 30.0), (["email", "search"], True, 50.0), (["display"], False, 0.0)])
    assert total(paths.sums) == expected
    paths.close_timed_out()  # nothing is a path twice
    assert total(paths.sums) == expected

    incremental = paths.sums
    restarted = PathStage(w, lambda: clock["now"], lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    restarted.rebuild(set(range(PARTITIONS)))
    assert total(restarted.sums) == expected
    for partition, buckets in incremental.items():
        for bucket, counts in buckets.items():
            assert restarted.sums[partition].get(bucket, PathCounts()) == counts


def test_a_path_ends_only_once_its_sources_have_read_past_its_timeout(tmp_path: Path) -> None:
    """Stream time is the newest ts read anywhere; a partition read again after a crash (or a topic read behind
    the others) may still hold a visitor's touchpoints: its sources' watermark holds the path open."""
    w = wiring(tmp_path, {})
    timeout = w.settings.path_timeout_ms
    marks: dict[int, int | None] = dict.fromkeys(range(PARTITIONS))  # taken over, no report read yet
    paths = PathStage(w, lambda: T0 + 10 * DAY, lambda partition: marks[partition])  # type: ignore[arg-type]
    paths.rebuild(set(range(PARTITIONS)))
    journey = journey_of(touch("x1", T0, "email"))
    w.journeys["tid-1"] = journey.to_row()
    paths.seen({"tid-1": journey})
    paths.close_timed_out()
    assert total(paths.sums).paths == 0 and "tid-1" in paths.due
    marks.update(dict.fromkeys(range(PARTITIONS), T0))  # every source has read only to T0
    paths.close_timed_out()
    assert total(paths.sums).paths == 0 and "tid-1" in paths.due
    # a touchpoint within the timeout is read meanwhile: it belongs to the same path
    journey = journey_of(touch("x1", T0, "email"), touch("x2", T0 + timeout - 1, "search"))
    w.journeys["tid-1"] = journey.to_row()
    paths.seen({"tid-1": journey})
    marks[partition_of("tid-1", PARTITIONS)] = T0 + 2 * timeout
    paths.close_timed_out()
    assert total(paths.sums) == counts_of([(["email", "search"], False, 0.0)])


def test_a_change_on_a_partition_not_rebuilt_yet_starts_from_the_table(tmp_path: Path) -> None:
    """A row changed on a partition whose sums were not rebuilt (recovery callbacks of another generation) must
    not send that one change as the partition's whole count."""
    w = wiring(tmp_path, {})
    first = PathStage(w, lambda: T0 + DAY, lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    first.rebuild(set(range(PARTITIONS)))
    same = [t for t in (f"tid-{i}" for i in range(100)) if partition_of(t, PARTITIONS) == partition_of("tid-new",
                                                                                                       PARTITIONS)]
    for tid in same[:3]:
        journey = journey_of(touch(f"x-{tid}", T0, "email", tid))
        first.converted(tid, T0 + 1000, journey.touchpoints(), 0.0)
    later = PathStage(w, lambda: T0 + DAY, lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    later.rebuild(set())  # nothing rebuilt
    journey = journey_of(touch("y", T0, "video", "tid-new"))
    later.converted("tid-new", T0 + 1000, journey.touchpoints(), 0.0)
    partition = partition_of("tid-new", PARTITIONS)
    expected = counts_of([(["email"], True, 0.0)] * 3 + [(["video"], True, 0.0)])
    assert total({partition: later.sums[partition]}) == expected


async def test_a_snapshot_names_every_bucket_of_its_partition(tmp_path: Path) -> None:
    sent: list[tuple[int, list[dict[str, Any]]]] = []

    async def send(value: bytes, partition: int) -> None:
        sent.append((partition, orjson.loads(value)))

    w = wiring(tmp_path, {})
    w.markov_partials_topic = SimpleNamespace(send=send)
    paths = PathStage(w, lambda: T0 + 3 * DAY, lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    paths.rebuild(set(range(PARTITIONS)))
    await paths.send_snapshots()  # after a rebuild: every partition, even with no bucket
    assert sorted(s["p"] for _, snapshots in sent for s in snapshots) == list(range(PARTITIONS))
    sent.clear()
    journey = journey_of(touch("x1", T0, "email"))
    w.journeys["tid-1"] = journey.to_row()
    paths.converted("tid-1", T0 + 1000, journey.touchpoints(), 0.0)
    paths.converted("tid-1", T0 + DAY + 1000, [*journey.touchpoints()[:0]], 0.0)  # no touchpoint: no path
    await paths.send_snapshots()
    [(partition, [snapshot])] = sent
    size = bucket_ms(w.settings.markov_window_ms)
    assert partition == 0 and snapshot["p"] == partition_of("tid-1", PARTITIONS)
    assert snapshot["all"] == [bucket_of(T0 + 1000, size)]
    assert PathCounts.from_json(snapshot["f"][0][1]) == counts_of([(["email"], True, 0.0)])


async def test_nothing_is_sent_while_the_zombie_fence_is_shut(tmp_path: Path) -> None:
    """A worker paused past its session wakes with counts older than its partitions' new owner's: neither its path
    snapshots nor its chain go out until its membership is confirmed (streams.stages.topology.may_write)."""
    sent: list[bytes] = []

    async def send(value: bytes, partition: int = 0, key: bytes = b"") -> None:
        sent.append(value)

    w = wiring(tmp_path, {})
    w.fence, w.journeys.recovered_in = FakeFence(is_open=False), 1  # recovered in the fence's generation
    w.markov_partials_topic = SimpleNamespace(send=send, get_topic_name=lambda: "markov-partials")
    w.markov_chain, w.metrics_markov = FakeTable(), SimpleNamespace(send=send)
    paths = PathStage(w, lambda: T0 + 3 * DAY, lambda partition: CAUGHT_UP)  # type: ignore[arg-type]
    paths.rebuild(set(range(PARTITIONS)))
    chain = ChainStage(w)  # type: ignore[arg-type]
    chain.absorb_batch([SimpleNamespace(message=SimpleNamespace(value=orjson.dumps([
        {"p": 0, "wm": T0, "all": [T0], "f": [[T0, counts_of([(["email"], True, 5.0)]).to_json()]]}])))])
    await paths.send_snapshots()
    await chain.publish()
    assert sent == []
    w.fence.open = True
    await paths.send_snapshots()
    await chain.publish()
    assert [orjson.loads(value) for value in sent[:1]][0][0]["p"] == 0  # the path snapshots (every partition)
    assert [orjson.loads(value)["channel"] for value in sent[1:]] == ["email"]  # the chain: its one channel
