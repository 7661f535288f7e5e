"""How far the touchpoint streams have been read, in event time. Pure.

Touchpoints and conversions arrive on different topics, read at different speeds: in a
backlog the (few) orders are read long before the (many) impressions that precede them.
So a conversion waits until every touchpoint source has passed its ts, not only a grace.

- The intake of each worker keeps a `TouchProgress` over the impression, click, lead and order
  partitions it owns (conversions too, so that a customer's earlier order is judged first):
  the highest ts read from each, or, when it has read to the end offsets it just asked the broker
  for, the wall-clock time it asked: everything produced before then has been read. (The end
  offsets a consumer remembers from its last fetch can be older than the conversion being judged,
  and would call a partition read to its end while its touchpoints are still unread.) Its
  watermark (the minimum) travels in a heartbeat to every journey partition, and with every
  message it sends there.
- The journeys stage keeps, per journey partition, the latest watermark of each intake
  (`SourceWatermarks`) and releases a conversion once all live sources have passed its ts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

CAUGHT_UP = 2**62  # a watermark past any event time: the source has nothing unread
NOTHING_READ = -1


class TouchProgress:
    """The intake's progress on the touchpoint partitions it owns."""

    def __init__(self) -> None:
        self.max_ts: dict[Any, int] = {}
        self.next_offset: dict[Any, int] = {}

    def saw(self, tp: Any, offset: int, max_ts: int | None) -> None:
        self.next_offset[tp] = offset + 1
        if max_ts is not None:
            self.max_ts[tp] = max(max_ts, self.max_ts.get(tp, max_ts))

    def watermark(
        self,
        owned: Iterable[Any],
        highwater: Callable[[Any], int | None],
        unseen_at: Callable[[Any], int | None],
        caught_up: int = CAUGHT_UP,
    ) -> int:
        """The event time up to which every owned touchpoint partition has been read. `unseen_at(tp)`:
        where the intake stands on a partition it has not read a message from (None: unknown);
        `caught_up`: the mark of a partition read to its end (when its end offset was asked for)."""
        mark = CAUGHT_UP
        for tp in owned:
            end = highwater(tp)
            read_to = self.next_offset.get(tp)
            if read_to is None:
                read_to = unseen_at(tp)
            if end is not None and read_to is not None and read_to >= end:
                mark = min(mark, caught_up)
            else:
                mark = min(mark, self.max_ts.get(tp, NOTHING_READ))
        return mark

    def forget(self, keep: set[Any]) -> None:
        """Drop partitions this worker no longer owns (after a rebalance)."""
        for tp in [tp for tp in self.next_offset if tp not in keep]:
            self.next_offset.pop(tp, None)
            self.max_ts.pop(tp, None)


@functools.lru_cache(maxsize=64)
def every_partition(counts: tuple[tuple[str, int], ...]) -> frozenset[str]:
    """("topic", n) pairs -> {"topic/0", ..., "topic/n-1"} for each."""
    return frozenset(f"{topic}/{p}" for topic, n in counts for p in range(n))


class SourceWatermarks:
    """Per journey partition, the latest watermark each intake reported, with the input partitions it
    owned then. A source not heard from for `stale_after_s` (a worker gone) is ignored once the live
    sources own all the partitions it owned; until then its last watermark still counts: a killed
    worker's unsent touchpoints are read again by the worker that takes its partitions over, which
    can take longer than `stale_after_s` (the group's session timeout, then the rebalance; found by
    tests/integration/test_reliability.py). A source that owns nothing claims nothing.

    Every input partition a report has ever named stays known, and one that no source counting now owns
    holds the watermark at NOTHING_READ: after a rebalance its new owner may not have reported yet, and
    one killed before its first report never will (its partitions wait for the session timeout and the
    next rebalance). Without this the other sources' marks alone released conversions whose touchpoints
    were still unread there (issue #20: an intake killed just after it joined its group; the conversions
    went to `(direct)` or lost touchpoints, and with them their Markov paths). Reports also carry how many
    partitions each input topic has (`partitions`), so a worker that has just started, or has just been
    given the journey partition, knows every input partition from its first report, including those of an
    intake killed before it heard from it (CI's churn test on the cluster: leads credited to the wrong
    channel)."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.marks: dict[int, dict[str, tuple[int, float, frozenset[str] | None]]] = {}
        self.known: dict[int, frozenset[str]] = {}  # per journey partition: every input partition reported

    def report(self, partition: int, source: str, watermark: int, now: float,
               owned: Iterable[str] | None = None, partitions: Mapping[str, int] | None = None) -> None:
        """`owned`: the input partitions ("topic/partition") the watermark is about; `partitions`: every input
        topic's number of partitions, as the source's consumer knows them."""
        owns = None if owned is None else frozenset(owned)
        self.marks.setdefault(partition, {})[source] = (watermark, now, owns)
        if partitions:
            owns = (owns or frozenset()) | every_partition(tuple(sorted(partitions.items())))
        if owns and not owns <= self.known.get(partition, frozenset()):
            self.known[partition] = self.known.get(partition, frozenset()) | owns

    def counted(self, partition: int, now: float) -> list[tuple[int, float]]:
        """(watermark, reported at) of the sources that count on the partition."""
        reports = self.marks.get(partition, {}).values()
        live = [(mark, at, owned) for mark, at, owned in reports if now - at <= self.stale_after_s]
        covered = frozenset().union(*(owned for _, _, owned in live if owned))
        counted = [(mark, at) for mark, at, owned in live if owned is None or owned]
        dead = [(mark, at, owned) for mark, at, owned in reports
                if now - at > self.stale_after_s and owned and owned - covered]
        counted += [(mark, at) for mark, at, _ in dead]
        claimed = covered.union(*(owned for _, _, owned in dead))
        if counted and any(owned is None for _, _, owned in live):
            return counted  # a source of the format without "own" (older intakes): coverage is unknown
        if self.known.get(partition, frozenset()) - claimed:  # owned by no source that has reported
            counted.append((NOTHING_READ, now))
        return counted

    def watermark(self, partition: int, now: float) -> int | None:
        """The lowest watermark that counts on the partition; None when none does."""
        counted = self.counted(partition, now)
        return min(mark for mark, _ in counted) if counted else None

    def passed(self, partition: int, ts: int, since: float, now: float) -> bool:
        """Every source that counts has reported, at or after `since`, its partitions read past `ts`."""
        counted = self.counted(partition, now)
        return bool(counted) and all(mark >= ts and at >= since for mark, at in counted)
