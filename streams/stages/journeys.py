"""Journeys: per tracking ID, remember touchpoints, drop repeats, attribute conversions after the grace.

Thin wiring over `streams.core.journeys` (state and dedup), `streams.core.attribution` (credits) and
`streams.core.windows` (partial sums). Each table key is written once per batch. Conversions wait
`ATTRIBUTION_GRACE` of wall-clock time in an in-memory queue (rebuilt from the table after
recovery), so a touchpoint with an earlier `ts` that arrives just after its conversion counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import orjson

from streams.config import MODELS
from streams.core.attribution import (
    DIRECT,
    NONE_CAMPAIGN,
    Affiliate,
    Lookback,
    commissions,
    credits,
    journey_for,
    too_close_clicks,
)
from streams.core.events import Lead, Order, Spend, Touch, from_row
from streams.core.journeys import (
    ANONYMOUS_KEY_PREFIX,
    SEQ_PER_MESSAGE,
    Admission,
    GraceQueue,
    Journey,
    Retention,
    row_facts,
    seq_of,
)
from streams.core.refunds import LedgerOrder
from streams.core.watermarks import SourceWatermarks
from streams.core.windows import (
    CLICKS,
    GROSS_PROFIT,
    IMPRESSIONS,
    LEADS,
    NEW_CUSTOMERS,
    ORDERS,
    REVENUE,
    SPEND,
    SUSPECT_CLICKS,
    Partial,
    is_closed,
    parse_partial_key,
    partial_key,
    window_start,
)
from streams.kafka.skipped_records import SkippedRecordGuard
from streams.kafka.topics import json_arrays
from streams.serving.prometheus import OUTCOMES, BatchCounts
from streams.stages import markov
from streams.stages.metrics import SNAPSHOT_MESSAGE_BYTES, send_partial_snapshots
from streams.stages.topology import APP_ID, Wiring, may_write

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.02
DUE_INTERVAL_S = 0.1
SNAPSHOT_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 30.0
# Journeys forgotten per step of the sweep: each deletion is a changelog tombstone, and a million of them queued at
# once stalled the worker and its SIGTERM for minutes and took 3.7 GB (bench/memory_bound.py, 1,000,000 journeys
# expiring at once, when tombstones went through Faust's producer buffer). Each chunk is sent and flushed.
SWEEP_CHUNK = 2_000
MARKS_INTERVAL_S = 0.2  # how often the order ledger hears how far orders are attributed
SOURCE_STALE_S = 10.0  # an intake not heard from for this long (a worker gone) no longer holds conversions
MAX_HOLD_S = 30.0  # with no watermark at all, a conversion waits at most this long for its touchpoints
STORE_RETRY_S = 1.0
FUTURE_TOLERANCE_MS = 300_000
TOUCHES = ("i", "c")
FLOODED = "f"  # a click beyond CLICK_FLOOD, where the kind of a touchpoint goes
TOUCH_FIGURES = {"i": IMPRESSIONS, "c": CLICKS, FLOODED: SUSPECT_CLICKS}
TYPE_NAMES = {"i": "impression", "c": "click", "l": "lead", "o": "order", "s": "spend"}


class AbsorbedBatch:
    """What one batch of journey events gathers before it is written: the journeys and partials it changed
    and its Prometheus counts summed per label set (a counter call per event was a tenth of the stage)."""

    __slots__ = ("now_ms", "ceiling", "journeys", "partials", "slots", "outcomes", "touches", "spend")

    def __init__(self, now_ms: float) -> None:
        self.now_ms = now_ms
        self.ceiling = int(now_ms) + FUTURE_TOLERANCE_MS  # stream time never passes it
        self.journeys: dict[str, Journey] = {}
        self.partials: dict[str, Partial] = {}
        self.slots: dict[tuple[int, int, str], Partial] = {}  # the same partials by (partition, window, channel)
        self.outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)  # (kind, outcome) -> events
        # (kind, channel, campaign) -> [events, cost]; kind "i", "c", or FLOODED for a click beyond CLICK_FLOOD
        self.touches: dict[tuple[str, str, str], list[Any]] = {}
        self.spend: defaultdict[tuple[str, str], float] = defaultdict(float)  # (channel, campaign) -> amount


class JourneyStage:
    """The agent's working state: watermarks, the due queue and the partials to snapshot."""

    def __init__(self, w: Wiring) -> None:
        self.w = w
        s = w.settings
        self.lookback = Lookback(s.click_lookback_ms, s.view_lookback_ms, s.min_click_gap_ms)
        self.flood = s.click_flood
        self.retention = Retention.of(s)
        self.window_ms = s.metrics_window_ms
        self.closes_after_ms = s.metrics_window_ms + s.allowed_lateness_ms  # a window takes events until then
        self.stream_time = 0  # the highest event time seen, here or reported by any intake
        self.sources = SourceWatermarks(stale_after_s=SOURCE_STALE_S)
        grace_s = s.attribution_grace_ms / 1000
        self.grace = GraceQueue(grace_s, max(MAX_HOLD_S, 5 * grace_s), self.sources)
        self.dirty_partials: set[str] = set()
        self.customer_orders: dict[int, list[bytes]] = {}  # partition -> orders for the lifetime-value stage
        self.ledger_entries: dict[int, list[bytes]] = {}  # ledger partition -> attributed orders (refunds stage)
        self.marks_sent_at = 0.0
        self.store_down_since: float | None = None
        m = w.metrics
        self.outcome = {(k, o): m.events.labels(name, o) for k, name in TYPE_NAMES.items() for o in OUTCOMES}
        self.counts = BatchCounts()  # Prometheus counts and lags of the batch at hand, published at its end
        self.lags: list[float] = []
        self.paths: markov.PathStage | None = None  # the Markov model's paths (streams.stages.markov.register)
        self.attributing = asyncio.Lock()  # an erasure never runs between a conversion's load and its write

    # -- batches of journey events -------------------------------------------------------------
    def absorb_batch(self, batch: list[Any]) -> None:
        absorbed = AbsorbedBatch(time.time() * 1000)
        now = time.monotonic()
        for event in batch:
            partition, offset = event.message.partition, event.message.offset
            message = orjson.loads(event.message.value)
            for position, (key, row) in enumerate(message["e"]):
                self.absorb(partition, seq_of(offset, position), key, from_row(row), absorbed)
            self.sources.report(partition, message["src"], message["wm"], now, message.get("own"), message.get("n"))
            self.stream_time = max(self.stream_time, message.get("mx", 0))
            self.grace.read(partition, offset, now)
        journeys = absorbed.journeys
        for journey in journeys.values():
            journey.prune(self.retention)
        if self.paths is not None:
            self.paths.seen(journeys)
        self.w.journeys.put_rows({key: journey.to_row() for key, journey in journeys.items()})
        self.write_partials(absorbed.partials)
        self.count_batch(absorbed)

    def count_batch(self, absorbed: AbsorbedBatch) -> None:
        """The batch's Prometheus counts, one increment per label set."""
        m = self.w.metrics
        for (kind, outcome), n in absorbed.outcomes.items():
            self.counts.add(self.outcome[kind, outcome], n)
        for (kind, channel, campaign), (n, cost) in absorbed.touches.items():
            if kind == FLOODED:
                self.counts.add(m.suspect.labels(channel, "flood"), n)
            else:
                m.count(self.counts, m.clicks if kind == "c" else m.impressions, channel, campaign, n)
            m.count(self.counts, m.spend, channel, campaign, cost)
        for (channel, campaign), amount in absorbed.spend.items():
            m.count(self.counts, m.spend, channel, campaign, amount)
        self.publish_counts()

    def publish_counts(self) -> None:
        self.counts.apply()
        self.w.metrics.lag.observe_many(self.lags)
        self.lags.clear()

    def absorb(self, partition: int, seq: int, key: str, item: Any, absorbed: AbsorbedBatch) -> None:
        ts, kind = item.ts, item.kind
        if ts > self.stream_time:  # a clock far in the future must not close every window: never past the ceiling
            self.stream_time = max(self.stream_time, min(ts, absorbed.ceiling))
        window = ts - ts % self.window_ms
        if self.stream_time >= window + self.closes_after_ms:  # the window is closed: `is_closed`
            absorbed.outcomes[kind, "late"] += 1
            return
        if key[0] == "\x00" and key.startswith(ANONYMOUS_KEY_PREFIX):
            self.absorb_anonymous(partition, seq, window, item, absorbed)
            return
        journey = absorbed.journeys.get(key)
        if journey is None:
            journey = absorbed.journeys[key] = Journey.from_row(self.w.journeys.row(key))
        admission = journey.admit(item, seq, self.retention, self.flood)
        if admission is Admission.DUPLICATE:
            absorbed.outcomes[kind, "duplicate"] += 1  # this one, or the later pending order it supersedes
            if kind == "o" and journey.supersede_pending_order(item, seq, self.retention):
                self.grace.add(partition, key, seq, ts, time.monotonic())
            return
        if kind in TOUCHES:
            new = admission is Admission.NEW or admission is Admission.SUSPECT
            if new:
                absorbed.outcomes[kind, "ok"] += 1
                self.lags.append(max(0.0, absorbed.now_ms - ts) / 1000)
            suspect = admission is Admission.SUSPECT or admission is Admission.SUSPECT_REPLAY
            self.count_touch(partition, seq, window, item, absorbed, new, suspect)
        elif kind == "s":
            if admission is Admission.NEW:
                absorbed.outcomes[kind, "ok"] += 1  # spend comes late by design: no lag
            self.count_spend(partition, seq, window, item, absorbed, admission is Admission.NEW)
        elif admission is Admission.NEW:  # a conversion: counted once attributed; an order judged ok then too
            if kind != "o":
                absorbed.outcomes[kind, "ok"] += 1
            journey.add_pending(seq, item)
            self.grace.add(partition, key, seq, ts, time.monotonic())

    def absorb_anonymous(self, partition: int, seq: int, window: int, item: Touch | Lead | Order,
                         absorbed: AbsorbedBatch) -> None:
        """An event sent without consent (CONTRACT.md section 10): counted in its window's figures at once and
        stored nowhere. It joins no journey and no id of it is remembered (a repeat counts again); a lead or
        an order goes to (direct) without looking up touchpoints, is never a new customer and has no
        `attributions` message. The partial's touchpoint mark, absorbed in sequence like the touchpoints,
        keeps a replay from counting twice."""
        channel = item.channel if item.kind in TOUCHES else DIRECT
        if seq <= self.slot(absorbed, partition, window, channel).touch_seq:
            return  # absorbed before a restart
        absorbed.outcomes[item.kind, "ok"] += 1
        if item.kind in TOUCHES:
            self.lags.append(max(0.0, absorbed.now_ms - item.ts) / 1000)
            self.count_touch(partition, seq, window, item, absorbed, new=True)
            return
        partial = self.slot(absorbed, partition, window, DIRECT)
        partial.touch_seq = seq
        m = self.w.metrics
        if isinstance(item, Order):
            margin = self.w.settings.default_margin if item.margin is None else item.margin
            for index, counter, amount in ((ORDERS, m.orders, 1.0), (REVENUE, m.revenue, item.revenue),
                                           (GROSS_PROFIT, m.gross_profit, item.revenue * margin)):
                partial.add(NONE_CAMPAIGN, index, amount)
                m.count(self.counts, counter, DIRECT, NONE_CAMPAIGN, amount)
        else:
            partial.add(NONE_CAMPAIGN, LEADS, 1.0)
            m.count(self.counts, m.leads, DIRECT, NONE_CAMPAIGN)

    def count_touch(self, partition: int, seq: int, window: int, item: Touch, absorbed: AbsorbedBatch,
                    new: bool, suspect: bool = False) -> None:
        """An impression or a click; a `suspect` click (beyond CLICK_FLOOD) counts in `suspect_clicks`, not in
        `clicks`. Either way its cost is spend."""
        partial = self.slot(absorbed, partition, window, item.channel)
        if seq <= partial.touch_seq:
            return  # absorbed before a restart
        partial.touch_seq = seq
        kind = FLOODED if suspect else item.kind
        partial.add_touch(item.campaign, TOUCH_FIGURES[kind], item.cost)
        if new:
            label = (kind, item.channel, item.campaign)
            tally = absorbed.touches.get(label)
            if tally is None:
                absorbed.touches[label] = [1, item.cost]
            else:
                tally[0] += 1
                tally[1] += item.cost

    def count_spend(self, partition: int, seq: int, window: int, item: Spend, absorbed: AbsorbedBatch,
                    new: bool) -> None:
        partial = self.slot(absorbed, partition, window, item.channel)
        if seq <= partial.touch_seq:
            return  # absorbed before a restart
        partial.touch_seq = seq
        partial.add(item.campaign, SPEND, item.amount)
        if new:
            absorbed.spend[item.channel, item.campaign] += item.amount

    def slot(self, absorbed: AbsorbedBatch, partition: int, window: int, channel: str) -> Partial:
        """The batch's partial of (partition, window, channel), found by a tuple: no key text per event."""
        partial = absorbed.slots.get((partition, window, channel))
        if partial is None:
            partial = absorbed.slots[partition, window, channel] = self.partial(
                absorbed.partials, partial_key(partition, window, channel))
        return partial

    def partial(self, partials: dict[str, Partial], key: str) -> Partial:
        partial = partials.get(key)
        if partial is None:
            partial = partials[key] = Partial.from_row(self.w.partials.row(key))
        return partial

    def write_partials(self, partials: dict[str, Partial]) -> None:
        self.w.partials.put_rows({key: partial.to_row() for key, partial in partials.items()})
        self.dirty_partials.update(partials)

    # -- conversions after the grace -----------------------------------------------------------
    def requeue_pending(self, partitions: set[int]) -> None:
        """After recovery: every pending conversion of these partitions waits the grace again, and stream
        time resumes from the newest event the recovered journeys hold, so that a window closed before a
        restart stays closed after it (the same clamp as `absorb`)."""
        self.grace.keep_only(self.w.assigned(self.w.journey_events.get_topic_name()))
        found = []
        newest = 0
        for key, row in self.w.journeys.data.items():  # no await inside: nothing writes meanwhile
            partition = self.w.partition_of(key)
            if partition in partitions and row:
                last_ts, _, has_pending = row_facts(row)
                newest = max(newest, last_ts)
                if has_pending:
                    found += [(seq, partition, key, conversion[2]) for seq, conversion in Journey.from_row(row).pending]
        self.stream_time = max(self.stream_time, min(newest, int(time.time() * 1000) + FUTURE_TOLERANCE_MS))
        now = time.monotonic()
        for seq, partition, key, ts in sorted(found):
            self.grace.add(partition, key, seq, ts, now)
        for seq, partition, _, _ in sorted(found):  # conversions read again from the topic go first
            self.grace.hold(partition, seq // SEQ_PER_MESSAGE)
        if found:
            log.info("recovered %d pending conversions on partitions %s", len(found), sorted(partitions))

    def resend_partials(self, partitions: set[int]) -> None:
        """After recovery: every restored partial of these partitions goes downstream again. Snapshots are
        absolute, so a resend is harmless, and one lost to a crash before it was sent is made good."""
        for key in list(self.w.partials.data.keys()):
            if parse_partial_key(key)[0] in partitions:
                self.dirty_partials.add(key)

    async def attribute_due(self) -> None:
        if not may_write(self.w):  # the zombie fence: conversions wait, none is attributed from stale state
            return
        async with self.attributing:
            await self._attribute_due()

    async def erase(self, tracking_id: str) -> int:
        """Erasure (CONTRACT.md section 10): the visitor's journey goes, with a tombstone on the changelog.
        Not while conversions are being attributed: none is sent after its journey was erased. A conversion
        still waiting out the grace goes with the journey, before it was counted."""
        async with self.attributing:
            if self.w.journeys.row(tracking_id) is None:
                return 0
            self.w.journeys.put_rows({tracking_id: None})
            await self.w.journeys.send_changes()
            return 1

    async def _attribute_due(self) -> None:
        ready = self.grace.ready(time.monotonic(), self.w.assigned(self.w.journey_events.get_topic_name()))
        if not ready:
            await self.send_marks()
            return
        conversions, not_first = self.load_conversions(ready)
        try:
            repeats, first_orders = await self.consult_store(conversions, not_first)
        except Exception as exc:  # noqa: BLE001 - the store is down: conversions wait, nothing is lost
            self.store_unavailable(exc, conversions)
            return
        done = self.apply(conversions, repeats, first_orders)
        # The partials, attributions and customer orders must be on Kafka before the journeys forget the
        # conversions: a crash between the two changelogs would lose them (found by the kill -9 test).
        await self.w.partials.send_changes()
        if self.paths is not None:
            await self.w.markov_paths.send_changes()
        await self.send_customer_orders()
        erasure = getattr(self.w, "state", {}).get("erasure")  # streams.stages.erasure.ErasureStage: the links it keeps
        if erasure is not None:
            await erasure.send_links()
        await self.send_ledger_entries()
        await self.w.claims.written()
        await self.w.app.producer.flush()
        self.forget_pending(done)
        await self.w.journeys.send_changes()
        await self.send_marks()

    async def send_ledger_entries(self) -> None:
        """The attributed orders for the order ledger (streams.stages.refunds), on the partition of their
        order_id, as arrays; at least once (the ledger keeps an order_id's first entry)."""
        for partition in list(self.ledger_entries):
            for array in json_arrays(self.ledger_entries[partition], SNAPSHOT_MESSAGE_BYTES):
                await self.w.ledger_topic.send(value=b'{"o":' + array + b"}", partition=partition)
            del self.ledger_entries[partition]

    async def send_marks(self) -> None:
        """Tell every ledger partition up to which event time each journey partition of this worker has
        attributed its orders and sent them to the ledger: the touchpoint-and-order watermark, held below
        the oldest conversion still waiting. Only between two passes of `attribute_due`, when no attributed
        order is unsent. A partition held after recovery, or that no intake reported on yet, claims nothing."""
        now = time.monotonic()
        if now - self.marks_sent_at < MARKS_INTERVAL_S:
            return
        self.marks_sent_at = now
        marks = []
        for partition in sorted(self.w.assigned(self.w.journey_events.get_topic_name())):
            watermark = self.sources.watermark(partition, now)
            if watermark is None or partition in self.grace.held:
                continue
            waiting = self.grace.waiting.get(partition)
            if waiting:
                watermark = min(watermark, min(item[4] for item in waiting) - 1)
            marks.append([partition, watermark])
        if not marks:
            return
        value = orjson.dumps({"m": marks, "mx": self.stream_time})
        for partition in range(self.w.settings.topic_partitions):
            await self.w.ledger_topic.send(value=value, partition=partition)

    def load_conversions(
        self, ready: list[tuple[int, str, int]]
    ) -> tuple[list[tuple[int, str, int, Lead | Order]], set[str]]:
        """The due conversions still pending, and the orders that cannot be their customer's first."""
        out = []
        not_first: set[str] = set()
        for partition, key, seq in ready:
            journey = Journey.from_row(self.w.journeys.get(key))
            row = next((conversion for pseq, conversion in journey.pending if pseq == seq), None)
            if row is not None:
                conversion = from_row(row)
                out.append((partition, key, seq, conversion))
                if isinstance(conversion, Order) and journey.earlier_order_pending(conversion):
                    not_first.add(conversion.event_id)
        return out, not_first

    async def consult_store(
        self, conversions: list[tuple[int, str, int, Lead | Order]], not_first: set[str]
    ) -> tuple[set[str], dict[str, bool]]:
        """Orders whose order_id another event holds (duplicates), and which orders are a first order."""
        orders = [c for *_, c in conversions if isinstance(c, Order)]
        s = self.w.settings
        held = await self.w.claims.claim_orders([(o.order_id, o.event_id, o.ts) for o in orders], s.dedup_window_ms)
        repeats = {o.event_id for o, mine in zip(orders, held, strict=True) if not mine}
        customers = [
            (o.customer_id, o.event_id, o.ts) for o in orders
            if o.customer_id and o.event_id not in not_first and o.event_id not in repeats
        ]
        answers = await self.w.claims.first_orders(customers, s.customer_retention_ms)
        if self.store_down_since is not None:
            log.warning("store is back after %.0fs; attributing again", time.monotonic() - self.store_down_since)
            self.store_down_since = None
        return repeats, {event_id: first for (_, event_id, _), first in zip(customers, answers, strict=True)}

    def store_unavailable(self, exc: Exception, conversions: list[tuple[int, str, int, Lead | Order]]) -> None:
        if self.store_down_since is None:
            self.store_down_since = time.monotonic()
            log.error("store unavailable (%s): conversions wait until it is back", exc)
        waiting = [(partition, key, seq, conversion.ts) for partition, key, seq, conversion in conversions]
        self.grace.put_back(waiting, time.monotonic(), STORE_RETRY_S)

    def apply(
        self, conversions: list[tuple[int, str, int, Lead | Order]], repeats: set[str], first_orders: dict[str, bool]
    ) -> list[tuple[str, int]]:
        """Attribute and count the conversions; returns (key, seq) of those to forget once that is on Kafka."""
        affiliates, promo_codes = self.w.affiliates.by_id, self.w.affiliates.by_promo_code
        journeys: dict[str, Journey] = {}
        partials: dict[str, Partial] = {}
        done: list[tuple[str, int]] = []
        erasure = getattr(self.w, "state", {}).get("erasure")
        for partition, key, seq, conversion in conversions:
            journey = journeys.get(key) or journeys.setdefault(key, Journey.from_row(self.w.journeys.get(key)))
            if journey.take_pending(seq) is None:
                continue
            done.append((key, seq))
            if conversion.event_id in repeats:  # its order_id came earlier with another event (or visitor)
                self.counts.add(self.outcome["o", "duplicate"])
                continue
            if isinstance(conversion, Order):
                self.counts.add(self.outcome["o", "ok"])
            promo = promo_codes.get(conversion.promo_code) if isinstance(conversion, Order) else None
            new_customer = first_orders.get(conversion.event_id, False)
            message, credited = self.attribute(journey, conversion, promo, affiliates, new_customer)
            self.w.attributions.send_soon(key=conversion.event_id.encode(), value=orjson.dumps(message))
            if erasure is not None:
                erasure.note_conversion(key, conversion.event_id, conversion.customer_id, conversion.ts,
                                        conversion.order_id if isinstance(conversion, Order) else None)
            self.count_conversion(partition, seq, conversion, credited, new_customer, partials)
            self.count_commissions(message["commissions"])
            if isinstance(conversion, Order):
                entry = [conversion.order_id, LedgerOrder.from_attribution(message).to_row()]
                self.ledger_entries.setdefault(self.w.partition_of(conversion.order_id), []).append(
                    orjson.dumps(entry))
            if isinstance(conversion, Order) and conversion.customer_id and self.w.settings.ltv_stage:
                self.send_customer_order(partition, seq, conversion, message)
            self.lags.append(max(0.0, time.time() * 1000 - conversion.ts) / 1000)
        self.write_partials(partials)
        self.publish_counts()
        return done

    def forget_pending(self, done: list[tuple[str, int]]) -> None:
        """Drop attributed conversions from their journeys, read afresh (the agent may have written them
        meanwhile); a partition given away meanwhile is left to its new owner, which re-attributes them
        without counting them twice (the partials' sequence marks)."""
        assigned = self.w.assigned(self.w.journey_events.get_topic_name())
        journeys: dict[str, Journey] = {}
        for key, seq in done:
            if self.w.partition_of(key) in assigned:
                journey = journeys.get(key) or journeys.setdefault(key, Journey.from_row(self.w.journeys.get(key)))
                journey.take_pending(seq)
        self.w.journeys.put_rows({key: journey.to_row() for key, journey in journeys.items()})

    def attribute(
        self, journey: Journey, conversion: Lead | Order, promo: Affiliate | None,
        affiliates: dict[str, Affiliate], new_customer: bool,
    ) -> tuple[dict[str, Any], list[tuple[str, str, str | None, float]]]:
        s = self.w.settings
        touchpoints = journey.touchpoints()
        path = journey_for(touchpoints, conversion.ts, self.lookback, promo, conversion.event_id)
        if self.lookback.min_click_gap_ms:
            for click in too_close_clicks(touchpoints, conversion.ts, self.lookback):
                self.counts.add(self.w.metrics.suspect.labels(click.channel, "click_gap"))
        revenue = conversion.revenue if isinstance(conversion, Order) else 0.0
        by_model = {model: credits(model, path, conversion.ts, s.time_decay_half_life_ms) for model in MODELS}
        by_model["markov"] = markov.credits(self.w, path, conversion.ts)
        if self.paths is not None:
            self.paths.converted(conversion.tracking_id, conversion.ts, path, revenue)
        chosen = by_model[s.attribution_model]
        owed = commissions(path, revenue, affiliates) if isinstance(conversion, Order) else []
        message = {
            "conversion_id": conversion.event_id,
            "type": "order" if isinstance(conversion, Order) else "lead",
            "tracking_id": conversion.tracking_id,
            "ts": conversion.ts,
            "revenue": revenue,
            "currency": s.reporting_currency,
            "model": s.attribution_model,
            "credits": [credit_json(c, revenue) for c in chosen],
            "commissions": [{"affiliate_id": a, "role": role, "amount": amount} for a, role, amount in owed],
            "models": {model: [credit_json(c, revenue) for c in cs] for model, cs in by_model.items()},
            "customer_id": conversion.customer_id,
            "new_customer": new_customer,
        }
        if isinstance(conversion, Order):
            message["order_id"] = conversion.order_id
            message["margin"] = s.default_margin if conversion.margin is None else conversion.margin
        return message, [(c.channel, c.campaign, c.affiliate_id, c.weight) for c in chosen]

    def count_conversion(
        self, partition: int, seq: int, conversion: Lead | Order, credited: list[Any], new_customer: bool,
        partials: dict[str, Partial],
    ) -> None:
        s = self.w.settings
        m = self.w.metrics
        window = window_start(conversion.ts, s.metrics_window_ms)
        is_order = isinstance(conversion, Order)
        revenue = conversion.revenue if is_order else 0.0
        margin = (s.default_margin if conversion.margin is None else conversion.margin) if is_order else 0.0
        fresh: dict[str, bool] = {}  # partial key -> not absorbed before a restart (one check per conversion)
        for channel, campaign, _, weight in credited:
            key = partial_key(partition, window, channel)
            partial = self.partial(partials, key)
            if key not in fresh:
                fresh[key] = seq > partial.conversion_seq
                partial.conversion_seq = max(seq, partial.conversion_seq)
            if fresh[key]:
                if is_order:
                    partial.add(campaign, ORDERS, weight)
                    partial.add(campaign, REVENUE, weight * revenue)
                    partial.add(campaign, GROSS_PROFIT, weight * revenue * margin)
                    partial.add(campaign, NEW_CUSTOMERS, weight if new_customer else 0.0)
                else:
                    partial.add(campaign, LEADS, weight)
            if is_order:
                m.count(self.counts, m.orders, channel, campaign, weight)
                m.count(self.counts, m.revenue, channel, campaign, weight * revenue)
                m.count(self.counts, m.gross_profit, channel, campaign, weight * revenue * margin)
                if new_customer:
                    m.count(self.counts, m.new_customers, channel, campaign, weight)
            else:
                m.count(self.counts, m.leads, channel, campaign, weight)

    def send_customer_order(self, partition: int, seq: int, order: Order, message: dict[str, Any]) -> None:
        """Queue the order for the lifetime-value stage, on the partition of its customer (customers cross
        tracking IDs); `send_customer_orders` sends the queue."""
        record = {
            "cid": order.customer_id,
            "p": partition,
            "seq": seq,
            "event_id": order.event_id,
            "ts": order.ts,
            "revenue": order.revenue,
            "gross_profit": order.revenue * message["margin"],
            "new_customer": message["new_customer"],
            "credits": [[c["channel"], c["weight"]] for c in message["credits"]],
        }
        by_partition = self.customer_orders.setdefault(self.w.partition_of(order.customer_id), [])
        by_partition.append(orjson.dumps(record))

    async def send_customer_orders(self) -> None:
        """The queued orders as JSON arrays, a message per partition and SNAPSHOT_MESSAGE_BYTES: Faust's
        per-message cost once per array on both sides, not once per order. A partition leaves the queue
        once all its orders were handed to the producer: after a failed send they go with the next pass
        (the stage drops an order it absorbed before)."""
        for partition in list(self.customer_orders):
            for value in json_arrays(self.customer_orders[partition], SNAPSHOT_MESSAGE_BYTES):
                await self.w.customer_orders.send(value=value, partition=partition)
            del self.customer_orders[partition]

    def count_commissions(self, owed: list[dict[str, Any]]) -> None:
        for commission in owed:
            self.w.metrics.commissions.labels(commission["affiliate_id"], commission["role"]).inc(commission["amount"])

    # -- snapshots downstream and expiry ----------------------------------------------------------
    async def send_snapshots(self) -> None:
        if not may_write(self.w):  # a zombie's would be ignored (their marks), but they are not sent at all
            return
        dirty, self.dirty_partials = self.dirty_partials, set()
        await send_partial_snapshots(self.w, self.w.partials, dirty, self.stream_time)

    async def sweep(self) -> None:
        """Forget journeys with nothing inside the horizon and partials of closed windows (event time), a
        chunk at a time (SWEEP_CHUNK); a journey written meanwhile by the agent is judged again."""
        s = self.w.settings
        topic = self.w.journey_events.get_topic_name()
        stream_time = self.stream_time

        def expired(key: str, row: Any, assigned: set[int]) -> bool:
            if not row or self.w.partition_of(key) not in assigned:
                return False
            _, expires_at, has_pending = row_facts(row)
            return not has_pending and expires_at < stream_time

        assigned = self.w.assigned(topic)
        keys = [key for key, row in self.w.journeys.data.items() if expired(key, row, assigned)]  # RocksDB: streamed
        for start in range(0, len(keys), SWEEP_CHUNK):
            assigned = self.w.assigned(topic)
            chunk = keys[start : start + SWEEP_CHUNK]
            gone = [key for key in chunk if expired(key, self.w.journeys.data.get(key), assigned)]
            self.w.journeys.put_rows(dict.fromkeys(gone))
            await self.w.journeys.send_changes()
            await self.w.app.producer.flush()
        assigned = self.w.assigned(topic)
        closed = []
        for key in list(self.w.partials.data.keys()):
            partition, window, _ = parse_partial_key(key)
            if partition in assigned and is_closed(window, s.metrics_window_ms, self.stream_time,
                                                   s.allowed_lateness_ms):
                closed.append(key)
        self.w.partials.put_rows(dict.fromkeys(closed))
        await self.w.partials.send_changes()
        # The oldest conversion still accepted is in the oldest window still open.
        await self.w.claims.sweep(self.stream_time - s.allowed_lateness_ms - s.metrics_window_ms)


def credit_json(credit: Any, revenue: float) -> dict[str, Any]:
    return {
        "channel": credit.channel,
        "campaign": credit.campaign,
        "affiliate_id": credit.affiliate_id,
        "weight": credit.weight,
        "revenue": credit.weight * revenue,
    }


def register(w: Wiring) -> None:
    stage = JourneyStage(w)
    w.state["journeys"] = stage
    w.journeys.recovered_callbacks.append(stage.requeue_pending)
    w.partials.recovered_callbacks.append(stage.resend_partials)
    if getattr(w, "erasers", None) is not None:
        w.erasers.register("t", "journeys", stage.erase)
        w.erasers.register("c", "claims", w.claims.forget_customer)

    guard = SkippedRecordGuard(w.app, w.bootstrap, w.journey_events.get_topic_name(), APP_ID)

    @w.app.agent(w.journey_events, name="journeys")
    async def journeys(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                stage.absorb_batch(await guard(batch))
                await w.journeys.send_changes()  # before the batch's events are acknowledged
                await w.partials.send_changes()

    @w.app.timer(DUE_INTERVAL_S, name="attribute-due")
    async def attribute_due() -> None:
        await stage.attribute_due()

    @w.app.timer(SNAPSHOT_INTERVAL_S, name="send-partial-snapshots")
    async def send_snapshots() -> None:
        await stage.send_snapshots()

    @w.app.timer(SWEEP_INTERVAL_S, name="sweep-expired-state")
    async def sweep() -> None:
        await stage.sweep()
