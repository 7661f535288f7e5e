"""STATE_STORE=memory: the changelogs a recovery reads are read in bulk first, straight into the tables.

Faust recovers a table by handing every changelog record through its consumer's conductor, an event and a
queue per record, and checks after each whether recovery is over: ~8,000 records a second here, so a kill -9
of a worker holding 100,000 visitors took 34 s to recover, and a million 276 s (bench/RESULTS.md, "State at
scale"). A plain Kafka consumer applying the records straight to the store's dict reads the same changelogs
an order of magnitude faster.

Where it fits: Faust's recovery decides, per active changelog partition, the offset it reads from (the
store's persisted offset, or the last one it read in an earlier generation, or the start). Just before that
(`Recovery._build_offsets`), every such partition of a table stored in memory is read here from that offset
(the start when there is none) to the highwater Faust took for it (the last offset when its recovery began:
its consistency check stops the recovery for an offset past it); Faust then starts at the last offset read,
as for a store with persisted offsets, and has nothing left to read up to its highwater. A partition kept
through a rebalance is read from where its last recovery ended, as Faust would: the rows the worker wrote
since come back as they are. Reading stops after `budget_s` (Faust gives the step 90 s and stops recovering
for good past it): Faust reads the rest. A read cut short by a new rebalance records nothing, and the next
recovery reads that partition from the same offset again; replaying a changelog over rows already applied
gives the same rows, so that is safe.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0
FETCH_BYTES = 32 * 1024 * 1024
PARTITION_FETCH_BYTES = 8 * 1024 * 1024


class BulkReadTable(Protocol):
    name: str

    def reads_changelog_in_bulk(self) -> bool: ...

    def apply_changelog_records(self, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> None: ...


def read_changelogs_in_bulk(budget_s: float) -> None:
    """Make Faust's recovery read the changelog partitions of in-memory tables in bulk before it reads them
    itself (see the module's docstring). Installed once per process."""
    from faust.tables.recovery import Recovery

    build_offsets = getattr(Recovery._build_offsets, "original", Recovery._build_offsets)

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        if title == "active":
            tables = {tp: self.tp_to_table[tp] for tp in tps}
            await read_in_bulk(bootstrap_of(self.app), tables, destination, self.active_highwaters, budget_s)
        await build_offsets(self, consumer, tps, destination, title)

    _build_offsets.original = build_offsets  # type: ignore[attr-defined]
    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]


def next_offset(last_applied: int | None) -> int:
    return 0 if last_applied is None or last_applied < 0 else last_applied + 1


def bootstrap_of(app: Any) -> str:
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


async def read_in_bulk(
    bootstrap: str, tables: Mapping[Any, BulkReadTable], destination: MutableMapping[Any, Any],
    highwaters: Mapping[Any, int | None], budget_s: float,
) -> None:
    """Apply each changelog partition of `tables` (Faust TP -> its table) that is stored in memory to its
    table, from after the offset `destination` holds for it (Faust's offsets: the last one applied, -1 or None
    for none) up to its offset in `highwaters` (Faust's: the last offset when its recovery began; None: the end
    now). Faust's recovery does not read a record written after that (by a worker that owned the partition
    before), and an offset past it would stop the recovery (`ConsistencyError`). Record in `destination` the
    last offset applied of each partition that had records to read."""
    wanted = {TopicPartition(tp.topic, tp.partition): (tp, table) for tp, table in tables.items()
              if table.reads_changelog_in_bulk()}
    if not wanted:
        return
    read_from = {tp: destination.get(faust_tp) for tp, (faust_tp, _) in wanted.items()}
    last_offsets = {tp: highwaters.get(faust_tp) for tp, (faust_tp, _) in wanted.items()}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                fetch_max_bytes=FETCH_BYTES, max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
    await consumer.start()
    try:
        last = await read_partitions(consumer, {tp: table for tp, (_, table) in wanted.items()}, read_from,
                                     last_offsets, budget_s)
    finally:
        await consumer.stop()
    for tp, offset in last.items():
        destination[wanted[tp][0]] = offset


async def read_partitions(
    consumer: AIOKafkaConsumer, tables: Mapping[TopicPartition, BulkReadTable],
    read_from: Mapping[TopicPartition, int | None], last_offsets: Mapping[TopicPartition, int | None],
    budget_s: float,
) -> dict[TopicPartition, int]:
    """Read each partition from after `read_from` (the last offset already applied; None or -1: none) up to its
    offset in `last_offsets` (None: its current end), or until `budget_s` has passed; the last offset applied
    per partition that had records to read."""
    ends = await consumer.end_offsets(list(tables))
    ends = {tp: end if last_offsets.get(tp) is None else min(end, last_offsets[tp] + 1) for tp, end in ends.items()}
    beginnings = await consumer.beginning_offsets(list(tables))
    firsts = {tp: max(beginnings[tp], next_offset(read_from.get(tp))) for tp in tables}
    remaining = {tp for tp in tables if ends[tp] > firsts[tp]}
    if not remaining:
        return {}
    consumer.assign(list(remaining))
    for tp in remaining:
        consumer.seek(tp, firsts[tp])
    total = sum(ends[tp] - firsts[tp] for tp in remaining)
    began = reported = time.monotonic()
    last: dict[TopicPartition, int] = {}
    applied = 0
    while remaining:
        now = time.monotonic()
        if now - began > budget_s:
            log.warning("recovery: read %d of ~%d changelog records in bulk in %.0f s; Faust reads the rest",
                        applied, total, now - began)
            break
        if now - reported >= PROGRESS_EVERY_S:
            log.info("recovery: %d of ~%d changelog records read in bulk (%.0f s)", applied, total, now - began)
            reported = now
        fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
        for tp, records in fetched.items():
            records = [record for record in records if record.offset < ends[tp]]
            if not records:
                continue
            tables[tp].apply_changelog_records(tp.partition, ((r.key, r.value) for r in records))
            last[tp] = records[-1].offset
            applied += len(records)
        for tp in list(remaining):
            if last.get(tp, -1) >= ends[tp] - 1 or await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
    by_table: dict[str, int] = defaultdict(int)
    for tp in last:
        by_table[tables[tp].name] += 1
    log.info("recovery: %d changelog records of %d partitions read in bulk in %.1f s (%s)", applied, len(last),
             time.monotonic() - began, ", ".join(f"{name}: {n}" for name, n in sorted(by_table.items())))
    return last
