"""A visitor's paths for the Markov model (CONTRACT.md section 8): which ended how, and what they add to
the chain. Pure: no Kafka, no clock.

A `PathRow` is what the engine remembers of one tracking ID's paths, beside (not inside) its journey:
- `after_ts`: the ts of its latest conversion; a converting path is the credited touchpoints later than it;
- `closed_ts`: the newest ts of a touchpoint already in an ended path (or of the latest conversion); the
  open path is the journey's touchpoints later than it;
- `paths`: the paths that ended while they can still count (MARKOV_WINDOW), converting or null.

Every figure of the chain is a function of these rows (`contribution`), so the per-partition sums can be
rebuilt from the table after a restart and never disagree with it. Each step is idempotent: a conversion
absorbed twice finds nothing later than its own ts the second time; a null path is only closed once,
since it moves `closed_ts` past its touchpoints.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from streams.core.attribution import CLICK_KINDS, ChannelTouch, Touchpoint
from streams.core.markov import PathCounts

NO_TS = -(2**53)  # before any event
BUCKETS_PER_WINDOW = 30  # MARKOV_WINDOW in event-time buckets (a day each at the default 30d)
# A visitor with more ended paths in the window than this (a bot, a shared cookie) keeps only its latest: its
# changelog value stays small. The oldest paths then stop counting early.
MAX_PATHS = 200


class EndedPath(NamedTuple):
    end_ts: int  # the conversion's ts, or the last touchpoint's ts + PATH_TIMEOUT
    converted: bool
    revenue: float
    first_ts: int  # ts of its first and last touchpoints: a conversion crediting one of them retracts a null path
    last_ts: int
    channels: tuple[str, ...]
    last_click: str = ""  # a converting path's channel that `last_click` credits ("" for a null path)


@dataclass
class PathRow:
    after_ts: int = NO_TS
    closed_ts: int = NO_TS
    paths: list[EndedPath] = field(default_factory=list)

    def to_row(self) -> bytes:
        encoded = orjson.dumps([self.after_ts, self.closed_ts,
                                [[p.end_ts, int(p.converted), p.revenue, p.first_ts, p.last_ts, p.channels,
                                  p.last_click] for p in self.paths]])
        # a copy of its exact size: the bytes orjson returns keep its whole buffer (~4 KiB, seen with tracemalloc)
        return bytes(memoryview(encoded))

    @classmethod
    def from_row(cls, row: bytes | None) -> PathRow:
        if not row:
            return cls()
        after_ts, closed_ts, paths = orjson.loads(row)
        ended = [EndedPath(end, bool(c), r, first, last, tuple(ch), *more)  # more: last_click, absent from early rows
                 for end, c, r, first, last, ch, *more in paths]
        return cls(after_ts, closed_ts, ended)

    def newest_ts(self) -> int:
        return max(self.after_ts, self.closed_ts, max((p.end_ts for p in self.paths), default=NO_TS))


def bucket_ms(markov_window_ms: int) -> int:
    return max(1, markov_window_ms // BUCKETS_PER_WINDOW)


def bucket_of(ts: int, size_ms: int) -> int:
    return ts - ts % size_ms


def first_bucket(stream_time: int, markov_window_ms: int) -> int:
    """The oldest bucket still in the window: a path counts while its bucket overlaps MARKOV_WINDOW."""
    return bucket_of(stream_time - markov_window_ms, bucket_ms(markov_window_ms))


def converted(row: PathRow, journey: Sequence[Touchpoint], conversion_ts: int, revenue: float) -> PathRow:
    """A conversion credited with `journey` (its ordered touchpoints): the credited touchpoints later than the
    previous conversion are a converting path, and a null path any of them was in stops counting as null."""
    credited = [t for t in journey if t.ts > row.after_ts]
    paths = [p for p in row.paths if p.converted or not any(p.first_ts <= t.ts <= p.last_ts for t in credited)]
    if credited:
        channels = tuple(t.channel for t in credited)
        clicks = [t for t in credited if t.kind in CLICK_KINDS] or credited
        paths.append(EndedPath(conversion_ts, True, revenue, credited[0].ts, credited[-1].ts, channels,
                               clicks[-1].channel))
    return PathRow(max(row.after_ts, conversion_ts), max(row.closed_ts, conversion_ts), paths[-MAX_PATHS:])


def timed_out(row: PathRow, touches: Sequence[Touchpoint | ChannelTouch], event_time: int,
              path_timeout_ms: int) -> PathRow | None:
    """The open path (touchpoints later than `closed_ts`, ordered) ended as null when event time has passed its
    last touchpoint by PATH_TIMEOUT; None when nothing changed. `event_time` must be one up to which the visitor's
    touchpoints have all been read (the stage passes its sources' watermark).

    Touchpoints that a pause of PATH_TIMEOUT or more separates are two paths, however late the check runs: the
    first ended when event time reached its last touchpoint + PATH_TIMEOUT, before the second began. A
    touchpoint read after its path had ended (a source that claimed more than it had delivered, before a
    crash) is found by count: the null paths since the latest conversion are then judged again, all of them."""
    after_ts = row.after_ts
    since = [t for t in touches if t.ts > after_ts] if after_ts != NO_TS else touches
    nulls = [p for p in row.paths if not p.converted and p.first_ts > after_ts]
    if nulls:
        horizon = max(p.end_ts for p in nulls)  # a touchpoint before it would be in an ended path
        in_ended = sum(1 for t in since if t.ts < horizon)
        if in_ended > sum(len(p.channels) for p in nulls):  # fewer: some were forgotten (retention), not late
            reopened = PathRow(after_ts, after_ts, [p for p in row.paths if p not in nulls])
            return end_null_paths(reopened, since, event_time, path_timeout_ms) or reopened
    return end_null_paths(row, since, event_time, path_timeout_ms)


def end_null_paths(row: PathRow, touches: Sequence[Touchpoint | ChannelTouch], event_time: int,
                   path_timeout_ms: int) -> PathRow | None:
    closed_ts = row.closed_ts
    open_path = [t for t in touches if t.ts > closed_ts] if closed_ts != NO_TS else touches
    ended: list[EndedPath] = []
    start = 0
    last = len(open_path) - 1
    for i, touch in enumerate(open_path):
        ends_at = touch.ts + path_timeout_ms
        if ends_at > event_time:
            break  # nor has any later touchpoint's path ended: they are in ts order
        if i == last or open_path[i + 1].ts >= ends_at:
            segment = open_path[start : i + 1]
            ended.append(EndedPath(ends_at, False, 0.0, segment[0].ts, touch.ts, tuple([t.channel for t in segment])))
            start = i + 1
    if not ended:
        return None
    return PathRow(row.after_ts, ended[-1].last_ts, [*row.paths, *ended][-MAX_PATHS:])


def contribution(row: PathRow, size_ms: int) -> dict[int, PathCounts]:
    """What the row's paths add to the chain, per bucket of their end."""
    out: dict[int, PathCounts] = {}
    for path in row.paths:
        counts = out.setdefault(bucket_of(path.end_ts, size_ms), PathCounts())
        counts.add_path(path.channels, path.converted, path.revenue, last_click=path.last_click or None)
    return out


def forget_before(row: PathRow, oldest_bucket: int, size_ms: int) -> PathRow:
    """The row without the paths whose bucket has left the window."""
    return PathRow(row.after_ts, row.closed_ts, [p for p in row.paths if bucket_of(p.end_ts, size_ms) >= oldest_bucket])


def add_contribution(sums: dict[int, PathCounts], part: dict[int, PathCounts], sign: int = 1) -> None:
    for bucket, counts in part.items():
        sums.setdefault(bucket, PathCounts()).add(counts, sign)


class DueIndex:
    """Keys filed by a time (a journey's newest ts) in buckets of `bucket_ms`: the keys that may have come due by a
    cutoff, for the Markov stage's null-path check. A key is filed once: `file` ignores a key already filed (its
    newer ts is read again from its row when it comes out), and whoever takes keys out files again those not due
    yet. Per key: a set entry and a list slot, 48-56 B (tracemalloc, 200,000 to 1,000,000 keys), where a heap of
    (ts, key) beside a dict of key -> ts took 131-138 B. A key discarded and filed again before its first bucket came
    out comes out twice: the check is idempotent."""

    def __init__(self, bucket_ms: int = 1000) -> None:
        self.bucket_ms = bucket_ms
        self.filed: set[str] = set()
        self.buckets: dict[int, list[str]] = {}
        self.starts: list[int] = []  # a heap of the buckets' start times

    def __contains__(self, key: object) -> bool:
        return key in self.filed

    def __len__(self) -> int:
        return len(self.filed)

    def file(self, key: str, ts: int) -> None:
        if key not in self.filed:
            self.filed.add(key)
            start = ts - ts % self.bucket_ms
            bucket = self.buckets.get(start)
            if bucket is None:
                bucket = self.buckets[start] = []
                heapq.heappush(self.starts, start)
            bucket.append(key)

    def discard(self, key: str) -> None:
        self.filed.discard(key)

    def take_due(self, cutoff: int) -> list[str]:
        """Take out the keys of every bucket that starts at or before `cutoff` (a key may be up to `bucket_ms`
        younger than it): they are no longer filed."""
        taken: list[str] = []
        starts, buckets = self.starts, self.buckets
        while starts and starts[0] <= cutoff:
            taken += buckets.pop(heapq.heappop(starts))
        self.filed.difference_update(taken)
        return taken
