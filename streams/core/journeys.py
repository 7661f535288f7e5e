"""Per-tracking-ID journey state and the decisions made on it. Pure: no Kafka, no clock.

One `Journey` holds what the engine remembers of a visitor: its touchpoints while a conversion
could still credit them, the ids of its other events while a repeat could still change a figure
(`Retention`), and conversions waiting out the grace. It travels through a Faust table as packed
bytes (`to_row` / `from_row`): no Python object per remembered id in the table.

Idempotence under at-least-once delivery: every absorbed event is remembered with the
sequence number (input offset x 1024 + position in the message) that brought it. When a
restarted worker reads the same input again, `admit` recognises its own earlier record
("replay", to be counted by any state that has not absorbed it yet) and tells it apart
from a true repeat of the event ("duplicate", counted once, never again).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter
from typing import Any

import orjson

from streams.config import ClickFlood, Settings
from streams.core.attribution import ChannelTouch, Touchpoint
from streams.core.events import Lead, Order, Spend, Touch
from streams.core.watermarks import SourceWatermarks

SEQ_PER_MESSAGE = 1024  # at most this many events in one internal message
SPEND_KEY_PREFIX = "\x00spend/"
# Spend has no visitor: its rows are spread over shards of the channel by event_id, so that no one
# key collects every spend id of a channel for the whole dedup window (a changelog value over
# Kafka's 1 MiB message limit crash-loops the worker).
SPEND_SHARDS = 64
ANONYMOUS_KEY_PREFIX = "\x00anonymous/"
# A tracking ID with more than this (a bot, a shared cookie) keeps only its latest touchpoints and
# ids: its changelog value stays far below Kafka's 1 MiB message limit.
MAX_TOUCHES = 500
MAX_SEEN_IDS = 5000
# Names can be long (a campaign up to 256 characters): past this many bytes of them the oldest touchpoints
# go too. Rows stay under ~400 KiB: names, 500 x 31 bytes of touchpoints, 5,000 x 20 of ids.
MAX_NAME_BYTES = 256 * 1024
NAMES_CHECKED = 100  # fewer names than this cannot reach it: a name is at most 256 characters, 1 KiB of UTF-8


class Admission(Enum):
    NEW = "new"  # first time: remember and count it
    REPLAY = "replay"  # this very input was absorbed before a restart: state has it already
    DUPLICATE = "duplicate"  # a repeat of an event (or order) already seen: count once as duplicate
    SUSPECT = "suspect"  # a new click beyond CLICK_FLOOD: remembered by its id only, no touchpoint
    SUSPECT_REPLAY = "suspect replay"  # such a click absorbed before a restart


def seq_of(offset: int, position: int) -> int:
    return offset * SEQ_PER_MESSAGE + position


def id_hash(text: str) -> int:
    """A stable 63-bit hash of an id: 8 bytes instead of the id itself in dedup memory."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def event_ids(event: Touch | Lead | Order | Spend) -> list[str]:
    """The ids a repeat is recognised by: the event_id, and for an order its order_id too.
    Prefixed so that an event_id can never collide with an order_id of the same text."""
    if isinstance(event, Order):
        return [f"e:{event.event_id}", f"o:{event.order_id}"]
    return [f"e:{event.event_id}"]


def seconds_up(ms: int) -> int:
    return -(-ms // 1000)


@dataclass(frozen=True)
class Retention:
    """How long, in event time after its own `ts`, a journey keeps each thing: only as long as a repeat
    of it, or a conversion crediting it, could still change a figure (README, "What the engine remembers").

    A conversion can still be accepted while its window takes events: its `ts` is at most METRICS_WINDOW +
    ALLOWED_LATENESS behind stream time. So a click is kept for CLICK_LOOKBACK past that, an impression
    for VIEW_LOOKBACK; an event_id not kept with its touchpoint (leads, orders, spend, a touchpoint
    pushed out of a hot journey) until its window closes, after which a repeat is late anyway; an
    order_id for DEDUP_WINDOW, since a reloaded thank-you page is a new event at a later ts. No id is
    recognised past DEDUP_WINDOW.
    """

    click_ms: int
    view_ms: int
    event_id_ms: int
    order_id_ms: int
    dedup_ms: int

    @classmethod
    def of(cls, s: Settings) -> Retention:
        open_ms = s.metrics_window_ms + s.allowed_lateness_ms
        return cls(
            click_ms=s.click_lookback_ms + open_ms,
            view_ms=s.view_lookback_ms + open_ms,
            event_id_ms=min(open_ms, s.dedup_window_ms),
            order_id_ms=s.dedup_window_ms,
            dedup_ms=s.dedup_window_ms,
        )

    def touch_ms(self, kind: int) -> int:
        return self.click_ms if kind == CLICK else self.view_ms


# The row is packed bytes: a header, the names its touchpoints use (each once), a fixed-size record per
# touchpoint and per remembered id, and the pending conversions as JSON (rarely any). The first byte holds
# the version (high nibble) and flags. A row whose counts, name lengths and name indexes all fit a byte
# (nearly every visitor) packs them in bytes; a larger one (a hot tracking ID) is WIDE: 16-bit fields.
ROW_VERSION = 2
HAS_PENDING, WIDE = 1, 2
ROW_PREFIX = struct.Struct("<BqI")  # version and flags, last_ts, expires (epoch s): the same in both layouts


@dataclass(frozen=True)
class RowLayout:
    header: struct.Struct  # ROW_PREFIX, then the counts of names, touchpoints and ids
    name_length: str  # struct code of each name's length in bytes
    touch: struct.Struct  # ts, seq, id hash, kind, channel, campaign, affiliate (indexes into the names)
    limit: int  # the largest count, name length or index it holds


NARROW_ROW = RowLayout(struct.Struct("<BqIBBB"), "B", struct.Struct("<qqQBBBB"), 0xFF)
WIDE_ROW = RowLayout(struct.Struct("<BqIHHH"), "H", struct.Struct("<qqQBHHH"), 0xFFFF)
ID_RECORD = struct.Struct("<QqI")  # id hash, seq, kept until (epoch s, rounded up)
NO_AFFILIATE = ""  # the name of a touchpoint's missing affiliate: an affiliate_id is never empty
IMPRESSION, CLICK = 0, 1
KIND_LETTERS = ("i", "c")
# A row written before the packed form: its ids were kept for the contract's default DEDUP_WINDOW and
# the row for the longest default horizon; the visitor's next event prunes it by the settings in force.
EARLIER_FORM_KEEP_MS = 32 * 86_400_000

Touch7 = tuple[int, int, int, int, int, int, int]
HASH = struct.Struct("<Q")
TS_SEQ = struct.Struct("<qq")
HASH_AT = 16  # where a touch record holds its id hash, in both layouts
TOUCH_ORDER = struct.Struct("<q8xQ")  # a touch record's (ts, id hash): the order touchpoints are kept in
TOUCH_KEY = itemgetter(0, 2)  # the same of an unpacked one


class Journey:
    """A visitor's state, decoded only as far as an operation needs.

    Touchpoints are kept sorted by (ts, id hash). In the common case (a narrow row, a new touchpoint no older
    than the others, nothing to prune) they stay packed as the row holds them (`_touch_blob`): a repeat is
    found by searching the packed records for its hash, a new touchpoint is appended packed, and the row is
    written back without unpacking any. Anything else unpacks them (`touches`) and works on tuples."""

    __slots__ = ("names", "ids", "pending", "last_ts", "expires_s", "_touches", "_touch_blob", "_names_section",
                 "_name_index", "_touch_ids")

    def __init__(
        self, touches: list[Touch7] | None = None, names: list[str] | None = None,
        ids: dict[int, tuple[int, int]] | None = None, pending: list[tuple[int, list[Any]]] | None = None,
        last_ts: int = 0, expires_s: int = 0,
    ) -> None:
        self.names: list[str] = names if names is not None else []
        self.ids: dict[int, tuple[int, int]] = ids if ids is not None else {}  # id hash -> (seq, kept until, s)
        self.pending: list[tuple[int, list[Any]]] = pending if pending is not None else []  # (seq, conversion row)
        self.last_ts = last_ts
        self.expires_s = expires_s  # nothing here is worth keeping after this (epoch s), pending conversions aside
        self._touches: list[Touch7] | None = sorted(touches, key=TOUCH_KEY) if touches else None
        self._touch_blob = b""  # NARROW_ROW touch records, while `_touches` is None
        self._names_section: bytes | None = None  # the names as a narrow row packs them, while unchanged
        self._name_index: dict[str, int] | None = None
        self._touch_ids: dict[int, tuple[int, int]] | None = None

    @property
    def touches(self) -> list[Touch7]:
        """RowLayout.touch's fields, sorted by (ts, id hash)."""
        if self._touches is None:
            self._touches = list(NARROW_ROW.touch.iter_unpack(self._touch_blob))
            self._touch_blob = b""
        return self._touches

    def touch_count(self) -> int:
        return len(self._touch_blob) // NARROW_ROW.touch.size if self._touches is None else len(self._touches)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Journey):
            return NotImplemented
        return (self.touches, self.names, self.ids, self.pending, self.last_ts, self.expires_s) == (
            other.touches, other.names, other.ids, other.pending, other.last_ts, other.expires_s)

    def __repr__(self) -> str:
        return (f"Journey(touches={self.touches!r}, names={self.names!r}, ids={self.ids!r}, "
                f"pending={self.pending!r}, last_ts={self.last_ts}, expires_s={self.expires_s})")

    def to_row(self) -> bytes:
        limit = NARROW_ROW.limit
        n_touches = self.touch_count()
        section, encoded = self._names_section, None
        if section is None:
            encoded = [name.encode() for name in self.names]
            wide = len(encoded) > limit or any(len(name) > limit for name in encoded)
        else:
            wide = False
        wide = wide or n_touches > limit or len(self.ids) > limit
        layout = WIDE_ROW if wide else NARROW_ROW
        if section is None or wide:
            encoded = encoded or [name.encode() for name in self.names]
            section = struct.pack(f"<{len(encoded)}{layout.name_length}", *map(len, encoded)) + b"".join(encoded)
            if not wide:
                self._names_section = section
        if self._touches is None and not wide:
            touch_records = self._touch_blob
        else:
            touch_records = b"".join([layout.touch.pack(*t) for t in self.touches])
        parts = [
            layout.header.pack(ROW_VERSION << 4 | (HAS_PENDING if self.pending else 0) | (WIDE if wide else 0),
                               self.last_ts, self.expires_s, len(self.names), n_touches, len(self.ids)),
            section,
            touch_records,
        ]
        if self.ids:
            parts += [ID_RECORD.pack(h, seq, kept) for h, (seq, kept) in self.ids.items()]
        if self.pending:
            parts.append(orjson.dumps(self.pending))
        return b"".join(parts)

    @classmethod
    def from_row(cls, row: bytes | list[Any] | None) -> Journey:
        if not row:
            return cls()
        if isinstance(row, list) or row[0] == ord("["):
            return cls.from_earlier_row(row if isinstance(row, list) else orjson.loads(row))
        if row[0] >> 4 != ROW_VERSION:
            raise ValueError(f"journey row of unknown version {row[0] >> 4}")
        wide = row[0] & WIDE
        layout = WIDE_ROW if wide else NARROW_ROW
        first, last_ts, expires_s, n_names, n_touches, n_ids = layout.header.unpack_from(row)
        start = layout.header.size
        if wide:
            lengths: Any = struct.unpack_from(f"<{n_names}H", row, start)
            offset = start + 2 * n_names
        else:
            lengths, offset = row[start : start + n_names], start + n_names  # a byte per length
        names = []
        for length in lengths:
            names.append(row[offset : offset + length].decode())
            offset += length
        end = offset + n_touches * layout.touch.size
        journey = cls.__new__(cls)
        journey.names, journey.last_ts, journey.expires_s = names, last_ts, expires_s
        journey._name_index = journey._touch_ids = None
        if n_ids:
            ids_end = end + n_ids * ID_RECORD.size
            journey.ids = {h: (seq, kept) for h, seq, kept in ID_RECORD.iter_unpack(row[end:ids_end])}
            end = ids_end
        else:
            journey.ids = {}
        journey.pending = []
        if first & HAS_PENDING:
            journey.pending = [(seq, conversion) for seq, conversion in orjson.loads(row[end:])]
        if wide:
            journey._touches = list(layout.touch.iter_unpack(row[offset : offset + n_touches * layout.touch.size]))
            journey._touch_blob, journey._names_section = b"", None
        else:
            journey._touches, journey._touch_blob = None, row[offset : offset + n_touches * layout.touch.size]
            journey._names_section = row[start:offset]
        return journey

    @classmethod
    def from_earlier_row(cls, row: list[Any]) -> Journey:
        """A JSON row of the forms before the packed one: [touches, [hash, seq, ts] per id, pending, last_ts]
        or [touches, hashes, their [seq, ts], pending, last_ts], touches [ts, kind, channel, campaign,
        affiliate_id, event_id]."""
        if len(row) == 4:
            touches, triples, pending, last_ts = row
            seen = {h: (seq, ts) for h, seq, ts in triples}
        else:
            touches, hashes, marks, pending, last_ts = row
            seen = dict(zip(hashes, map(tuple, marks), strict=True))
        journey = cls(pending=[(seq, conversion) for seq, conversion in pending], last_ts=last_ts)
        for ts, kind, channel, campaign, affiliate_id, event_id in touches:
            h = id_hash(f"e:{event_id}")
            seq = seen.pop(h, (0, ts))[0]
            journey.add_touch_record(ts, seq, h, CLICK if kind == "c" else IMPRESSION, channel, campaign, affiliate_id)
        journey.ids = {h: (seq, seconds_up(ts + EARLIER_FORM_KEEP_MS)) for h, (seq, ts) in seen.items()}
        journey.expires_s = seconds_up(last_ts + EARLIER_FORM_KEEP_MS)
        return journey

    def touchpoints(self) -> list[Touchpoint]:
        """The touchpoints to attribute; the id hash stands in for the event_id that breaks ties in ts."""
        names = self.names
        return [
            Touchpoint(ts, KIND_LETTERS[kind], names[channel], names[campaign], names[affiliate] or None, h)
            for ts, _, h, kind, channel, campaign, affiliate in self.touches
        ]

    # -- admission -----------------------------------------------------------------------------
    def judge(self, hashes: list[int], seq: int, dedup_ms: int) -> Admission:
        """Has any of these ids been seen within DEDUP_WINDOW, and by this very input (seq) or another?"""
        floor = self.last_ts - dedup_ms
        for h in hashes:
            earlier = self.ids.get(h)
            if earlier is not None:
                earlier_seq = earlier[0]
            else:
                touch = self.touch_seen(h)
                if touch is None or touch[1] < floor:
                    continue
                earlier_seq = touch[0]
            return Admission.REPLAY if earlier_seq == seq else Admission.DUPLICATE
        return Admission.NEW

    def admit(
        self, event: Touch | Lead | Order | Spend, seq: int, retention: Retention, flood: ClickFlood | None = None
    ) -> Admission:
        """Judge an event by its ids and, when it is new, remember it: a touchpoint with its id, any other
        event by its ids, each for as long as `retention` says."""
        if event.kind == "i" or event.kind == "c":
            return self.admit_touch(event, seq, retention, flood)  # type: ignore[arg-type]
        hashes = [id_hash(i) for i in event_ids(event)]
        admission = self.judge(hashes, seq, retention.dedup_ms)
        if admission is not Admission.NEW:
            return admission
        ts = event.ts
        self.remember(hashes[0], seq, ts + retention.event_id_ms)
        if isinstance(event, Order):
            self.remember(hashes[1], seq, ts + retention.order_id_ms)
        self.last_ts = max(self.last_ts, ts)
        return Admission.NEW

    def admit_touch(self, touch: Touch, seq: int, retention: Retention, flood: ClickFlood | None = None) -> Admission:
        """`admit` for an impression or a click (nearly every event): its one id, with the touchpoint. A click
        beyond `flood` (CLICK_FLOOD) is remembered by its id alone: SUSPECT, no touchpoint."""
        h = id_hash("e:" + touch.event_id)
        earlier = self.ids.get(h)
        if earlier is None:
            seen = self.touch_seen(h)
            if seen is not None and seen[1] >= self.last_ts - retention.dedup_ms:
                earlier = seen
        elif earlier[0] == seq and touch.kind == "c":
            # A click's id is kept apart from a touchpoint when it was suspect (or, rarely, when the cap of a hot
            # journey pushed its touchpoint out in the very batch that absorbed it: then it counts as suspect).
            return Admission.SUSPECT_REPLAY
        if earlier is not None:
            return Admission.REPLAY if earlier[0] == seq else Admission.DUPLICATE
        ts = touch.ts
        if flood is not None and touch.kind == "c" and self.flooded(ts, flood):
            self.remember(h, seq, ts + retention.event_id_ms)
            self.last_ts = max(self.last_ts, ts)
            return Admission.SUSPECT
        if touch.kind == "c":
            kind, until_ms = CLICK, ts + retention.click_ms
        else:
            kind, until_ms = IMPRESSION, ts + retention.view_ms
        self.add_touch_record(ts, seq, h, kind, touch.channel, touch.campaign, touch.affiliate_id)
        expires_s = -(-until_ms // 1000)  # seconds_up
        if expires_s > self.expires_s:
            self.expires_s = expires_s
        if ts > self.last_ts:
            self.last_ts = ts
        return Admission.NEW

    def flooded(self, ts: int, flood: ClickFlood) -> bool:
        """Would a click at `ts` be one beyond `flood.clicks` in some span of `flood.span_ms` that holds it?
        Counted over the clicks kept as touchpoints, in whatever order they arrived."""
        if self.touch_count() < flood.clicks:
            return False  # fewer touchpoints of any kind than the limit: nearly every visitor
        span = flood.span_ms
        records = self._touches if self._touches is not None else NARROW_ROW.touch.iter_unpack(self._touch_blob)
        times = sorted(r[0] for r in records if r[3] == CLICK and ts - span < r[0] < ts + span)
        if len(times) < flood.clicks:
            return False
        # The spans [start, start + span) that hold ts start in (ts - span, ts]; the count in one changes only where
        # a click leaves at its left edge (start = t + 1: checked at start = t) or enters at its right (t - span + 1).
        starts = {ts - span + 1, *(t for t in times if t <= ts), *(t - span + 1 for t in times if t > ts)}
        return any(bisect.bisect_left(times, start + span) - bisect.bisect_left(times, start) >= flood.clicks
                   for start in starts if ts - span < start <= ts)

    def touch_seen(self, h: int) -> tuple[int, int] | None:
        """(seq, ts) of the touchpoint with this id hash, if there is one."""
        if self._touches is not None:
            if self._touch_ids is None:
                self._touch_ids = {t[2]: (t[1], t[0]) for t in self._touches}
            return self._touch_ids.get(h)
        blob, size, needle = self._touch_blob, NARROW_ROW.touch.size, HASH.pack(h)
        at = blob.find(needle)
        while at != -1:
            if at % size == HASH_AT:
                ts, seq = TS_SEQ.unpack_from(blob, at - HASH_AT)
                return seq, ts
            at = blob.find(needle, at + 1)
        return None

    def remember(self, h: int, seq: int, until_ms: int) -> None:
        self.ids[h] = (seq, seconds_up(until_ms))
        self.keep_until(until_ms)

    def keep_until(self, until_ms: int) -> None:
        self.expires_s = max(self.expires_s, seconds_up(until_ms))

    def add_touch_record(
        self, ts: int, seq: int, h: int, kind: int, channel: str, campaign: str, affiliate_id: str | None
    ) -> None:
        index = self._name_index
        if index is None:
            index = self._name_index = {name: i for i, name in enumerate(self.names)}
        affiliate = NO_AFFILIATE if affiliate_id is None else affiliate_id
        channel_at, campaign_at, affiliate_at = index.get(channel), index.get(campaign), index.get(affiliate)
        if channel_at is None or campaign_at is None or affiliate_at is None:  # a name new to the journey
            channel_at, campaign_at, affiliate_at = self.name(channel), self.name(campaign), self.name(affiliate)
        record = (ts, seq, h, kind, channel_at, campaign_at, affiliate_at)
        blob = self._touch_blob
        if self._touches is None and len(self.names) <= NARROW_ROW.limit and (
            not blob or (ts, h) >= TOUCH_ORDER.unpack_from(blob, len(blob) - NARROW_ROW.touch.size)
        ):
            self._touch_blob = blob + NARROW_ROW.touch.pack(*record)  # the newest: the packed records stay sorted
            return
        bisect.insort(self.touches, record, key=TOUCH_KEY)
        if self._touch_ids is not None:
            self._touch_ids[h] = (seq, ts)

    def name(self, text: str) -> int:
        index = self._name_index
        if index is None:
            index = self._name_index = {name: i for i, name in enumerate(self.names)}
        found = index.get(text)
        if found is None:
            found = index[text] = len(self.names)
            self.names.append(text)
            self._names_section = None
        return found

    # -- conversions waiting out the grace -------------------------------------------------------
    def add_pending(self, seq: int, conversion: Lead | Order) -> None:
        self.pending.append((seq, list(conversion)))

    def take_pending(self, seq: int) -> list[Any] | None:
        for i, (pending_seq, row) in enumerate(self.pending):
            if pending_seq == seq:
                del self.pending[i]
                return row
        return None

    def supersede_pending_order(self, order: Order, seq: int, retention: Retention) -> bool:
        """An order whose order_id is held by a pending order with a later (ts, event_id) takes its place.

        Input partitions are not ordered with each other, so a reloaded thank-you page can reach the
        journey before the original; while both wait out the grace, the earlier one by event time is the
        order and the other the duplicate, whatever the arrival order. A repeat of an event_id never does."""
        event_hash = id_hash(f"e:{order.event_id}")
        if event_hash in self.ids:
            return False
        mine = (order.ts, order.event_id)
        for i, (_, row) in enumerate(self.pending):
            if row[0] == "o" and row[4] == order.order_id and (row[2], row[1]) > mine:
                del self.pending[i]
                self.remember(event_hash, seq, order.ts + retention.event_id_ms)
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

    # -- forgetting --------------------------------------------------------------------------------
    def prune(self, retention: Retention) -> None:
        """Forget what `retention` no longer keeps, by the journey's own event time; past the caps (a hot
        tracking ID), the oldest touchpoints (by ts) and ids (by sequence) go first. A touchpoint pushed out
        by the cap leaves its id behind until its window closes, so that a repeat of it is not counted."""
        if self.nothing_to_prune(retention):
            return
        click_cutoff = self.last_ts - retention.click_ms
        view_cutoff = self.last_ts - retention.view_ms
        touches = self.touches
        kept = [t for t in touches if t[0] >= (click_cutoff if t[3] == CLICK else view_cutoff)]
        if len(kept) > MAX_TOUCHES:
            kept = self.push_out_oldest(kept, MAX_TOUCHES, retention)
        changed = len(kept) != len(touches)
        if changed:
            self._touches = kept
            self.compact_names()
        while len(self.names) > NAMES_CHECKED and sum(len(name.encode()) for name in self.names) > MAX_NAME_BYTES:
            self._touches = self.push_out_oldest(self.touches, len(self.touches) // 2, retention)
            self.compact_names()
            changed = True
        now_s = self.last_ts // 1000
        stale = [h for h, (_, kept_s) in self.ids.items() if kept_s < now_s]
        if len(self.ids) - len(stale) > MAX_SEEN_IDS:
            by_seq = sorted((seq, h) for h, (seq, kept_s) in self.ids.items() if kept_s >= now_s)
            stale += [h for _, h in by_seq[: len(by_seq) - MAX_SEEN_IDS]]
        for h in stale:
            del self.ids[h]
        if changed or stale:
            self.expires_s = self.latest_expiry(retention)

    def nothing_to_prune(self, retention: Retention) -> bool:
        """Within every horizon and under every cap: the oldest touchpoint (they are sorted) is younger than the
        shorter lookback horizon and no id is past its time. Checked without unpacking a touchpoint."""
        n_touches = self.touch_count()
        if n_touches > MAX_TOUCHES or len(self.names) > NAMES_CHECKED or len(self.ids) > MAX_SEEN_IDS:
            return False
        if n_touches:
            oldest = TS_SEQ.unpack_from(self._touch_blob)[0] if self._touches is None else self._touches[0][0]
            if oldest < self.last_ts - min(retention.click_ms, retention.view_ms):
                return False
        return not self.ids or min(kept for _, kept in self.ids.values()) >= self.last_ts // 1000

    def push_out_oldest(self, touches: list[Touch7], keep: int, retention: Retention) -> list[Touch7]:
        """The `keep` latest touchpoints (`touches` is sorted); the ids of the others stay until their window
        closes."""
        for ts, seq, h, *_ in touches[: len(touches) - keep]:
            self.ids[h] = (seq, seconds_up(ts + retention.event_id_ms))
        return touches[len(touches) - keep :]

    def compact_names(self) -> None:
        """After touchpoints went: names no touchpoint uses any more go too."""
        old, self.names, self._name_index, self._touch_ids = self.names, [], None, None
        self._names_section = None
        self._touches = [
            (ts, seq, h, kind, self.name(old[channel]), self.name(old[campaign]), self.name(old[affiliate]))
            for ts, seq, h, kind, channel, campaign, affiliate in self.touches
        ]

    def latest_expiry(self, retention: Retention) -> int:
        touches = (seconds_up(t[0] + retention.touch_ms(t[3])) for t in self.touches)
        return max(max(touches, default=0), max((kept for _, kept in self.ids.values()), default=0))

    def is_expired(self, stream_time: int) -> bool:
        """Nothing left worth keeping at this stream time, and no pending conversion."""
        return not self.pending and self.expires_s * 1000 < stream_time


def row_facts(row: bytes | list[Any]) -> tuple[int, int, bool]:
    """(last_ts, expires at in ms, has pending conversions) of a row, read from its header: what the sweep
    and recovery need of every row without decoding any."""
    if isinstance(row, bytes) and row[:1] != b"[":
        first, last_ts, expires_s = ROW_PREFIX.unpack_from(row)
        return last_ts, expires_s * 1000, bool(first & HAS_PENDING)
    journey = Journey.from_row(row)
    return journey.last_ts, journey.expires_s * 1000, bool(journey.pending)


@functools.lru_cache(maxsize=1024)
def sequences_of(n_touches: int, touch_size: int, n_ids: int) -> struct.Struct:
    """Reads the sequence number of every touch record and id record of a row, in one call."""
    return struct.Struct(f"<{f'8xq{touch_size - 16}x' * n_touches}{f'8xq{ID_RECORD.size - 16}x' * n_ids}")


def row_mark(row: bytes | list[Any]) -> int:
    """The highest sequence number a row holds (of a touchpoint, a remembered id or a pending conversion): how far
    into the journeys topic the state it was made from reached. A row gains such records and loses them only to
    pruning, so a row with a lower mark was made from older state, but for one case: pruning a touchpoint that came
    late with an old ts can lower the mark. Recovery then keeps the row before that prune, and the prunable records
    it still holds count for nothing (their retention is judged again at the next event of the visitor)."""
    if not isinstance(row, bytes) or row[:1] == b"[":
        journey = Journey.from_row(row)
        seqs = [t[1] for t in journey.touches] + [seq for seq, _ in journey.ids.values()]
        return max(seqs + [seq for seq, _ in journey.pending], default=-1)
    layout = WIDE_ROW if row[0] & WIDE else NARROW_ROW
    first, _, _, n_names, n_touches, n_ids = layout.header.unpack_from(row)
    start = layout.header.size
    if layout is WIDE_ROW:
        offset = start + 2 * n_names + sum(struct.unpack_from(f"<{n_names}H", row, start))
    else:
        offset = start + n_names + sum(row[start : start + n_names])
    mark = max(sequences_of(n_touches, layout.touch.size, n_ids).unpack_from(row, offset), default=-1)
    if first & HAS_PENDING:
        pending_at = offset + n_touches * layout.touch.size + n_ids * ID_RECORD.size
        mark = max(mark, max(seq for seq, _ in orjson.loads(row[pending_at:])))
    return mark


new_channel_touch = functools.partial(tuple.__new__, ChannelTouch)  # ChannelTouch._make without a Python frame


@functools.lru_cache(maxsize=1024)
def times_and_channels_of(n_touches: int) -> struct.Struct:
    """Reads the ts and channel index of every touch record of a narrow row, in one call."""
    return struct.Struct(f"<{'q17xB2x' * n_touches}")


def path_touches(row: bytes | list[Any]) -> list[ChannelTouch] | list[Touchpoint]:
    """The row's touchpoints in order, each with its `ts` and `channel`: what the Markov stage needs of a journey to
    end its null paths, read from a narrow row without decoding the rest of it (the names, and a (ts, channel index)
    per touch record); other rows are decoded. (Whether a conversion waits: `row_facts`.)"""
    if not isinstance(row, bytes) or row[:1] == b"[" or row[0] & WIDE:
        return Journey.from_row(row).touchpoints()
    _, _, _, n_names, n_touches, _ = NARROW_ROW.header.unpack_from(row)
    start = NARROW_ROW.header.size
    offset = start + n_names
    names = []
    for length in row[start:offset]:
        names.append(row[offset : offset + length].decode())
        offset += length
    fields = times_and_channels_of(n_touches).unpack_from(row, offset)
    channels = map(names.__getitem__, fields[1::2])
    return list(map(new_channel_touch, zip(fields[::2], channels, strict=True)))


def journey_row_older(held: bytes | list[Any], row: bytes | list[Any]) -> bool:
    """A journey row made from older state than the one held (a lower mark, `row_mark`): a late changelog record
    of a worker that had lost the partition (a zombie's), which recovery skips. Equal marks: the later record
    stands (the same events, later in what was attributed)."""
    return row_mark(row) < row_mark(held)


def spend_key(channel: str, event_id: str) -> str:
    """The journey-topic key of a spend row: its channel's shard by event_id (see SPEND_SHARDS)."""
    return f"{SPEND_KEY_PREFIX}{channel}/{id_hash(event_id) % SPEND_SHARDS}"


def anonymous_key(event_id: str) -> str:
    """The journey-topic key of an event sent without consent: spread over shards by event_id, since it has no
    visitor (and must not land on one partition); no row is ever kept under it."""
    return f"{ANONYMOUS_KEY_PREFIX}{id_hash(event_id) % SPEND_SHARDS}"


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

    def keep_only(self, partitions: set[int]) -> None:
        """Forget the conversions of every other partition (given away in a rebalance: their new owner queues
        them from the rows it recovers, and so does this worker if one comes back)."""
        for partition in [p for p in self.waiting if p not in partitions]:
            for item in self.waiting.pop(partition):
                self.queued.discard((item[2], item[3]))
        for partition in [p for p in self.held if p not in partitions]:
            del self.held[partition]

    def hold(self, partition: int, offset: int) -> None:
        """Nothing of the partition leaves until `read` reports a message at or past `offset`."""
        self.held[partition] = max(offset, self.held.get(partition, offset))

    def read(self, partition: int, offset: int, now: float | None = None) -> None:
        """The stage has absorbed the message at `offset` of the partition (at `now`: from then on the
        reports count for the recovered conversions; those read before were made before some of them).
        Their max hold counts from then too: while the partition was being handed over nothing was read,
        and a conversion queued before the rebalance would otherwise leave at once, before the touchpoints
        that a killed worker's successor has read again are absorbed."""
        held = self.held.get(partition)
        if held is not None and offset >= held:
            del self.held[partition]
            if partition in self.waiting:
                items = sorted(self.waiting[partition], key=lambda item: item[3])
                if now is not None:
                    items = [(item[0], max(item[1], now + self.max_hold_s), *item[2:5], max(item[5], now))
                             for item in items]
                self.waiting[partition] = deque(items)

    def put_back(self, items: list[tuple[int, str, int, int]], now: float, delay_s: float) -> None:
        """Items (partition, key, seq, ts) that were ready but could not be attributed: retried first."""
        for partition, key, seq, ts in reversed(items):
            self.queued.add((key, seq))
            retry = now + delay_s
            self.waiting.setdefault(partition, deque()).appendleft((retry, retry, key, seq, ts, now))
