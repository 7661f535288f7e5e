"""How far the touchpoint streams have been read (streams/core/watermarks.py)."""

from __future__ import annotations

from streams.core.watermarks import CAUGHT_UP, NOTHING_READ, SourceWatermarks, TouchProgress

IMP0, IMP1, CLK0 = ("impressions", 0), ("impressions", 1), ("clicks", 0)


def no_position(tp: object) -> None:
    return None


def test_an_intake_owning_no_touchpoint_partition_holds_nothing_back() -> None:
    assert TouchProgress().watermark([], lambda tp: 10, no_position) == CAUGHT_UP


def test_the_watermark_is_the_slowest_partition_s_highest_ts() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=4, max_ts=5_000)
    progress.saw(IMP1, offset=9, max_ts=2_000)
    assert progress.watermark([IMP0, IMP1], lambda tp: 100, no_position) == 2_000


def test_a_partition_read_to_its_end_no_longer_holds_the_watermark() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=4, max_ts=5_000)
    progress.saw(IMP1, offset=9, max_ts=2_000)
    ends = {IMP0: 100, IMP1: 10}
    assert progress.watermark([IMP0, IMP1], ends.__getitem__, no_position) == 5_000


def test_a_partition_not_read_yet_holds_everything_back_until_its_position_reaches_the_end() -> None:
    progress = TouchProgress()
    assert progress.watermark([CLK0], lambda tp: 7, no_position) == NOTHING_READ
    assert progress.watermark([CLK0], lambda tp: 7, lambda tp: 3) == NOTHING_READ
    assert progress.watermark([CLK0], lambda tp: 7, lambda tp: 7) == CAUGHT_UP


def test_an_unknown_end_offset_is_never_taken_for_caught_up() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=4, max_ts=5_000)
    assert progress.watermark([IMP0], lambda tp: None, no_position) == 5_000


def test_a_message_without_valid_touchpoints_still_moves_the_read_position() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=4, max_ts=5_000)
    progress.saw(IMP0, offset=5, max_ts=None)
    assert progress.max_ts[IMP0] == 5_000
    assert progress.watermark([IMP0], lambda tp: 6, no_position) == CAUGHT_UP


def test_out_of_order_ts_within_a_partition_keep_the_highest() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=1, max_ts=5_000)
    progress.saw(IMP0, offset=2, max_ts=4_000)
    assert progress.max_ts[IMP0] == 5_000


def test_partitions_given_away_in_a_rebalance_are_forgotten() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=1, max_ts=5_000)
    progress.saw(IMP1, offset=1, max_ts=1_000)
    progress.forget({IMP0})
    assert set(progress.max_ts) == {IMP0} and set(progress.next_offset) == {IMP0}


def test_the_journey_side_takes_the_lowest_watermark_of_the_live_sources() -> None:
    marks = SourceWatermarks(stale_after_s=5.0)
    marks.report(0, "worker-a", 9_000, now=100.0)
    marks.report(0, "worker-b", 4_000, now=100.0)
    marks.report(1, "worker-a", 9_000, now=100.0)
    assert marks.watermark(0, now=101.0) == 4_000
    assert marks.watermark(1, now=101.0) == 9_000


def test_a_source_not_heard_from_is_ignored_after_the_stale_time() -> None:
    marks = SourceWatermarks(stale_after_s=5.0)
    marks.report(0, "gone", 1_000, now=100.0)
    marks.report(0, "alive", 9_000, now=104.0)
    assert marks.watermark(0, now=104.0) == 1_000
    assert marks.watermark(0, now=105.5) == 9_000


def test_no_live_source_means_no_watermark() -> None:
    marks = SourceWatermarks(stale_after_s=5.0)
    assert marks.watermark(3, now=0.0) is None
    marks.report(3, "a", 1_000, now=0.0)
    assert marks.watermark(3, now=6.0) is None


def test_a_later_report_of_a_source_replaces_its_earlier_one() -> None:
    marks = SourceWatermarks(stale_after_s=5.0)
    marks.report(0, "a", 1_000, now=0.0)
    marks.report(0, "a", 3_000, now=1.0)
    assert marks.watermark(0, now=1.0) == 3_000


def test_a_partition_read_to_its_end_counts_up_to_when_its_end_was_asked_for() -> None:
    progress = TouchProgress()
    progress.saw(IMP0, offset=4, max_ts=5_000)
    progress.saw(CLK0, offset=2, max_ts=3_000)
    ends = {IMP0: 5, CLK0: 3}
    assert progress.watermark([IMP0, CLK0], ends.__getitem__, no_position, caught_up=9_000) == 9_000
    ends[CLK0] = 4  # a click produced since: the clicks partition holds the mark at what it has read
    assert progress.watermark([IMP0, CLK0], ends.__getitem__, no_position, caught_up=9_500) == 3_000


def test_a_source_without_owned_partitions_in_its_reports_keeps_the_marks_as_they_were() -> None:
    """Reports without "own" (an intake of an earlier version): which partitions it covers is unknown, so the
    partitions other reports named do not hold the watermark while it reports."""
    marks = SourceWatermarks(stale_after_s=5.0)
    marks.report(0, "new", 9_000, now=0.0, owned=["clicks/0", "clicks/1"])
    marks.report(0, "new", 9_000, now=1.0, owned=["clicks/0"])
    assert marks.watermark(0, now=1.0) == NOTHING_READ, "clicks/1 is owned by no source that reported"
    marks.report(0, "old", 8_000, now=1.0)
    assert marks.watermark(0, now=1.0) == 8_000
