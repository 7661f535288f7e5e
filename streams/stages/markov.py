"""The data-driven model live (CONTRACT.md section 8): paths per visitor, counts per partition, the chain.

    journeys stage ── PathStage: a row of ended paths per tracking ID (table markov-paths, beside the journey)
        │ per source partition: ABSOLUTE transition counts per bucket of path end (a function of the table)
        ▼
    attribution-markov-partials (every snapshot on partition CHAIN_PARTITION: the chain needs them all)
        │ ChainStage: the latest counts per (source partition, bucket), table markov-chain; at most every
        │ MARKOV_INTERVAL, when they changed: P and every P_c solved exactly (streams.core.markov)
        ▼
    metrics.markov (by channel) ── MarkovEffects on every worker ──► models.markov, GET /api/v1/markov

Stage one keeps its per-partition sums in memory, like the lifetime-value stage: they are the sum of the
rows' contributions (streams.core.paths), rebuilt from the recovered table after a restart or rebalance,
so they can never disagree with it. Rows change in three places: a conversion (written to Kafka before the
journey forgets it, with the metric partials), a path timing out as null (a timer over an index of open
paths), and the sweep. Each snapshot names every bucket its partition holds, so stage two forgets a bucket
that emptied even when a crash lost the message that said so.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from streams.core.attribution import Credit, Touchpoint
from streams.core.journeys import SPEND_KEY_PREFIX, Journey, Retention, path_touches, row_facts
from streams.core.markov import PathCounts, markov_credits, markov_messages
from streams.core.paths import (
    NO_TS,
    DueIndex,
    PathRow,
    add_contribution,
    bucket_ms,
    bucket_of,
    contribution,
    converted,
    first_bucket,
    forget_before,
    timed_out,
)
from streams.kafka.skipped_records import SkippedRecordGuard
from streams.kafka.topics import json_arrays
from streams.stages.topology import APP_ID, Wiring, may_write

log = logging.getLogger(__name__)
CHAIN_PARTITION = 0
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05
SNAPSHOT_INTERVAL_S = 0.5
NULL_CHECK_INTERVAL_S = 1.0
PUBLISH_CHECK_INTERVAL_S = 1.0
SWEEP_INTERVAL_S = 300.0  # rows are decoded to judge them: not every 30 s like the journeys
SNAPSHOT_MESSAGE_BYTES = 256 * 1024
MARKOV_NAMESPACE = "markov"
ERASED_KEY_PREFIX = "\x00erased/"  # the paths of an erased visitor, still counted, under no identifier


def credits(w: Wiring, journey: list[Touchpoint], conversion_ts: int) -> list[Credit]:
    """`models.markov` of a conversion: by the removal effects known now (linear while none are)."""
    follower = getattr(w, "markov_effects", None)  # None: MARKOV_STAGE=off (or a test's partial wiring)
    effects = follower.current if follower is not None else {}
    return markov_credits(journey, effects, conversion_ts, w.settings.time_decay_half_life_ms)


class PathStage:
    """Stage one: the paths of the visitors whose journeys this worker owns, and their per-partition counts."""

    def __init__(self, w: Wiring, clock: Callable[[], int], watermark: Callable[[int], int | None]) -> None:
        self.w = w
        self.table = w.markov_paths
        s = w.settings
        self.clock = clock  # event time: the journeys stage's stream time
        self.watermark = watermark  # journey partition -> how far its sources have read (None: no source said yet)
        self.timeout_ms = s.path_timeout_ms
        self.window_ms = s.markov_window_ms
        self.size_ms = bucket_ms(s.markov_window_ms)
        retention = Retention.of(s)
        # a row outlives the journey's touchpoints it closed, so that they are never a path twice
        self.keep_ms = max(self.window_ms + 2 * self.size_ms, retention.click_ms, retention.view_ms) + self.timeout_ms
        self.sums: dict[int, dict[int, PathCounts]] = {}  # partition -> bucket -> counts
        self.dirty: set[tuple[int, int]] = set()
        self.due = DueIndex()  # the journeys with a path maybe open, by their newest ts

    def journey_topic(self) -> str:
        return self.w.journey_events.get_topic_name()

    # -- the journeys stage's hooks ----------------------------------------------------------------------
    def seen(self, journeys: Mapping[str, Journey]) -> None:
        """Journeys a batch wrote: each may have an open path to time out later. One filed already comes out at its
        earlier ts, and is filed again by its newest then."""
        due = self.due
        for key, journey in journeys.items():
            if key not in due and not key.startswith(SPEND_KEY_PREFIX):
                due.file(key, journey.last_ts)

    def converted(self, key: str, conversion_ts: int, journey: list[Touchpoint], revenue: float) -> None:
        before = PathRow.from_row(self.table.row(key))
        self.put(self.w.partition_of(key), key, before, converted(before, journey, conversion_ts, revenue))

    # -- null paths ------------------------------------------------------------------------------------
    def event_time(self, partition: int, stream_time: int) -> int:
        """Event time as far as the partition's touchpoints have all been read: the stream time, held back to the
        intakes' watermark (a partition read again after a crash, a topic read behind the others). A path judged
        by the stream time alone could end before a touchpoint of it was read. No watermark yet (a partition just
        taken over, not read from yet): no path of it ends."""
        mark = self.watermark(partition)
        return NO_TS if mark is None else min(stream_time, mark)

    def close_timed_out(self) -> None:
        """End as null every open path whose last touchpoint event time has passed by PATH_TIMEOUT."""
        stream_time = self.clock()
        assigned = self.w.assigned(self.journey_topic())
        event_times = {partition: self.event_time(partition, stream_time) for partition in assigned}
        # no path of a journey older than this can end yet, on any partition: the index is not read past it (a
        # stream time well ahead of the sources' watermark would otherwise pop and push back the same keys at
        # every check)
        cutoff = max(event_times.values(), default=NO_TS) - self.timeout_ms
        waiting: list[tuple[str, int]] = []
        for key in self.due.take_due(cutoff):
            partition = self.w.partition_of(key)
            row = self.w.journeys.row(key) if partition in assigned else None
            if not row:
                continue
            ts, _, pending = row_facts(row)
            if ts + self.timeout_ms > event_times[partition] or pending:
                # a newer touchpoint, sources that have not read that far yet, or a conversion waiting out the
                # grace (it may credit the path): judged again later
                waiting.append((key, ts))
                continue
            before = PathRow.from_row(self.table.row(key))
            after = timed_out(before, path_touches(row), event_times[partition], self.timeout_ms)
            if after is not None:
                self.put(partition, key, before, after)
        for key, ts in waiting:
            self.due.file(key, ts)

    # -- the rows and their sums ---------------------------------------------------------------------------
    def put(self, partition: int, key: str, before: PathRow, after: PathRow) -> None:
        """Write the row, and move the sums by the paths it gained and lost (only those: most rows hold one)."""
        size, floor = self.size_ms, first_bucket(self.clock(), self.window_ms)
        if any(bucket_of(p.end_ts, size) < floor for p in after.paths):
            after = forget_before(after, floor, size)
        if after == before:
            return
        kept = len(before.paths)
        if after.paths[:kept] == before.paths:  # nearly always: paths were only added
            moves = [(path, 1) for path in after.paths[kept:]]
        else:
            change = Counter(after.paths)
            change.subtract(before.paths)
            moves = list(change.items())  # > 0: paths the row gained; < 0: paths it lost
        sums = self.sums.get(partition)
        if sums is None:  # not rebuilt since this worker took the partition: a delta alone would be sent as the sums
            sums = self.sums[partition] = self.partition_sums(partition)
            self.dirty.update((partition, bucket) for bucket in [*sums, -1])
        for path, gained in moves:
            bucket = bucket_of(path.end_ts, size)
            if gained == 0 or bucket < floor:  # a bucket that left the window is no longer summed
                continue
            counts = sums.get(bucket)
            if counts is None:
                counts = sums[bucket] = PathCounts()
            counts.add_path(path.channels, path.converted, path.revenue, gained, path.last_click or None)
            self.dirty.add((partition, bucket))
        self.table.put_rows({key: after.to_row()})

    def rebuild(self, partitions: set[int]) -> None:
        """After recovery: the sums of these partitions from the table; forget the others."""
        self.sums = self.sums_of(partitions)
        sums = self.sums
        self.dirty = {(p, bucket) for p, buckets in sums.items() for bucket in buckets} | {(p, -1) for p in sums}
        if partitions:
            log.info("markov: paths of %d buckets rebuilt on partitions %s", len(self.dirty), sorted(partitions))

    def sums_of(self, partitions: set[int]) -> dict[int, dict[int, PathCounts]]:
        sums: dict[int, dict[int, PathCounts]] = {p: {} for p in partitions}
        for key, raw in self.table.data.items():
            partition = self.w.partition_of(key)
            if partition in sums:
                add_contribution(sums[partition], contribution(PathRow.from_row(raw), self.size_ms))
        return sums

    def partition_sums(self, partition: int) -> dict[int, PathCounts]:
        return self.sums_of({partition})[partition]

    def reindex(self, partitions: set[int]) -> None:
        """After recovery: every journey of these partitions may hold an open path."""
        for key, row in self.w.journeys.data.items():
            if row and not key.startswith(SPEND_KEY_PREFIX) and key not in self.due \
                    and self.w.partition_of(key) in partitions:
                self.due.file(key, row_facts(row)[0])

    async def send_snapshots(self) -> None:
        """Per source partition with changes: every bucket it holds, and the counts of those that changed. Nothing
        while the zombie fence is shut (`may_write`): a woken worker's counts may be older than the new owner's."""
        if not may_write(self.w):
            return
        dirty, self.dirty = self.dirty, set()
        owned = self.w.assigned(self.journey_topic())
        changed: dict[int, set[int]] = {}
        for partition, bucket in dirty:
            changed.setdefault(partition, set()).add(bucket)
        values = []
        for partition, buckets in sorted(changed.items()):
            sums = self.sums.get(partition)
            if partition not in owned or sums is None:
                continue
            snapshot = {"p": partition, "wm": self.clock(), "all": sorted(sums),
                        "f": [[b, sums[b].to_json()] for b in sorted(buckets) if b in sums]}
            values.append(orjson.dumps(snapshot))
        for value in json_arrays(values, SNAPSHOT_MESSAGE_BYTES):
            await self.w.markov_partials_topic.send(value=value, partition=CHAIN_PARTITION)

    async def erase(self, tracking_id: str) -> int:
        """Erasure (CONTRACT.md section 10): the visitor's row goes (a tombstone); its ended paths stay counted in
        the chain under a key that names nobody, on the same partition (so the partition's sums do not move),
        until the sweep forgets them as it would have forgotten the visitor's."""
        raw = self.table.row(tracking_id)
        self.due.discard(tracking_id)
        if not raw:
            return 0
        rows: dict[str, Any] = {tracking_id: None}
        if PathRow.from_row(raw).paths:
            rows[anonymous_key(self.w.partition_of(tracking_id), self.w.partition_of)] = raw
        self.table.put_rows(rows)
        await self.table.send_changes()
        return 1

    async def sweep(self) -> None:
        """Forget buckets that left MARKOV_WINDOW, and the rows of visitors idle for longer than rows are kept."""
        stream_time = self.clock()
        floor = first_bucket(stream_time, self.window_ms)
        for partition, sums in self.sums.items():
            for bucket in [b for b in sums if b < floor]:
                del sums[bucket]
                self.dirty.add((partition, bucket))
        assigned = self.w.assigned(self.journey_topic())
        gone = [key for key, raw in list(self.table.data.items())
                if self.w.partition_of(key) in assigned
                and PathRow.from_row(raw).newest_ts() < stream_time - self.keep_ms]
        self.table.put_rows(dict.fromkeys(gone))
        await self.table.send_changes()


def anonymous_key(partition: int, partition_of: Callable[[str], int]) -> str:
    """A random key that names nobody and lives on `partition` (tries until murmur2 agrees: ~partitions tries)."""
    while True:
        key = ERASED_KEY_PREFIX + secrets.token_hex(8)
        if partition_of(key) == partition:
            return key


class ChainStage:
    """Stage two: the whole chain, on the worker that owns CHAIN_PARTITION."""

    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.table = w.markov_chain
        s = w.settings
        self.window_ms = s.markov_window_ms
        self.interval_s = s.markov_interval_ms / 1000
        self.watermark = 0
        self.changed = False
        self.computed_at = 0.0  # monotonic
        self.published: PathCounts | None = None
        self.gauged: set[str] = set()

    def absorb_batch(self, batch: list[Any]) -> None:
        rows: dict[str, Any] = {}
        for event in batch:
            for snapshot in orjson.loads(event.message.value):
                self.watermark = max(self.watermark, snapshot["wm"])
                partition, held = snapshot["p"], set(snapshot["all"])
                for key in [*self.table.data.keys(), *rows]:
                    source, bucket = map(int, key.split("|"))
                    if source == partition and bucket not in held:
                        rows[key] = None
                for bucket, counts in snapshot["f"]:
                    rows[f"{partition}|{bucket}"] = counts
        self.table.put_rows(rows)
        self.changed = self.changed or bool(rows) or bool(batch)

    def chain(self) -> tuple[PathCounts, list[str]]:
        """The counts in MARKOV_WINDOW, and the keys of buckets that left it."""
        floor = first_bucket(self.watermark, self.window_ms)
        total, stale = PathCounts(), []
        for key, counts in self.table.data.items():
            if int(key.split("|")[1]) < floor:
                stale.append(key)
            else:
                total.add(PathCounts.from_json(counts))
        return total, stale

    async def publish(self) -> None:
        if not self.changed or time.monotonic() - self.computed_at < self.interval_s:
            return
        owned = self.w.assigned(self.w.markov_partials_topic.get_topic_name())
        if not may_write(self.w) or CHAIN_PARTITION not in owned:
            return
        self.changed = False
        self.computed_at = time.monotonic()
        total, stale = self.chain()
        if stale:
            self.table.put_rows(dict.fromkeys(stale))
            await self.table.send_changes()
        if total == self.published:
            return
        messages = markov_messages(total, int(time.time() * 1000))
        for message in messages:
            await self.w.metrics_markov.send(key=message["channel"].encode(), value=orjson.dumps(message))
        self.published = total
        self.set_gauges({m["channel"]: m["share"] for m in messages})

    def set_gauges(self, by_channel: dict[str, float]) -> None:
        gauge = self.w.metrics.markov_share
        for channel, share in by_channel.items():
            gauge.labels(channel).set(share)
        for channel in self.gauged - by_channel.keys():
            with contextlib.suppress(KeyError):
                gauge.remove(channel)
        self.gauged = set(by_channel)

    def recovered(self, partitions: set[int]) -> None:
        """The chain's owner publishes again after recovery; a worker that no longer owns it drops its gauges."""
        if CHAIN_PARTITION in partitions:
            self.changed, self.published = True, None
        else:
            self.set_gauges({})


def register(w: Wiring) -> None:
    journeys_stage = w.state["journeys"]
    paths = PathStage(w, lambda: journeys_stage.stream_time,
                      lambda partition: journeys_stage.sources.watermark(partition, time.monotonic()))
    chain = ChainStage(w)
    journeys_stage.paths = paths
    w.state["markov-paths"] = paths
    w.state["markov-chain"] = chain
    w.markov_paths.recovered_callbacks.append(paths.rebuild)
    w.journeys.recovered_callbacks.append(paths.reindex)
    w.markov_chain.recovered_callbacks.append(chain.recovered)
    if getattr(w, "erasers", None) is not None:
        w.erasers.register("t", "markov-paths", paths.erase)

    guard = SkippedRecordGuard(w.app, w.bootstrap, w.markov_partials_topic.get_topic_name(), APP_ID)

    @w.app.agent(w.markov_partials_topic, name="markov-chain")
    async def markov_chain(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                chain.absorb_batch(await guard(batch))
                await w.markov_chain.send_changes()  # before the batch's snapshots are acknowledged

    @w.app.timer(NULL_CHECK_INTERVAL_S, name="close-null-paths")
    async def close_null_paths() -> None:
        paths.close_timed_out()
        await w.markov_paths.send_changes()

    @w.app.timer(SNAPSHOT_INTERVAL_S, name="send-markov-snapshots")
    async def send_snapshots() -> None:
        await paths.send_snapshots()

    @w.app.timer(PUBLISH_CHECK_INTERVAL_S, name="publish-markov")
    async def publish() -> None:
        await chain.publish()

    @w.app.timer(SWEEP_INTERVAL_S, name="sweep-markov-paths")
    async def sweep() -> None:
        await paths.sweep()
