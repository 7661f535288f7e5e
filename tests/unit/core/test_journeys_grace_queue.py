"""The grace before attribution (streams/core/journeys.py GraceQueue): a conversion waits for its touchpoints.

Time is injected: `now` is a plain number of seconds, the touchpoint streams' progress is what the
intakes report to `SourceWatermarks`.
"""

from __future__ import annotations

from streams.core.journeys import GraceQueue
from streams.core.watermarks import CAUGHT_UP, SourceWatermarks

GRACE, MAX_HOLD, STALE = 2.0, 15.0, 30.0
T = 1763800000000  # event time of the conversions
P = 0  # a journey partition
ALL = {0, 1, 2, 3}


def queue() -> tuple[GraceQueue, SourceWatermarks]:
    sources = SourceWatermarks(stale_after_s=STALE)
    return GraceQueue(GRACE, MAX_HOLD, sources), sources


def test_a_conversion_is_not_ready_before_the_grace_even_when_its_touchpoints_are_read() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    sources.report(P, "intake-a", T + 60_000, now=100.0)
    assert grace.ready(100.0 + GRACE - 0.001, ALL) == []
    assert len(grace) == 1


def test_a_conversion_is_ready_after_the_grace_once_the_touch_streams_have_passed_its_ts() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    sources.report(P, "intake-a", T, now=101.0)  # exactly at the conversion's ts is far enough
    assert grace.ready(100.0 + GRACE, ALL) == [(P, "t1", 1)]
    assert len(grace) == 0


def test_a_conversion_is_ready_after_the_grace_when_every_intake_has_read_to_the_end() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    sources.report(P, "intake-a", CAUGHT_UP, now=101.0)  # idle touch partitions: nothing more is coming
    assert grace.ready(100.0 + GRACE, ALL) == [(P, "t1", 1)]


def test_a_conversion_is_blocked_while_the_touch_streams_are_still_behind_its_ts() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    for step in range(10):  # a backlog: touches keep arriving, all older than the conversion
        sources.report(P, "intake-a", T - 60_000 + step, now=100.0 + step)
        assert grace.ready(100.0 + GRACE + step, ALL) == []
    sources.report(P, "intake-a", T + 1, now=112.0)
    assert grace.ready(112.0, ALL) == [(P, "t1", 1)]


def test_the_slowest_live_intake_decides() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    sources.report(P, "intake-a", T + 60_000, now=101.0)
    sources.report(P, "intake-b", T - 1, now=101.0)
    assert grace.ready(103.0, ALL) == []
    sources.report(P, "intake-b", T, now=104.0)
    assert grace.ready(104.0, ALL) == [(P, "t1", 1)]


def test_an_intake_that_stopped_reporting_no_longer_holds_conversions_back() -> None:
    grace, sources = queue()
    sources.report(P, "intake-dead", T - HOUR_MS, now=90.0)
    sources.report(P, "intake-a", T, now=100.0 + STALE)
    grace.add(P, "t1", 1, T, now=100.0 + STALE)
    assert grace.ready(100.0 + STALE + GRACE, ALL) == [(P, "t1", 1)]


def test_without_any_report_a_conversion_waits_the_max_hold_and_no_longer() -> None:
    grace, _ = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    assert grace.ready(100.0 + GRACE, ALL) == []
    assert grace.ready(100.0 + MAX_HOLD - 0.001, ALL) == []
    assert grace.ready(100.0 + MAX_HOLD, ALL) == [(P, "t1", 1)]


def test_conversions_leave_a_partition_in_arrival_order() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T + 5, now=100.0)
    grace.add(P, "t2", 2, T, now=100.5)
    grace.add(P, "t3", 3, T + 1, now=101.0)
    sources.report(P, "intake-a", T + 1, now=101.0)
    # t2 and t3 are covered by the watermark, but t1 (first in) is not: nothing overtakes it.
    assert grace.ready(110.0, ALL) == []
    sources.report(P, "intake-a", T + 5, now=111.0)
    assert grace.ready(111.0, ALL) == [(P, "t1", 1), (P, "t2", 2), (P, "t3", 3)]


def test_each_partition_is_released_on_its_own() -> None:
    grace, sources = queue()
    grace.add(0, "t1", 1, T, now=100.0)
    grace.add(1, "t2", 1, T, now=100.0)
    sources.report(1, "intake-a", T, now=100.0)
    assert grace.ready(103.0, ALL) == [(1, "t2", 1)]


def test_only_assigned_partitions_are_released() -> None:
    grace, sources = queue()
    for partition in (0, 1, 2):
        grace.add(partition, f"t{partition}", 1, T, now=100.0)
        sources.report(partition, "intake-a", CAUGHT_UP, now=100.0)
    assert sorted(grace.ready(103.0, {0, 2})) == [(0, "t0", 1), (2, "t2", 1)]
    assert len(grace) == 1
    assert grace.ready(103.0, {1}) == [(1, "t1", 1)]


def test_the_same_conversion_added_twice_waits_once() -> None:
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    grace.add(P, "t1", 1, T, now=101.0)
    sources.report(P, "intake-a", CAUGHT_UP, now=101.0)
    assert len(grace) == 1
    assert grace.ready(110.0, ALL) == [(P, "t1", 1)]


def test_put_back_puts_items_at_the_front_in_their_order_and_retries_after_the_delay() -> None:
    grace, sources = queue()
    grace.add(P, "t9", 9, T, now=100.0)
    sources.report(P, "intake-a", CAUGHT_UP, now=100.0)
    grace.put_back([(P, "t1", 1, T), (P, "t2", 2, T), (1, "t3", 3, T)], now=100.0, delay_s=5.0)
    assert len(grace) == 4
    assert grace.ready(104.9, {P}) == []  # the retried items hold back the queue until their delay is over
    assert grace.ready(105.0, {P}) == [(P, "t1", 1), (P, "t2", 2), (P, "t9", 9)]


def test_a_put_back_item_is_ready_again_after_its_delay_even_without_a_report() -> None:
    grace, _ = queue()
    grace.put_back([(P, "t1", 1, T)], now=100.0, delay_s=1.0)
    assert grace.ready(100.5, ALL) == []
    assert grace.ready(101.0, ALL) == [(P, "t1", 1)]


def test_the_conversions_of_partitions_given_away_are_forgotten_and_queued_again_when_one_comes_back() -> None:
    """A rebalance took partition 1: its conversions are its new owner's, and no longer count as waiting here
    (the health page's `pending_conversions` counted them for ever). When it comes back they are queued anew
    from the recovered rows, with the time they are queued at."""
    grace, sources = queue()
    grace.add(P, "t1", 1, T, now=100.0)
    grace.add(1, "t2", 2, T, now=100.0)
    grace.hold(1, 7)
    grace.keep_only({P})
    assert len(grace) == 1 and grace.held == {}
    grace.add(1, "t2", 2, T, now=200.0)  # recovered again
    sources.report(1, "intake-a", CAUGHT_UP, now=200.0)
    sources.report(P, "intake-a", CAUGHT_UP, now=200.0)
    assert grace.ready(200.0 + GRACE - 0.001, ALL) == [(P, "t1", 1)]
    assert grace.ready(200.0 + GRACE, ALL) == [(1, "t2", 2)]


HOUR_MS = 3_600_000
