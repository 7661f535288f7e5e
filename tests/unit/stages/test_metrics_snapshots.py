"""Partial snapshots travel as JSON arrays (one message per metrics partition and size limit); the
metrics stage reads those and the one-snapshot messages written before them alike."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.windows import ChannelWindow
from streams.kafka.topics import json_arrays
from streams.serving.prometheus import WorkerMetrics
from streams.stages.metrics import MetricsStage, send_partial_snapshots
from tests.fakes import FakeTable, KeyedTopic, LatestStore

W = 60_000
T0 = 1_763_800_020_000 - 1_763_800_020_000 % W


def test_json_arrays_pack_items_in_order_within_the_size_limit() -> None:
    items = [orjson.dumps({"n": i, "pad": "x" * (i % 7)}) for i in range(50)]
    arrays = json_arrays(items, max_bytes=120)
    assert len(arrays) > 1
    assert all(len(array) <= 120 for array in arrays)
    assert [item for array in arrays for item in orjson.loads(array)] == [orjson.loads(item) for item in items]


def test_json_arrays_send_an_item_over_the_limit_alone_and_nothing_for_no_items() -> None:
    big = orjson.dumps("y" * 300)
    arrays = json_arrays([b"1", big, b"2"], max_bytes=100)
    assert [orjson.loads(array) for array in arrays] == [[1], ["y" * 300], [2]]
    assert json_arrays([], max_bytes=100) == []


def message(value: Any) -> Any:
    return SimpleNamespace(message=SimpleNamespace(value=orjson.dumps(value)))


def snapshot(partition: int, channel: str, impressions: float, window: int = T0) -> dict[str, Any]:
    return {"p": partition, "w": window, "c": channel, "wm": T0, "f": {"brand": [impressions] + [0.0] * 7}}


def wiring() -> Any:
    registry = CollectorRegistry()
    return SimpleNamespace(settings=Settings.from_env({}), channel_windows=FakeTable(), registry=registry,
                           metrics=WorkerMetrics(registry, 10))


def test_the_metrics_stage_reads_arrays_of_snapshots_and_single_snapshots_alike() -> None:
    w = wiring()
    stage = MetricsStage(w)  # type: ignore[arg-type]
    stage.absorb_batch([
        message([snapshot(0, "google_ads", 3.0), snapshot(1, "google_ads", 4.0), snapshot(0, "email", 1.0)]),
        message(snapshot(2, "google_ads", 5.0)),  # the form before arrays
        message([snapshot(0, "google_ads", 6.0)]),  # a later snapshot of partition 0 replaces its first
    ])
    google = ChannelWindow.from_row(w.channel_windows.data[f"google_ads|{T0}"]).sources
    assert {source: figures["brand"][0] for source, figures in google.items()} == {"0": 6.0, "1": 4.0, "2": 5.0}
    assert ChannelWindow.from_row(w.channel_windows.data[f"email|{T0}"]).sources == {"0": {"brand": [1.0] + [0.0] * 7}}
    assert stage.dirty == {f"google_ads|{T0}", f"email|{T0}"}


def test_a_zombies_snapshot_sent_after_a_newer_one_of_its_partition_changes_nothing_and_is_counted() -> None:
    w = wiring()
    stage = MetricsStage(w)  # type: ignore[arg-type]
    newer = {**snapshot(0, "google_ads", 9.0), "m": [2048, 1030]}  # the new owner's, further on
    stale = {**snapshot(0, "google_ads", 6.0), "m": [1024, 1030]}  # the paused worker's, delivered after it woke
    stage.absorb_batch([message([newer]), message([stale])])
    held = ChannelWindow.from_row(w.channel_windows.data[f"google_ads|{T0}"])
    assert held.sources["0"]["brand"][0] == 9.0 and held.marks == {"0": [2048, 1030]}
    assert w.registry.get_sample_value("attribution_stale_snapshots_total") == 1


class SentTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    async def send(self, value: bytes, partition: int) -> None:
        self.sent.append((partition, value))


async def test_partial_snapshots_carry_their_marks_and_a_source_of_their_own() -> None:
    table = FakeTable({f"3|{T0}|email": [41, 7, {"(none)": [1.0] + [0.0] * 10}],
                       f"3|{T0}|affiliate": [12, -1, {"partners": [0.0] * 11}]})
    w = SimpleNamespace(partials_topic=SentTopic(), partition_of=lambda channel: len(channel) % 2)
    await send_partial_snapshots(w, table, {f"3|{T0}|email", f"3|{T0}|gone"}, T0 + 5, "r")  # type: ignore[arg-type]
    [(partition, value)] = w.partials_topic.sent
    assert partition == 1 and orjson.loads(value) == [
        {"p": "r3", "w": T0, "c": "email", "wm": T0 + 5, "m": [41, 7], "f": {"(none)": [1.0] + [0.0] * 10}}]


def publishing_wiring(owned: set[int]) -> Any:
    w = wiring()
    partition_of = {"google_ads": 0, "email": 1}.__getitem__
    w.__dict__.update(partials_topic=SimpleNamespace(get_topic_name=lambda: "partials"), partition_of=partition_of,
                      assigned=lambda topic: owned if topic == "partials" else set(), metrics_channel=KeyedTopic(),
                      metrics_campaign=KeyedTopic(), store=LatestStore())
    return w


async def test_only_the_windows_of_metrics_partitions_owned_now_are_published() -> None:
    """A worker paused past its session wakes, reads snapshots it had fetched before the pause and marks their
    windows dirty; by the time its fence opens it owns other partitions. Those windows are not published (their
    figures are older than what the new owner published), open or closed, and their rows are left alone."""
    owned = {0, 1}
    w = publishing_wiring(owned)
    stage = MetricsStage(w)  # type: ignore[arg-type]
    old = T0 - 2 * W
    stage.absorb_batch([message([snapshot(0, "google_ads", 3.0), snapshot(0, "email", 1.0),
                                 snapshot(0, "email", 2.0, window=old)])])
    owned.discard(1)  # email's metrics partition went to another worker
    stage.watermark = T0 + W + w.settings.allowed_lateness_ms  # every window here has closed
    await stage.publish()
    assert [(key, message["final"]) for key, message in w.metrics_channel.sent] == [(b"google_ads", True)]
    assert f"google_ads|{T0}" not in w.channel_windows.data  # closed and published: forgotten
    assert {f"email|{T0}", f"email|{old}"} <= w.channel_windows.data.keys()  # another worker's to close
    owned.add(1)  # back again (its recovery marks its windows dirty): published then
    stage.dirty.add(f"email|{T0}")
    await stage.publish()
    assert {key for key, _ in w.metrics_channel.sent[1:]} == {b"email"}
