"""Lifetime value: customers by the partition of their id, then per-channel sums, then `metrics.ltv`.

    attribution-customer-orders (on partition_of(customer_id))  <- the journeys stage, arrays of orders
            │ customers: one row per customer (streams.core.ltv), per-partition sums in memory
            ▼
    attribution-ltv-partials (by channel; ABSOLUTE sums per source partition)
            │ channels: latest partial per source partition + cumulative spend from metrics.channel
            ▼
    metrics.ltv (by channel), GET /api/v1/ltv, attribution_ltv_* gauges

Stage one keeps, per partition, the sums "retired customers + remembered customers" in memory.
They are not a table of their own: they are a function of the customer table (and of one meta row
per partition holding what the sweep retired), so after a restart or a rebalance they are rebuilt
from the recovered table and can never disagree with it. The meta row and the customer rows share
one changelog partition, written in order (the meta row before the deletions), so a crash between
them leaves nothing counted twice: a row whose last order is behind the meta row's retirement
watermark is already in the retired sums and is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from typing import Any

import orjson

from streams.core.ltv import (
    FIGURES,
    Customer,
    CustomerOrder,
    Spend,
    Sums,
    absorb,
    absorb_refund,
    add_sums,
    ltv_message,
    row_contribution,
    spend_horizon_ms,
)
from streams.kafka.skipped_records import SkippedRecordGuard, SkippedRecordGuards
from streams.kafka.topics import METRICS_CHANNEL_TOPIC
from streams.stages.topology import APP_ID, Wiring, may_write

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05
SNAPSHOT_INTERVAL_S = 0.5
PUBLISH_INTERVAL_S = 1.0
SWEEP_INTERVAL_S = 30.0
LTV_NAMESPACE = "ltv"
CUSTOMER_PREFIX = "c"  # table key of a customer: c<partition>|<customer_id>
META_PREFIX = "m"  # table key of a partition's retired sums: m<partition>


def customer_key(partition: int, customer_id: str) -> str:
    return f"{CUSTOMER_PREFIX}{partition}|{customer_id}"


def key_partition(key: str) -> int:
    """Changelog partition of an `ltv-customers` key: it names its partition (no hashing on a scan)."""
    return int(key[1:]) if key[0] == META_PREFIX else int(key[1:key.index("|")])


class CustomerStage:
    """Stage one: customers of the partitions this worker owns, and their per-channel sums."""

    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.table = w.ltv_customers
        self.retention_ms = w.settings.customer_retention_ms
        self.sums: dict[int, Sums] = {}  # partition -> channel -> figures (retired + remembered customers)
        self.retired: dict[int, int] = {}  # partition -> retirement watermark (event time)
        self.watermarks: dict[int, int] = {}  # partition -> newest order ts seen
        self.dirty: set[tuple[int, str]] = set()
        self.outcomes: Counter[str] = Counter()

    def absorb_batch(self, batch: list[Any]) -> None:
        loaded: dict[str, Customer | None] = {}
        changed: set[str] = set()
        for event in batch:
            # On partition_of(customer_id): the worker checks at start that this internal topic has
            # TOPIC_PARTITIONS partitions, like the table.
            message = event.message
            value = orjson.loads(message.value)
            if isinstance(value, dict):  # one order, keyed by its customer_id (written before 2026-12-07)
                self.absorb_order(message.partition, message.key.decode(), value, loaded, changed)
                continue
            for record in value:
                self.absorb_order(message.partition, record["cid"], record, loaded, changed)
        self.table.put_rows({key: loaded[key].to_row() for key in changed})  # type: ignore[union-attr]

    def absorb_order(self, partition: int, customer_id: str, record: dict[str, Any],
                     loaded: dict[str, Customer | None], changed: set[str]) -> None:
        key = customer_key(partition, customer_id)
        if key not in loaded:
            row = self.table.get(key)
            loaded[key] = Customer.from_row(row) if row else None
        if record.get("refund"):  # a refund of one of the customer's orders (streams.stages.refunds)
            result = absorb_refund(loaded[key], str(record["event_id"]), float(record["revenue"]),
                                   float(record["gross_profit"]))
        else:
            order = CustomerOrder.from_record(record)
            self.watermarks[partition] = max(self.watermarks.get(partition, 0), order.ts)
            result = absorb(loaded[key], order, self.retention_ms, self.retired.get(partition, 0))
        self.outcomes[result.outcome] += 1
        if result.customer is None:
            return
        loaded[key] = result.customer
        changed.add(key)
        add_sums(self.sums.setdefault(partition, {}), result.delta)
        self.dirty.update((partition, channel) for channel in result.delta)

    def owned(self) -> set[int]:
        return self.w.assigned(self.w.customer_orders.get_topic_name())

    async def send_snapshots(self) -> None:
        """Absolute sums per (source partition, channel), keyed by channel: the next stage overwrites. Nothing while
        the zombie fence is shut (`may_write`): a woken worker's sums may be older than its partitions' new owner's."""
        if not may_write(self.w):
            return
        dirty, self.dirty = self.dirty, set()
        owned = self.owned()
        for partition, channel in sorted(dirty):
            figures = self.sums.get(partition, {}).get(channel)
            if partition in owned and figures is not None:
                snapshot = {"p": partition, "c": channel, "f": figures}
                await self.w.ltv_partials_topic.send(key=channel.encode(), value=orjson.dumps(snapshot))

    def rebuild(self, partitions: set[int]) -> None:
        """After recovery: the sums of these partitions from the table; forget the others."""
        sums: dict[int, Sums] = {p: {} for p in partitions}
        retired: dict[int, int] = {}
        for partition in partitions:
            meta = self.table.get(f"{META_PREFIX}{partition}")
            if meta:
                add_sums(sums[partition], meta["s"])
                retired[partition] = meta["r"]
        watermarks = dict(retired)
        count = 0
        memory = self.w.settings.state_store == "memory"
        for key, row in self.table.data.items():
            if key[0] != CUSTOMER_PREFIX:
                continue
            partition = key_partition(key)
            if partition not in sums or row[6] + self.retention_ms < retired.get(partition, 0):
                continue  # not ours; or retired before a crash, its deletion lost: the sweep deletes it
            add_sums(sums[partition], row_contribution(row))
            watermarks[partition] = max(watermarks.get(partition, 0), row[6])
            if memory:  # channel names shared by all customers, not one copy per recovered row
                acquisition = row[2]
                for i in range(0, len(acquisition), 2):
                    acquisition[i] = sys.intern(acquisition[i])
            count += 1
        self.sums, self.retired, self.watermarks = sums, retired, watermarks
        self.dirty = {(p, channel) for p, channels in sums.items() for channel in channels}
        if partitions:
            log.info("lifetime value: %d customers remembered on partitions %s", count, sorted(partitions))

    def sweep(self) -> None:
        """Forget customers whose last order is more than CUSTOMER_RETENTION behind their partition's
        newest order (event time). Their figures stay counted: they move to the partition's meta row,
        which is written before the deletions (one changelog partition: in order)."""
        owned = self.owned()
        due = {p: wm for p, wm in self.watermarks.items() if p in owned}
        if not due:
            return
        newest = max(due.values())
        retire: dict[int, Sums] = {}
        delete: list[str] = []
        for key, row in list(self.table.data.items()):
            if key[0] != CUSTOMER_PREFIX or row[6] + self.retention_ms >= newest:
                continue
            partition = key_partition(key)
            if partition not in due or row[6] + self.retention_ms >= due[partition]:
                continue
            delete.append(key)
            if row[6] + self.retention_ms >= self.retired.get(partition, 0):  # else retired before a crash
                add_sums(retire.setdefault(partition, {}), row_contribution(row))
        for partition, sums in retire.items():
            meta_key = f"{META_PREFIX}{partition}"
            meta = self.table.get(meta_key) or {"r": 0, "s": {}}
            self.retired[partition] = due[partition]
            self.table.put_rows({meta_key: {"r": due[partition], "s": add_sums(meta["s"], sums)}})
        self.table.put_rows(dict.fromkeys(delete))
        if delete:
            log.info("lifetime value: forgot %d customers after CUSTOMER_RETENTION", len(delete))


    async def erase(self, customer_id: str) -> int:
        """Erasure (CONTRACT.md section 10): the customer's row goes, and its figures stay counted: they move
        to the partition's meta row, as the sweep retires a customer. Both records go in one put, on one
        changelog partition, in order (meta first), so a crash leaves the figures counted once."""
        partition = self.w.partition_of(customer_id)
        key = customer_key(partition, customer_id)
        row = self.table.get(key)
        if not row:
            return 0
        rows: dict[str, Any] = {}
        if row[6] + self.retention_ms >= self.retired.get(partition, 0):  # else retired before a crash already
            meta_key = f"{META_PREFIX}{partition}"
            meta = self.table.get(meta_key) or {"r": 0, "s": {}}
            rows[meta_key] = {"r": meta["r"], "s": add_sums(meta["s"], row_contribution(row))}
        rows[key] = None
        self.table.put_rows(rows)
        await self.table.send_changes()
        return 1


class ChannelStage:
    """Stage two: per channel, the latest partial of every source partition plus the cumulative spend."""

    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.table = w.ltv_channels
        s = w.settings
        self.keep_ms = spend_horizon_ms(s.metrics_window_ms, s.allowed_lateness_ms)
        self.dirty: set[str] = set()
        self.published: dict[str, dict[str, Any]] = {}
        self.unsaved: dict[str, bytes] = {}
        self.store_down = False  # the outage is logged once, when it starts, and once when it ends

    def absorb_batch(self, batch: list[Any]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for event in batch:
            message = event.message
            value = orjson.loads(message.value)
            is_spend = message.topic == METRICS_CHANNEL_TOPIC
            channel = value["channel"] if is_spend else value["c"]
            row = rows.get(channel)
            if row is None:
                row = rows[channel] = self.table.get(channel) or {"src": {}, "sp": None, "o": {}}
            tag = "m" if is_spend else "p"
            seen = row["o"].get(tag)
            if seen and seen[0] == message.partition and message.offset <= seen[1]:
                continue  # absorbed before a restart
            row["o"][tag] = [message.partition, message.offset]
            if is_spend:
                spend = Spend.from_row(row["sp"])
                row["sp"] = spend.absorb(value["window_start"], float(value["spend"]), bool(value["final"]),
                                         self.keep_ms).to_row()
            else:
                row["src"][str(value["p"])] = value["f"]
        for channel, row in rows.items():
            self.table[channel] = row
            self.dirty.add(channel)

    def message(self, channel: str) -> dict[str, Any] | None:
        """The channel's `metrics.ltv` message; None for a channel that acquired nobody and spent nothing
        (a channel whose customers all moved away by re-acquisition keeps its message, all zeros)."""
        row = self.table.get(channel)
        if not row or not (row["src"] or (row["sp"] and Spend.from_row(row["sp"]).total)):
            return None
        figures = [0.0] * len(FIGURES)
        for partial in row["src"].values():
            for i, value in enumerate(partial):
                figures[i] += value
        return ltv_message(channel, figures, Spend.from_row(row["sp"]).total)

    async def publish(self) -> None:
        """The changed channels this worker owns now: a worker paused past its session marks channels changed from
        what it reads on waking, after they went to another worker, whose figures are newer."""
        if not may_write(self.w):
            return
        owned, partition_of = self.w.assigned(self.w.ltv_partials_topic.get_topic_name()), self.w.partition_of
        dirty, self.dirty = {channel for channel in self.dirty if partition_of(channel) in owned}, set()
        for channel in sorted(dirty):
            message = self.message(channel)
            if message is None or self.published.get(channel) == message:
                continue
            await self.w.metrics_ltv.send(key=channel.encode(), value=orjson.dumps(message))
            self.published[channel] = message
            self.unsaved[channel] = orjson.dumps(message)
            self.set_gauges(channel, message)
        await self.save_latest()

    async def save_latest(self) -> None:
        if not self.unsaved:
            return
        items, self.unsaved = self.unsaved, {}
        try:
            await self.w.store.put_latest(LTV_NAMESPACE, items)
        except Exception as exc:  # noqa: BLE001 - the read API is stale until the store is back
            if not self.store_down:
                log.warning("could not save the latest lifetime figures to the store (%s): retrying until it is back",
                            exc)
            self.store_down = True
            self.unsaved = {**items, **self.unsaved}
            return
        if self.store_down:
            log.warning("store is back: the latest lifetime figures are saved again")
            self.store_down = False

    def set_gauges(self, channel: str, message: dict[str, Any]) -> None:
        m = self.w.metrics
        for gauge, name in ((m.ltv_clv, "clv"), (m.ltv_cac, "cac"), (m.ltv_ltv_cac, "ltv_cac")):
            value = message[name]
            if value is None:
                _remove(gauge, channel)
            else:
                gauge.labels(channel).set(value)

    def recovered(self, partitions: set[int]) -> None:
        """After a rebalance: publish every channel this worker owns (fills the read API after a
        restart); drop the gauges of channels it no longer owns."""
        owned = set()
        for channel in list(self.table.data.keys()):
            if self.w.partition_of(channel) in partitions:
                owned.add(channel)
        self.dirty |= owned
        m = self.w.metrics
        for channel in [c for c in self.published if c not in owned]:
            del self.published[channel]
            for gauge in (m.ltv_clv, m.ltv_cac, m.ltv_ltv_cac):
                _remove(gauge, channel)


def _remove(gauge: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


def register(w: Wiring) -> None:
    customers = CustomerStage(w)
    channels = ChannelStage(w)
    w.state["ltv-customers"] = customers
    w.state["ltv-channels"] = channels
    w.ltv_customers.recovered_callbacks.append(customers.rebuild)
    w.ltv_channels.recovered_callbacks.append(channels.recovered)
    if getattr(w, "erasers", None) is not None:
        w.erasers.register("c", "ltv-customers", customers.erase)

    guard = SkippedRecordGuard(w.app, w.bootstrap, w.customer_orders.get_topic_name(), APP_ID)

    @w.app.agent(w.customer_orders, name="ltv-customers")
    async def ltv_customers(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                customers.absorb_batch(await guard(batch))
                await w.ltv_customers.send_changes()  # before the batch's orders are acknowledged

    channel_guard = SkippedRecordGuards(w.app, w.bootstrap, w.ltv_channel_inputs.topics, APP_ID)

    @w.app.agent(w.ltv_channel_inputs, name="ltv-channels")
    async def ltv_channels(stream: Any) -> None:
        async with channel_guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                channels.absorb_batch(await channel_guard(batch))

    @w.app.timer(SNAPSHOT_INTERVAL_S, name="send-ltv-snapshots")
    async def send_snapshots() -> None:
        await customers.send_snapshots()

    @w.app.timer(PUBLISH_INTERVAL_S, name="publish-ltv")
    async def publish() -> None:
        await channels.publish()

    @w.app.timer(SWEEP_INTERVAL_S, name="sweep-ltv-customers")
    async def sweep() -> None:
        customers.sweep()
        await w.ltv_customers.send_changes()
