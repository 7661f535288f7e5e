"""Refunds: the order ledger, keyed by order_id, and refunds judged against it (CONTRACT.md section 9).

    journeys ──(attributed orders, marks)──┐
    intake   ──(valid refunds)─────────────┤
                                           ▼
                attribution-order-ledger (on partition_of(order_id))
                                           │ ledger: orders and pending refunds per order_id (`order-ledger`)
                                           ├──► attributions (the refund message), events.dlq (rejected refunds)
                                           ├──► attribution-metric-partials (source "r<partition>": refund partials)
                                           └──► attribution-customer-orders (lifetime value: the refund)

Thin wiring over `streams.core.refunds`. A refund waits, as a conversion waits for its touchpoints, until
every journey partition reports a mark past its `ts`: the journeys stage sends, after its attributed
orders' ledger entries are on Kafka, the event time up to which every order it can still receive has been
attributed (its touchpoint-and-order watermark, held below its oldest waiting conversion). Refunds of a
ledger partition are judged in sequence order (the refund partials' sequence marks rely on it), with the
journeys stage's `GraceQueue`, which also holds a recovered partition until its topic is read again.

Crash safety follows the journeys stage: the partials (with the refund's sequence as their mark), the
`attributions` message (same key), the lifetime-value record (remembered by the refund's id hash) and the
dead letter are on Kafka before the ledger row forgets the pending refund; a replay judges it again
against the same row and changes nothing twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from streams.core.events import Refund, from_row
from streams.core.journeys import SEQ_PER_MESSAGE, GraceQueue, seq_of
from streams.core.refunds import (
    ORDER_TS,
    PENDING,
    UNKNOWN_ORDER,
    LedgerOrder,
    Taken,
    add_pending,
    has_refund,
    is_expired,
    judge,
    order_of,
    refund_effects,
    remember_order,
    take,
    without_customer,
)
from streams.core.windows import (
    GROSS_PROFIT,
    REFUNDED_REVENUE,
    REFUNDS,
    REVENUE,
    Partial,
    is_closed,
    parse_partial_key,
    partial_key,
    window_start,
)
from streams.kafka.skipped_records import SkippedRecordGuard
from streams.kafka.topics import json_arrays
from streams.serving.prometheus import OUTCOMES, BatchCounts
from streams.stages.metrics import SNAPSHOT_MESSAGE_BYTES, send_partial_snapshots
from streams.stages.topology import APP_ID, Wiring

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.02
DUE_INTERVAL_S = 0.1
SNAPSHOT_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 30.0
MAX_HOLD_S = 60.0  # with no marks at all, a refund waits at most this long for its order
# An order_id still unknown once the marks have passed the refund is a dead letter only after the refund has
# waited this long (wall clock) since it arrived: the marks assume each input partition is read in ts order,
# and an order sent after a later one (or read again after a restart, beside the refunds) may come behind.
UNKNOWN_WAIT_S = 10.0
UNKNOWN_RETRY_S = 1.0
SOURCE_PREFIX = "r"  # the refund partials' source in the metrics stage: r<ledger partition>


class JourneyMarks:
    """Per journey partition, the latest mark its owner reported: orders with `ts` up to it are in the
    ledger. A refund is due once every journey partition has reported past its `ts` since it arrived (the
    `passed` of `streams.core.watermarks.SourceWatermarks`, which `GraceQueue` asks)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.marks: dict[int, tuple[int, float]] = {}

    def report(self, partition: int, mark: int, now: float) -> None:
        self.marks[partition] = (mark, now)

    def passed(self, partition: int, ts: int, since: float, now: float) -> bool:
        if len(self.marks) < self.partitions:
            return False
        return all(mark >= ts and at >= since for mark, at in self.marks.values())


class RefundStage:
    def __init__(self, w: Wiring) -> None:
        self.w = w
        s = w.settings
        self.marks = JourneyMarks(s.topic_partitions)
        self.grace = GraceQueue(0.0, MAX_HOLD_S, self.marks)  # type: ignore[arg-type]
        self.stream_time = 0
        self.dirty_partials: set[str] = set()
        self.customer_refunds: dict[int, list[bytes]] = {}
        self.counts = BatchCounts()
        self.outcome = {o: w.metrics.events.labels("refund", o) for o in OUTCOMES}
        self.arrived: dict[tuple[str, int], float] = {}  # (order_id, seq) -> when the refund was queued

    def topic(self) -> str:
        return str(self.w.ledger_topic.get_topic_name())

    # -- orders, refunds and marks as they arrive ----------------------------------------------
    def absorb_batch(self, batch: list[Any]) -> None:
        s = self.w.settings
        now = time.monotonic()
        rows: dict[str, list[Any] | None] = {}

        def row_of(order_id: str) -> list[Any] | None:
            if order_id not in rows:
                stored = self.w.order_ledger.row(order_id)
                rows[order_id] = orjson.loads(orjson.dumps(stored)) if stored else None
            return rows[order_id]

        for event in batch:
            partition, offset = event.message.partition, event.message.offset
            message = orjson.loads(event.message.value)
            self.stream_time = max(self.stream_time, message.get("mx", 0))
            for journey_partition, mark in message.get("m", ()):
                self.marks.report(journey_partition, mark, now)
            for order_id, order_row in message.get("o", ()):
                row, _ = remember_order(row_of(order_id), LedgerOrder.from_row(order_row))
                rows[order_id] = row
            for position, (refund_row, dlq) in enumerate(message.get("r", ())):
                refund = from_row(refund_row)
                if not isinstance(refund, Refund):  # only the intake writes refunds here: a bug, logged, not fatal
                    log.error("not a refund on %s, skipped: %r", self.topic(), refund_row)
                    continue
                row = row_of(refund.order_id)
                if has_refund(row, refund.event_id):
                    self.counts.add(self.outcome["duplicate"])
                    continue
                if is_closed(window_start(refund.ts, s.metrics_window_ms), s.metrics_window_ms, self.stream_time,
                             s.allowed_lateness_ms):
                    self.counts.add(self.outcome["late"])
                    continue
                seq = seq_of(offset, position)
                rows[refund.order_id] = add_pending(row, seq, refund, dlq)
                self.grace.add(partition, refund.order_id, seq, refund.ts, now)
                self.arrived.setdefault((refund.order_id, seq), now)
            self.grace.read(partition, offset, now)
        self.w.order_ledger.put_rows({key: row for key, row in rows.items() if row is not None})
        self.counts.apply()

    # -- refunds judged once their orders are in -------------------------------------------------
    async def judge_due(self) -> None:
        now = time.monotonic()
        ready = self.grace.ready(now, self.w.assigned(self.topic()))
        if not ready:
            return
        s = self.w.settings
        rows: dict[str, list[Any]] = {}
        partials: dict[str, Partial] = {}
        later: list[tuple[int, str, int, int]] = []  # (partition, order_id, seq, ts) to judge again shortly
        for partition, order_id, seq in ready:
            if order_id not in rows:
                stored = self.w.order_ledger.row(order_id)
                if not stored:
                    continue
                rows[order_id] = orjson.loads(orjson.dumps(stored))
            row = rows[order_id]
            pending = next((p for p in row[PENDING] if p[0] == seq), None)
            if pending is None:
                continue
            refund = from_row(pending[1])
            assert isinstance(refund, Refund)
            if later and any(p == partition for p, *_ in later):  # in sequence: after the one put back
                later.append((partition, order_id, seq, refund.ts))
                continue
            verdict = judge(row, refund, s.refund_window_ms)
            if verdict == UNKNOWN_ORDER and now - self.arrived.get((order_id, seq), now) < UNKNOWN_WAIT_S:
                later.append((partition, order_id, seq, refund.ts))  # its order may be read out of ts order
                continue
            self.arrived.pop((order_id, seq), None)
            window = window_start(refund.ts, s.metrics_window_ms)
            if is_closed(window, s.metrics_window_ms, self.stream_time, s.allowed_lateness_ms):
                self.counts.add(self.outcome["late"])
                take(row, seq, refund, None)
            elif isinstance(verdict, str):
                self.counts.add(self.outcome["invalid"])
                await self.dead_letter(verdict, pending[2])
                take(row, seq, refund, None)
            else:
                self.counts.add(self.outcome["ok"])
                self.apply(partition, seq, window, row, refund, verdict, partials)
                take(row, seq, refund, verdict)
        self.grace.put_back(later, now, UNKNOWN_RETRY_S)
        self.w.refund_partials.put_rows({key: partial.to_row() for key, partial in partials.items()})
        self.dirty_partials.update(partials)
        # Everything a refund changes is on Kafka before its ledger row forgets it (see the module's note).
        await self.w.refund_partials.send_changes()
        await self.send_customer_refunds()
        await self.w.app.producer.flush()
        assigned = self.w.assigned(self.topic())
        self.w.order_ledger.put_rows({k: r for k, r in rows.items() if self.w.partition_of(k) in assigned})
        await self.w.order_ledger.send_changes()
        self.counts.apply()

    def apply(self, partition: int, seq: int, window: int, row: list[Any], refund: Refund, taken: Taken,
              partials: dict[str, Partial]) -> None:
        s, m = self.w.settings, self.w.metrics
        order = order_of(row)
        assert order is not None  # judged Taken
        effects = refund_effects(order, refund, taken, s.attribution_model, s.reporting_currency)
        fresh: dict[str, bool] = {}
        for channel, campaign, refunds, refunded, gross_profit in effects.figures:
            key = partial_key(partition, window, channel)
            partial = partials.get(key)
            if partial is None:
                partial = partials[key] = Partial.from_row(self.w.refund_partials.row(key))
            if key not in fresh:
                fresh[key] = seq > partial.conversion_seq
                partial.conversion_seq = max(seq, partial.conversion_seq)
            if fresh[key]:
                partial.add(campaign, REFUNDS, refunds)
                partial.add(campaign, REFUNDED_REVENUE, refunded)
                partial.add(campaign, REVENUE, -refunded)
                partial.add(campaign, GROSS_PROFIT, -gross_profit)
            m.count(self.counts, m.refunds, channel, campaign, refunds)
            m.count(self.counts, m.refunded_revenue, channel, campaign, refunded)
        for affiliate_id, role, amount in effects.commissions:
            m.commission_reversals.labels(affiliate_id, role).inc(-amount)
        self.w.attributions.send_soon(key=refund.event_id.encode(), value=orjson.dumps(effects.message))
        if order.customer_id and s.ltv_stage:
            record = {"cid": order.customer_id, "refund": True, "event_id": refund.event_id, "ts": refund.ts,
                      "revenue": taken.amount, "gross_profit": effects.gross_profit}
            self.customer_refunds.setdefault(self.w.partition_of(order.customer_id), []).append(
                orjson.dumps(record))

    async def dead_letter(self, error: str, dlq: list[Any]) -> None:
        topic, partition, offset, index, value = dlq
        record = {"error": error, "topic": topic, "partition": partition, "offset": offset, "index": index,
                  "value": value}
        await self.w.dlq.send(value=orjson.dumps(record))

    async def send_customer_refunds(self) -> None:
        for partition in list(self.customer_refunds):
            for value in json_arrays(self.customer_refunds[partition], SNAPSHOT_MESSAGE_BYTES):
                await self.w.customer_orders.send(value=value, partition=partition)
            del self.customer_refunds[partition]

    # -- snapshots, recovery and expiry ----------------------------------------------------------
    async def send_snapshots(self) -> None:
        dirty, self.dirty_partials = self.dirty_partials, set()
        await send_partial_snapshots(self.w, self.w.refund_partials, dirty, self.stream_time, SOURCE_PREFIX)

    def requeue_pending(self, partitions: set[int]) -> None:
        """After recovery: the pending refunds of these partitions wait again, in sequence order, and the
        partition is held until its topic is read past them (refunds read again go in first)."""
        found = []
        for key, row in self.w.order_ledger.data.items():
            partition = self.w.partition_of(key)
            if partition in partitions and row:
                if row[ORDER_TS] is not None:
                    self.stream_time = max(self.stream_time, row[ORDER_TS])
                found += [(pending[0], partition, key, pending[1][2]) for pending in row[PENDING]]
        now = time.monotonic()
        for seq, partition, key, ts in sorted(found):
            self.grace.add(partition, key, seq, ts, now)
            self.arrived.setdefault((key, seq), now)
        for seq, partition, _, _ in sorted(found):
            self.grace.hold(partition, seq // SEQ_PER_MESSAGE)
        if found:
            log.info("recovered %d pending refunds on partitions %s", len(found), sorted(partitions))

    def resend_partials(self, partitions: set[int]) -> None:
        for key in list(self.w.refund_partials.data.keys()):
            if parse_partial_key(key)[0] in partitions:
                self.dirty_partials.add(key)

    async def sweep(self) -> None:
        """Forget orders past REFUND_WINDOW with nothing pending, and partials of closed windows."""
        s = self.w.settings
        assigned = self.w.assigned(self.topic())
        gone = [key for key, row in self.w.order_ledger.data.items()
                if row and self.w.partition_of(key) in assigned
                and is_expired(row, self.stream_time, s.refund_window_ms)]
        self.w.order_ledger.put_rows(dict.fromkeys(gone))
        closed = [key for key in list(self.w.refund_partials.data.keys())
                  if parse_partial_key(key)[0] in assigned
                  and is_closed(parse_partial_key(key)[1], s.metrics_window_ms, self.stream_time,
                                s.allowed_lateness_ms)]
        self.w.refund_partials.put_rows(dict.fromkeys(closed))
        await self.w.order_ledger.send_changes()
        await self.w.refund_partials.send_changes()

    async def erase_customer_of(self, order_id: str) -> int:
        """Erasure (CONTRACT.md section 10): the order's ledger row keeps the order (a refund of it still works) and
        forgets its customer; the erased customer's links name the order IDs (streams.stages.erasure)."""
        row = without_customer(self.w.order_ledger.row(order_id))
        if row is None:
            return 0
        self.w.order_ledger.put_rows({order_id: row})
        await self.w.order_ledger.send_changes()
        return 1


def register(w: Wiring) -> None:
    stage = RefundStage(w)
    w.state["refunds"] = stage
    if getattr(w, "erasers", None) is not None:
        w.erasers.register("o", "order-ledger", stage.erase_customer_of)
    w.order_ledger.recovered_callbacks.append(stage.requeue_pending)
    w.refund_partials.recovered_callbacks.append(stage.resend_partials)

    guard = SkippedRecordGuard(w.app, w.bootstrap, w.ledger_topic.get_topic_name(), APP_ID)

    @w.app.agent(w.ledger_topic, name="order-ledger")
    async def ledger(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                stage.absorb_batch(await guard(batch))
                await w.order_ledger.send_changes()  # before the batch's records are acknowledged

    @w.app.timer(DUE_INTERVAL_S, name="judge-refunds")
    async def judge_due() -> None:
        await stage.judge_due()

    @w.app.timer(SNAPSHOT_INTERVAL_S, name="send-refund-snapshots")
    async def send_snapshots() -> None:
        await stage.send_snapshots()

    @w.app.timer(SWEEP_INTERVAL_S, name="sweep-order-ledger")
    async def sweep() -> None:
        await stage.sweep()
