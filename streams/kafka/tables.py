"""A Faust table written in bulk whose changelog partition comes from its key (`KeyPartitionedTable`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
import orjson
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

log = logging.getLogger(__name__)
HOLD_POLL_S = 0.05  # how often held records look at the fence again
SETTLE_S = 30.0  # at most this long for the client's answers about earlier batches, before judging held ones
RECOVERY_WAIT_S = 120.0  # at most this long for the recovery of a new generation, before judging held records
END_OFFSET_TRIES = 5

# Faust's encodings of a changelog record (keys are str), and for values already packed bytes ("raw")
KEY_CODECS: dict[Any, Callable[[Any], bytes]] = {"json": orjson.dumps, "raw": str.encode}
VALUE_CODECS: dict[Any, Callable[[Any], bytes]] = {"json": orjson.dumps, "raw": bytes}
KEY_DECODERS: dict[Any, Callable[[bytes], Any]] = {"json": orjson.loads, "raw": bytes.decode}
VALUE_DECODERS: dict[Any, Callable[[bytes], Any]] = {"json": orjson.loads, "raw": bytes}


class KeyPartitionedTable(faust.Table):
    """A table whose changelog partition comes from `partition_for(key)`, so it can be written
    from timers and from batches that mix partitions, and which reports recovery.

    Besides `table[key] = row`, which sends one Faust message per key, it can be written in bulk:
    `put_rows` sets the rows and queues their changelog records, `send_changes` hands the queue to the
    Kafka client as one record batch per changelog partition. Faust's per-message publish path (a
    message future, the producer buffer and their callbacks per record) was a third of the worker's CPU
    with a record per tracking ID per batch. A table must use one way or the other, never both: the
    changelog's order per key is only kept within a way. Offsets are still committed only after these
    records are acknowledged: Faust's commit flushes the client, and `send_changes` is awaited before
    the events that made the rows are acknowledged.

    While the worker's group membership may have lapsed (`streams.kafka.group_fence`), `send_changes` holds the
    records and waits; once it is known again they go out, or are dropped where another worker owns or has
    written their partition since (`release_held`).

    With STATE_STORE=rocksdb the rows live in `streams.kafka.rocksdb_store`, which finds a key's database by
    `partition_for` too, and writes a row to its files only once the broker has acknowledged its changelog
    record (`send_batch` tells it).
    """

    def __init__(
        self, *args: Any, partition_for: Callable[[str], int], value_codec: str = "json",
        rocksdb_cache_bytes: int = 128 * 1024 * 1024, older: Callable[[Any, Any], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        self.rocksdb_cache_bytes = rocksdb_cache_bytes  # the store is made during Faust's __init__
        super().__init__(*args, **kwargs)
        self.value_serializer = value_codec  # Faust takes it from value_type, and has none for packed bytes
        self.partition_for = partition_for
        self.recovered_callbacks: list[Callable[[set[int]], None]] = []
        self.unsent: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.sending = asyncio.Lock()
        self.deliveries: list[asyncio.Future[Any]] = []
        self._row_lookup: Callable[[str], Any] | None = None
        self.fence: Any = None  # streams.kafka.group_fence.GroupFence, set by streams.stages.app.build
        self.acked_end: dict[int, int] = {}  # partition -> the offset after this table's last acknowledged record
        self.recovered_end: dict[int, int] = {}  # partition -> the changelog's end offset when its recovery completed
        self.recovered_in: Any = None  # the consumer generation of the last completed recovery
        self.holding = False
        self.older = older  # older(held row, changelog row): True when the record was made from older state
        self.on_older: Callable[[str, int], None] | None = None  # (table name, records skipped in recovery)
        self.before_recovery: dict[int, int] | None = None  # while holding: records per partition queued before it

    def reads_changelog_in_bulk(self) -> bool:
        """Its store is Faust's in-memory one, which `streams.kafka.bulk_recovery` fills faster than Faust."""
        return isinstance(self.data, MemoryStore)

    def apply_changelog_records(self, partition: int, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Apply changelog records of `partition`, in offset order, as Faust's in-memory store applies them
        in recovery (a record without a value deletes its key; each key remembers its partition, so that
        Faust drops it when the partition goes to another worker)."""
        data, partitions, older = self.data.data, self.data._key_partition, self.older
        decode_key = KEY_DECODERS[self.key_serializer]
        decode_value = VALUE_DECODERS[self.value_serializer]
        skipped = 0
        for raw_key, raw_value in records:
            if raw_key is None:
                continue
            key = decode_key(raw_key)
            if raw_value is None:
                data.pop(key, None)
                partitions.pop(key, None)
                continue
            value = decode_value(raw_value)
            if older is not None:  # as `apply_changelog_batch`: a record made from older state is skipped
                held = data.get(key)
                if held is not None and older(held, value):
                    skipped += 1
                    continue
            data[key] = value
            partitions[key] = partition
        if skipped:
            self.skipped_older(skipped)

    def partition_for_key(self, key: Any) -> int:
        return self.partition_for(key)

    def row(self, key: str) -> Any:
        """The row of `key`, or None, from the store itself. `table.get(key)` goes through Faust's table layer
        and `Mapping.get`, which raises and catches a KeyError for every key that is not there: 1.2 us a miss,
        where the memory store's dict takes 0.04 us (the journeys stage looks a row up for nearly every event)."""
        lookup = self._row_lookup
        if lookup is None:
            rows = getattr(self.data, "data", None)  # the memory store keeps its rows in a plain dict
            lookup = self._row_lookup = rows.get if type(rows) is dict else self.data.get
        return lookup(key)

    def _new_store_by_url(self, url: Any) -> Any:
        if str(url).startswith("rocksdb:"):
            from streams.kafka.rocksdb_store import (
                KeyPartitionedRocksDBStore,  # RocksDB's bindings only where it is used
            )

            return KeyPartitionedRocksDBStore(
                url, self.app, self, cache_bytes=self.rocksdb_cache_bytes, table_name=self.name, key_type=self.key_type,
                key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                value_type=self.value_type, loop=self.loop, options=self.options,
            )
        return super()._new_store_by_url(url)

    def put_rows(self, rows: Mapping[str, Any]) -> None:
        """Set each key to its row (None: delete it) now, and queue the changelog records in that order,
        encoded as Faust encodes this table's records, so that its recovery reads them back."""
        data = self.data
        encode_key = KEY_CODECS[self.key_serializer]
        encode_value = VALUE_CODECS[self.value_serializer]
        for key, row in rows.items():
            if row is None:
                data.pop(key, None)
                value = None
            else:
                data[key] = row
                value = encode_value(row)
            self.unsent.setdefault(self.partition_for(key), []).append((encode_key(key), value))

    async def send_changes(self) -> None:
        """Hand every queued changelog record to the Kafka client, in the order the rows were put."""
        async with self.sending:
            self.raise_failed_delivery()
            if self.unsent and self.fence is not None and not self.fence.is_open():
                await self.hold()
            client = self.app.producer._ensure_producer()
            topic = self.changelog_topic.get_topic_name()
            while self.unsent:
                partition, records = self.unsent.popitem()
                batch, start = client.create_batch(), 0
                for n, (key, value) in enumerate(records):
                    if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                        await self.send_batch(client, batch, topic, partition, records[start:n])
                        batch, start = client.create_batch(), n
                        batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
                await self.send_batch(client, batch, topic, partition, records[start:])

    async def hold(self) -> None:
        """Wait until the fence opens. In the generation the records were made in, they go out. In another, the
        worker may have been dropped from the group and its partitions written by others: once that generation's
        recovery has brought the others' records in, judge the records queued before it (`release_held`)."""
        fence = self.fence
        generation, recovered_end = fence.generation(), dict(self.recovered_end)
        log.warning("%s: %d changelog records held: the worker's group membership may have lapsed", self.name,
                    sum(map(len, self.unsent.values())))
        self.holding, self.before_recovery = True, None
        try:
            while not fence.is_open():
                await asyncio.sleep(HOLD_POLL_S)
            if fence.generation() == generation:
                log.warning("%s: group membership confirmed; sending the held records", self.name)
                return
            deadline = time.monotonic() + RECOVERY_WAIT_S
            while (self.recovered_in != fence.generation() or not fence.is_open()) and time.monotonic() < deadline:
                await asyncio.sleep(HOLD_POLL_S)
            await self.settle_deliveries()
            await self.release_held(recovered_end, self.before_recovery)
        finally:
            self.holding, self.before_recovery = False, None

    async def release_held(self, recovered_end: Mapping[int, int], before_recovery: Mapping[int, int] | None) -> None:
        """Of each partition's records queued before the recovery (`before_recovery`; None: all), drop those of a
        partition not this worker's now, or whose changelog ends past this worker's own last record (or, without
        one, past where its last recovery before the hold ended): they were made from state older than what others
        wrote since. Records queued after the recovery were made from what it read: they go out."""
        fence, topic = self.fence, self.changelog_topic.get_topic_name()
        for partition in sorted(self.unsent):
            records = self.unsent[partition]
            tp = TP(topic, partition)
            if fence.assigned(tp):
                suspect = len(records) if before_recovery is None else before_recovery.get(partition, 0)
                if not suspect:
                    continue
                ours = max(self.acked_end.get(partition, -1), recovered_end.get(partition, -1))
                if ours >= 0 and await self.end_offset(tp) <= ours:
                    continue  # nobody wrote it since: they go out
            else:
                suspect = len(records)
            dropped, kept = records[:suspect], records[suspect:]
            if kept:
                self.unsent[partition] = kept
            else:
                del self.unsent[partition]
            discard = getattr(self.data, "discard", None)
            if discard is not None:
                discard(partition, dropped)
            fence.dropped(self.name, len(dropped))
            log.warning("%s: %d changelog records of partition %d dropped: written by another worker since, or "
                        "not this worker's now", self.name, len(dropped), partition)

    async def end_offset(self, tp: TP) -> int:
        for attempt in range(END_OFFSET_TRIES):
            try:
                return int(await self.fence.end_offset(tp))
            except Exception:  # noqa: BLE001 - the broker may be failing over: ask again
                if attempt == END_OFFSET_TRIES - 1:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def settle_deliveries(self) -> None:
        """Wait (SETTLE_S at most) for the client's answers about the batches handed to it before the hold."""
        pending = [delivery for delivery in self.deliveries if not delivery.done()]
        if pending:
            await asyncio.wait(pending, timeout=SETTLE_S)
        await asyncio.sleep(0)  # the done callbacks of the last ones (`acked_end`) run on the next turn of the loop

    async def send_batch(
        self, client: Any, batch: Any, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Send one record batch; a store that keeps rows until the broker has them (RocksDB) learns when."""
        delivery = await client.send_batch(batch, topic, partition=partition)
        self.deliveries.append(delivery)
        acknowledged = getattr(self.data, "acknowledged", None)

        def on_delivery(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                end = future.result().offset + len(records)
                self.acked_end[partition] = max(self.acked_end.get(partition, -1), end)
                if acknowledged is not None:
                    acknowledged(partition, records, end - 1)

        delivery.add_done_callback(on_delivery)

    def raise_failed_delivery(self) -> None:
        """A batch the broker refused stops the worker, as a failed Faust changelog write would."""
        pending = []
        for delivery in self.deliveries:
            if not delivery.done():
                pending.append(delivery)
            elif delivery.exception() is not None:
                raise RuntimeError(f"changelog of table {self.name} not written") from delivery.exception()
        self.deliveries = pending

    def apply_changelog_batch(self, batch: Any) -> None:
        """Recovery. A table with `older` skips a record made from older state than the row before it (a late
        record of a worker that had lost the partition, landed after the new owner's): the changelog's order
        does not decide then, the rows' own sequence marks do."""
        if self.older is not None:
            batch = self.newer_only(batch)
        super().apply_changelog_batch(batch)

    def newer_only(self, batch: Any) -> list[Any]:
        latest: dict[Any, Any] = {}
        kept, skipped = [], 0
        for event in batch:
            key = self._to_key(event.key)
            if event.message.value is None:
                latest[key] = None
                kept.append(event)
                continue
            held = latest[key] if key in latest else self.data.get(key)
            if held is not None and self.older(held, event.value):
                skipped += 1
                continue
            latest[key] = event.value
            kept.append(event)
        if skipped:
            self.skipped_older(skipped)
        return kept

    def skipped_older(self, skipped: int) -> None:
        log.warning("%s: %d changelog records older than the row held skipped in recovery (a zombie's late "
                    "writes, or this worker's own rows read again)", self.name, skipped)
        if self.on_older is not None:
            self.on_older(self.name, skipped)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        partitions = {tp.partition for tp in active_tps if tp.topic == self.changelog_topic.get_topic_name()}
        self.recovered_in = getattr(self.app, "consumer_generation_id", None)
        if self.holding:  # what is queued now was made before this recovery read the others' records in
            self.before_recovery = {partition: len(records) for partition, records in self.unsent.items()}
        if self.fence is not None and partitions:  # where the changelog ended when this worker had read it all
            topic = self.changelog_topic.get_topic_name()
            try:
                ends = await self.app.consumer.highwaters(*(TP(topic, p) for p in partitions))
            except Exception as exc:  # noqa: BLE001 - then held records of these partitions go only after a write
                log.warning("%s: end offsets after recovery unknown (%s)", self.name, exc)
            else:
                self.recovered_end.update({tp.partition: int(end) for tp, end in ends.items()})
        for callback in self.recovered_callbacks:
            callback(partitions)
