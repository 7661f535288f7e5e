"""Per-tracking-ID journey state and the decisions made on it. Pure: no Kafka, no clock.

One `Journey` holds what the engine remembers of a visitor: touchpoints inside the
longest lookback, the ids it has seen inside the dedup window (for dropping repeats) and
conversions waiting out the grace. It travels through a Faust table as a compact JSON
array (`to_row` / `from_row`).

Idempotence under at-least-once delivery: every absorbed event is remembered with the
sequence number (input offset x 1024 + position in the message) that brought it. When a
restarted worker reads the same input again, `admit` recognises its own earlier record
("replay", to be counted by any state that has not absorbed it yet) and tells it apart
from a true repeat of the event ("duplicate", counted once, never again).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from operator import itemgetter
from typing import Any

from streams.core.attribution import Touchpoint
from streams.core.events import Lead, Order, Touch
from streams.core.watermarks import SourceWatermarks

SEQ_PER_MESSAGE = 1024  # at most this many events in one internal message
SPEND_KEY_PREFIX = "\x00spend/"
# Spend has no visitor: its rows are spread over shards of the channel by event_id, so that no one
# key collects every spend id of a channel for the whole dedup window (a changelog value over
# Kafka's 1 MiB message limit crash-loops the worker).
SPEND_SHARDS = 64
# A tracking ID with more than this (a bot, a shared cookie) keeps only its latest touchpoints and
# ids: its changelog value stays far below Kafka's 1 MiB message limit.
MAX_TOUCHES = 500
MAX_SEEN_IDS = 5000


class Admission(Enum):
    NEW = "new"  # first time: remember and count it
    REPLAY = "replay"  # this very input was absorbed before a restart: state has it already
    DUPLICATE = "duplicate"  # a repeat of an event (or order) already seen: count once as duplicate


def seq_of(offset: int, position: int) -> int:
    return offset * SEQ_PER_MESSAGE + position


def id_hash(text: str) -> int:
    """A stable 63-bit hash of an id: 8 bytes instead of the id itself in dedup memory."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


@dataclass
class Journey:
    touches: list[list[Any]] = field(default_factory=list)  # [ts, kind, channel, campaign, affiliate_id, event_id]
    seen: dict[int, tuple[int, int]] = field(default_factory=dict)  # id hash -> (seq, ts)
    pending: list[tuple[int, list[Any]]] = field(default_factory=list)  # (seq, conversion row)
    last_ts: int = 0

    # The row: [touches, id hashes, their (seq, ts), pending, last_ts]. Written once per key per batch, so
    # it is built from whole lists (list() and zip() run in C), not an object per id; touchpoints stay
    # plain lists, made `Touchpoint`s only to attribute. `from_row` also reads the earlier 4-field form
    # with [hash, seq, ts] per id, so a changelog written before keeps its state.
    def to_row(self) -> list[Any]:
        pending = [[seq, row] for seq, row in self.pending] if self.pending else []
        return [self.touches, list(self.seen), list(self.seen.values()), pending, self.last_ts]

    @classmethod
    def from_row(cls, row: list[Any] | None) -> Journey:
        if not row:
            return cls()
        if len(row) == 4:
            touches, ids, pending, last_ts = row
            seen = {h: (seq, ts) for h, seq, ts in ids}
        else:
            touches, hashes, marks, pending, last_ts = row
            seen = dict(zip(hashes, map(tuple, marks), strict=True))
        return cls(list(touches), seen, [(seq, conversion) for seq, conversion in pending], last_ts)

    def touchpoints(self) -> list[Touchpoint]:
        return [Touchpoint(*t) for t in self.touches]

    def admit(self, ids: list[str], seq: int, ts: int) -> Admission:
        """Judge an event by its ids (see `event_ids`) and remember it."""
        hashes = [id_hash(i) for i in ids]
        for h in hashes:
            earlier = self.seen.get(h)
            if earlier is not None:
                return Admission.REPLAY if earlier[0] == seq else Admission.DUPLICATE
        for h in hashes:
            self.seen[h] = (seq, ts)
        self.last_ts = max(self.last_ts, ts)
        return Admission.NEW

    def add_touch(self, touch: Touch) -> None:
        kind = "c" if touch.kind == "c" else "i"
        self.touches.append([touch.ts, kind, touch.channel, touch.campaign, touch.affiliate_id, touch.event_id])

    def add_pending(self, seq: int, conversion: Lead | Order) -> None:
        self.pending.append((seq, list(conversion)))

    def take_pending(self, seq: int) -> list[Any] | None:
        for i, (pending_seq, row) in enumerate(self.pending):
            if pending_seq == seq:
                del self.pending[i]
                return row
        return None

    def supersede_pending_order(self, order: Order, seq: int) -> bool:
        """An order whose order_id is held by a pending order with a later (ts, event_id) takes its place.

        Input partitions are not ordered with each other, so a reloaded thank-you page can reach the
        journey before the original; while both wait out the grace, the earlier one by event time is the
        order and the other the duplicate, whatever the arrival order. A repeat of an event_id never does."""
        if id_hash(f"e:{order.event_id}") in self.seen:
            return False
        mine = (order.ts, order.event_id)
        for i, (_, row) in enumerate(self.pending):
            if row[0] == "o" and row[4] == order.order_id and (row[2], row[1]) > mine:
                del self.pending[i]
                self.seen[id_hash(f"e:{order.event_id}")] = (seq, order.ts)
                self.add_pending(seq, order)
                return True
        return False

    def earlier_order_pending(self, order: Order) -> bool:
        """Another order of the same customer with an earlier (ts, event_id) still waits here: that
        one, not this, is the customer's first order (input topics are not ordered with each other)."""
        if order.customer_id is None:
            return False  # no customer, no first order
        mine = (order.ts, order.event_id)
        return any(
            row[0] == "o" and row[8] == order.customer_id and (row[2], row[1]) < mine for _, row in self.pending
        )

    def prune(self, click_horizon_ms: int, view_horizon_ms: int, dedup_window_ms: int) -> None:
        """Forget clicks and impressions older than their horizons and ids older than the dedup window
        (event time); past the caps, the oldest touchpoints (by ts) and ids (by sequence) go first."""
        click_cutoff = self.last_ts - click_horizon_ms
        view_cutoff = self.last_ts - view_horizon_ms
        kept = [t for t in self.touches if t[0] >= (click_cutoff if t[1] == "c" else view_cutoff)]
        if len(kept) > MAX_TOUCHES:
            kept.sort(key=itemgetter(0))
            del kept[:-MAX_TOUCHES]
        if len(kept) != len(self.touches):
            self.touches = kept
        id_cutoff = self.last_ts - dedup_window_ms
        stale = [h for h, (_, ts) in self.seen.items() if ts < id_cutoff]
        if len(self.seen) - len(stale) > MAX_SEEN_IDS:
            by_seq = sorted((seq, h) for h, (seq, ts) in self.seen.items() if ts >= id_cutoff)
            stale += [h for _, h in by_seq[: len(by_seq) - MAX_SEEN_IDS]]
        for h in stale:
            del self.seen[h]

    def is_expired(self, watermark: int, horizon_ms: int) -> bool:
        """Nothing left worth keeping: no pending conversion and no activity within the horizon."""
        return not self.pending and self.last_ts < watermark - horizon_ms


def spend_key(channel: str, event_id: str) -> str:
    """The journey-topic key of a spend row: its channel's shard by event_id (see SPEND_SHARDS)."""
    return f"{SPEND_KEY_PREFIX}{channel}/{id_hash(event_id) % SPEND_SHARDS}"


def event_ids(event: Touch | Lead | Order) -> list[str]:
    """The ids a repeat is recognised by: the event_id, and for an order its order_id too.
    Prefixed so that an event_id can never collide with an order_id of the same text."""
    if isinstance(event, Order):
        return [f"e:{event.event_id}", f"o:{event.order_id}"]
    return [f"e:{event.event_id}"]


class GraceQueue:
    """Conversions waiting for their touchpoints, per journey partition, in arrival order.

    A conversion with event time T is ready when it has waited the grace (wall clock) and
    every intake that counts reports its touchpoint partitions read past T, in a report that
    arrived after the conversion did (see streams.core.watermarks: a report made earlier, the last one of
    a killed worker say, may predate touchpoints that a backfill produced just before the conversion).
    No conversion waits longer than `max_hold_s`, whatever the reports say: a source that is
    stuck or far behind must not hold attribution back forever. Within a partition conversions
    leave in sequence order, which the partial sums' sequence marks rely on: after recovery a
    partition is held (`hold`) until the stage has read the journeys topic past the last message
    whose conversions were recovered (`read`), so that conversions read again from the topic (their
    journey rows were lost with the crash) are queued before any leaves, then sorted in with the
    recovered ones.
    """

    def __init__(self, grace_s: float, max_hold_s: float, sources: SourceWatermarks) -> None:
        self.grace_s = grace_s
        self.max_hold_s = max_hold_s
        self.sources = sources
        # per partition: (due, hold_until, key, seq, ts, since: reports count from this time on)
        self.waiting: dict[int, deque[tuple[float, float, str, int, int, float]]] = {}
        self.queued: set[tuple[str, int]] = set()
        self.held: dict[int, int] = {}  # partition -> offset the stage must read before any conversion leaves

    def __len__(self) -> int:
        return len(self.queued)

    def add(self, partition: int, key: str, seq: int, ts: int, now: float) -> None:
        if (key, seq) in self.queued:
            return
        self.queued.add((key, seq))
        self.waiting.setdefault(partition, deque()).append(
            (now + self.grace_s, now + self.max_hold_s, key, seq, ts, now)
        )

    def ready(self, now: float, partitions: set[int]) -> list[tuple[int, str, int]]:
        out: list[tuple[int, str, int]] = []
        for partition in (partitions & self.waiting.keys()) - self.held.keys():
            queue = self.waiting[partition]
            while queue:
                due, hold_until, key, seq, ts, since = queue[0]
                if now < due or not (now >= hold_until or self.sources.passed(partition, ts, since, now)):
                    break
                queue.popleft()
                self.queued.discard((key, seq))
                out.append((partition, key, seq))
        return out

    def hold(self, partition: int, offset: int) -> None:
        """Nothing of the partition leaves until `read` reports a message at or past `offset`."""
        self.held[partition] = max(offset, self.held.get(partition, offset))

    def read(self, partition: int, offset: int, now: float | None = None) -> None:
        """The stage has absorbed the message at `offset` of the partition (at `now`: from then on the
        reports count for the recovered conversions; those read before were made before some of them)."""
        held = self.held.get(partition)
        if held is not None and offset >= held:
            del self.held[partition]
            if partition in self.waiting:
                items = sorted(self.waiting[partition], key=lambda item: item[3])
                if now is not None:
                    items = [(*item[:5], max(item[5], now)) for item in items]
                self.waiting[partition] = deque(items)

    def put_back(self, items: list[tuple[int, str, int, int]], now: float, delay_s: float) -> None:
        """Items (partition, key, seq, ts) that were ready but could not be attributed: retried first."""
        for partition, key, seq, ts in reversed(items):
            self.queued.add((key, seq))
            retry = now + delay_s
            self.waiting.setdefault(partition, deque()).appendleft((retry, retry, key, seq, ts, now))
