"""The memory budget of the journeys stage (DESIGN.md "State is bounded", "Memory is a budget with a number").

The stage's own code runs here, in process and without a broker: `JourneyStage.absorb_batch` takes
journey-topic messages as the intake writes them (JSON arrays of normalised events), its tables are
plain dicts (what Faust's memory store holds: the row objects themselves), and `JourneyStage.sweep`
expires them by event time. tracemalloc counts every byte the stage allocates for its state: journey
rows, table keys, metric partials and Prometheus label children. What is checked is the bound that
docs/reliability.md states:

- a distinct tracking ID seen once costs at most BYTES_PER_ID (so 1,000,000 of them inside a lookback
  stay under ~1.1 GiB of journey state; bench/memory_bound.py measures a real worker fed 1,000,000);
- one tracking ID that never stops (a bot, a shared cookie) costs at most BYTES_PER_CAPPED_ID, whatever
  it sends: touchpoints and remembered ids are capped (MAX_TOUCHES, MAX_SEEN_IDS);
- once event time has passed the horizon (longest lookback + allowed lateness, or the dedup window if
  longer), the sweep frees it all: what stays is the table dict's empty slots, at most RESIDUE_PER_ID;
- the same after a restart: rows recovered from the changelog (JSON decoded again) expire too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.journeys import MAX_SEEN_IDS, MAX_TOUCHES, SEQ_PER_MESSAGE, Journey, Retention
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.claims import TableClaims
from streams.stages.journeys import JourneyStage
from tests.fakes import FakeTable

IDS = 5_000
PARTITIONS = 4
BYTES_PER_ID = 300  # a packed row, its key and table slot: ~200 B measured (CPython 3.11, 64-bit)
BYTES_PER_CAPPED_ID = 200_000  # 500 touchpoints + 5,000 ids, packed: ~116 KB
RESIDUE_PER_ID = 48  # a dict keeps its slots after deletions (~40 B per deleted key measured)
SETTINGS = Settings.from_env({
    "TOPIC_PARTITIONS": str(PARTITIONS), "CLICK_LOOKBACK": "2m", "VIEW_LOOKBACK": "1m", "DEDUP_WINDOW": "2m",
    "ALLOWED_LATENESS": "10s", "METRICS_WINDOW": "60s",
})
RETENTION = Retention.of(SETTINGS)
HORIZON_MS = max(RETENTION.click_ms, RETENTION.view_ms, RETENTION.order_id_ms)
T0 = (int(time.time() * 1000) - 3_600_000) // 60_000 * 60_000  # an hour ago: event time, not wall clock


async def flushed() -> None:
    """The producer's flush: here nothing is buffered."""


def stage(journeys: FakeTable | None = None) -> JourneyStage:
    w = SimpleNamespace(
        app=SimpleNamespace(producer=SimpleNamespace(flush=flushed)),
        settings=SETTINGS, journeys=journeys if journeys is not None else FakeTable(), partials=FakeTable(),
        metrics=WorkerMetrics(CollectorRegistry(), SETTINGS.campaign_label_cap),
        partition_of=lambda key: partition_of(key, PARTITIONS), assigned=lambda topic: set(range(PARTITIONS)),
        journey_events=SimpleNamespace(get_topic_name=lambda: "attribution-journey-events"),
        claims=TableClaims(FakeTable(), lambda: set(range(PARTITIONS))),
    )
    return JourneyStage(w)  # type: ignore[arg-type]


def messages(events: list[list[Any]]) -> Iterator[SimpleNamespace]:
    """Journey-topic messages as the intake writes them, routed by tracking ID, up to 1,024 events each."""
    by_partition: dict[int, list[list[Any]]] = {}
    for row in events:
        by_partition.setdefault(partition_of(row[3], PARTITIONS), []).append([row[3], row])
    offsets = dict.fromkeys(by_partition, 0)
    for partition, items in by_partition.items():
        for start in range(0, len(items), SEQ_PER_MESSAGE):
            value = orjson.dumps({"src": "intake", "wm": -1, "mx": 0, "e": items[start : start + SEQ_PER_MESSAGE]})
            yield SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offsets[partition], value=value))
            offsets[partition] += 1


def impressions(count: int, ts: int, tracking_id: str | None = None) -> list[list[Any]]:
    """One impression per fresh tracking ID, or `count` of them for one `tracking_id`."""
    return [["i", uuid.uuid4().hex, ts + n % 60_000, tracking_id or uuid.uuid4().hex, "google_ads", "brand", None,
             0.002] for n in range(count)]


def absorb(target: JourneyStage, events: list[list[Any]]) -> None:
    batch = list(messages(events))
    for start in range(0, len(batch), 2):  # the agent takes a few messages at a time
        target.absorb_batch(batch[start : start + 2])


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """tracemalloc slows allocation down several times: it runs only around what is measured."""
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def advance_and_sweep(target: JourneyStage) -> None:
    """A later event moves stream time past the horizon; the sweep (every 30 s in the worker) expires, a
    chunk at a time (more than one here)."""
    absorb(target, impressions(1, T0 + 60_000 + HORIZON_MS + 60_000))
    asyncio.run(target.sweep())


def test_a_distinct_tracking_id_costs_at_most_the_documented_bytes_and_nothing_after_expiry() -> None:
    events = impressions(IDS, T0)
    with tracing():
        before = traced()
        journeys = stage()
        absorb(journeys, events)
        assert len(journeys.w.journeys) == IDS
        full = traced() - before
        advance_and_sweep(journeys)
        after = traced() - before

    print(f"journeys stage: {full / IDS:.0f} B per tracking ID, {after / IDS:.1f} B per ID after expiry "
          f"({full / 2**20:.1f} -> {after / 2**20:.2f} MiB for {IDS:,} IDs)")
    assert full <= BYTES_PER_ID * IDS, f"{full / IDS:.0f} B per tracking ID, bound {BYTES_PER_ID}"
    assert len(journeys.w.journeys) == 1, "expired journeys are still in the table"
    closed = [key for key in journeys.w.partials if int(key.split("|")[1]) < T0 + 60_000]
    assert not closed, f"partials of closed windows are still there: {closed}"
    assert after <= RESIDUE_PER_ID * IDS, f"{after / IDS:.0f} B per ID stay after expiry, bound {RESIDUE_PER_ID}"


def test_journeys_recovered_from_the_changelog_expire_too() -> None:
    """Faust gives a key restored from a changelog no TTL back (DESIGN.md): expiry here is by event time in
    the rows themselves, so a restarted worker forgets them as the first would have."""
    first = stage()
    absorb(first, impressions(IDS, T0))
    changelog = list(first.w.journeys.items())
    del first
    with tracing():
        before = traced()
        recovered = FakeTable((key, bytes(bytearray(row))) for key, row in changelog)  # read back: new objects
        restarted = stage(recovered)
        restarted.requeue_pending(set(range(PARTITIONS)))  # the recovery callback
        full = traced() - before
        advance_and_sweep(restarted)
        after = traced() - before

    print(f"recovered journeys: {full / IDS:.0f} B per tracking ID, {after / IDS:.1f} B per ID after expiry")
    assert full <= BYTES_PER_ID * IDS
    assert len(recovered) == 1
    assert after <= RESIDUE_PER_ID * IDS


def test_a_tracking_id_that_never_stops_stays_under_the_cap() -> None:
    bot = "bot-" + uuid.uuid4().hex
    journeys = stage()
    absorb(journeys, impressions(2 * MAX_SEEN_IDS, T0, tracking_id=bot))
    row = journeys.w.journeys[bot]
    with tracing():
        before = traced()
        kept = bytes(bytearray(row))  # the row as held in memory (after a restart, too): one bytes object
        size = traced() - before
    journey = Journey.from_row(kept)

    print(f"one tracking ID with {2 * MAX_SEEN_IDS:,} impressions: {len(journey.touches)} touchpoints, "
          f"{len(journey.ids)} other ids, {size / 2**20:.2f} MiB")
    assert len(journey.touches) <= MAX_TOUCHES and len(journey.ids) <= MAX_SEEN_IDS
    assert size <= BYTES_PER_CAPPED_ID
    assert len(kept) < 1_000_000, "its changelog value must stay under Kafka's 1 MiB message limit"


def test_a_journey_with_a_pending_conversion_does_not_expire() -> None:
    journeys = stage()
    absorb(journeys, [["l", "lead-1", T0, "visitor-1", None]])
    advance_and_sweep(journeys)
    assert "visitor-1" in journeys.w.journeys, "a conversion still waiting for attribution was forgotten"
