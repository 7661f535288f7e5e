"""A visitor's paths (CONTRACT.md section 8): converting at a conversion, null after PATH_TIMEOUT, a null path
turned converting by a later conversion, and each step idempotent."""

from __future__ import annotations

import tracemalloc

from streams.core.attribution import Touchpoint
from streams.core.markov import PathCounts, counts_of
from streams.core.paths import (
    MAX_PATHS,
    NO_TS,
    DueIndex,
    EndedPath,
    PathRow,
    add_contribution,
    bucket_ms,
    contribution,
    converted,
    first_bucket,
    forget_before,
    timed_out,
)

DAY = 86_400_000
TIMEOUT = DAY
SIZE = bucket_ms(30 * DAY)


def touch(ts: int, channel: str, kind: str = "c") -> Touchpoint:
    return Touchpoint(ts, kind, channel, "(none)", None, f"e{ts}")


def chain(row: PathRow) -> PathCounts:
    total = PathCounts()
    for counts in contribution(row, SIZE).values():
        total.add(counts)
    return total


def test_a_conversion_ends_a_converting_path_of_its_credited_touchpoints() -> None:
    row = converted(PathRow(), [touch(1, "a"), touch(5, "b")], 10, 50.0)
    assert row.paths == [EndedPath(10, True, 50.0, 1, 5, ("a", "b"), "b")]
    assert (row.after_ts, row.closed_ts) == (10, 10)
    assert chain(row) == counts_of([(["a", "b"], True, 50.0)])


def test_a_converting_path_remembers_the_channel_last_click_credits() -> None:
    journey = [touch(1, "a"), touch(5, "b"), touch(7, "c", "i")]  # an impression after the last click
    row = converted(PathRow(), journey, 10, 0.0)
    assert row.paths[0].last_click == "b"
    assert chain(row).last_click == {"b": 1}
    only_views = converted(PathRow(), [touch(1, "a", "i"), touch(2, "c", "i")], 10, 0.0)
    assert only_views.paths[0].last_click == "c"


def test_the_next_path_takes_only_touchpoints_after_the_previous_conversion() -> None:
    row = converted(PathRow(), [touch(1, "a")], 10, 0.0)
    row = converted(row, [touch(1, "a"), touch(12, "b"), touch(20, "c")], 30, 0.0)
    assert [p.channels for p in row.paths] == [("a",), ("b", "c")]


def test_a_conversion_with_no_touchpoint_after_the_previous_adds_no_path() -> None:
    row = converted(PathRow(), [touch(1, "a")], 10, 0.0)
    assert converted(row, [touch(1, "a")], 20, 0.0).paths == row.paths
    assert converted(PathRow(), [], 20, 0.0).paths == []


def test_a_conversion_absorbed_twice_adds_its_path_once() -> None:
    journey = [touch(1, "a"), touch(5, "b")]
    once = converted(PathRow(), journey, 10, 5.0)
    assert converted(once, journey, 10, 5.0) == once


def test_an_open_path_ends_as_null_once_event_time_passes_its_last_touchpoint_by_the_timeout() -> None:
    touches = [touch(1, "a"), touch(5, "a"), touch(9, "b")]
    assert timed_out(PathRow(), touches, 9 + TIMEOUT - 1, TIMEOUT) is None
    row = timed_out(PathRow(), touches, 9 + TIMEOUT, TIMEOUT)
    assert row is not None
    assert row.paths == [EndedPath(9 + TIMEOUT, False, 0.0, 1, 9, ("a", "a", "b"))]
    assert row.closed_ts == 9 and row.after_ts == NO_TS
    assert timed_out(row, touches, 9 + 5 * TIMEOUT, TIMEOUT) is None  # closed once


def test_touchpoints_after_a_null_path_start_the_next_one() -> None:
    row = timed_out(PathRow(), [touch(1, "a")], 1 + TIMEOUT, TIMEOUT)
    assert row is not None
    later = timed_out(row, [touch(1, "a"), touch(2 * TIMEOUT, "b")], 3 * TIMEOUT, TIMEOUT)
    assert later is not None and [p.channels for p in later.paths] == [("a",), ("b",)]


def test_a_pause_of_path_timeout_splits_the_open_path_however_late_it_is_judged() -> None:
    touches = [touch(1, "a"), touch(2, "b"), touch(2 + TIMEOUT, "c"), touch(3 + TIMEOUT, "d"),
               touch(4 + 3 * TIMEOUT, "e")]
    row = timed_out(PathRow(), touches, 4 + 3 * TIMEOUT, TIMEOUT)  # the last touchpoint has not timed out yet
    assert row is not None
    assert [(p.channels, p.end_ts) for p in row.paths] == [(("a", "b"), 2 + TIMEOUT), (("c", "d"), 3 + 2 * TIMEOUT)]
    assert row.closed_ts == 3 + TIMEOUT
    assert timed_out(row, touches, 4 + 3 * TIMEOUT, TIMEOUT) is None
    last = timed_out(row, touches, 4 + 4 * TIMEOUT, TIMEOUT)
    assert last is not None and [p.channels for p in last.paths][-1] == ("e",)


def test_a_touchpoint_read_after_its_path_ended_is_judged_with_it_again() -> None:
    row = timed_out(PathRow(), [touch(1, "a"), touch(40, "c")], 40 + TIMEOUT, TIMEOUT)
    assert row is not None and [p.channels for p in row.paths] == [("a", "c")]
    late = [touch(1, "a"), touch(20, "b"), touch(40, "c")]  # b was read only now
    again = timed_out(row, late, 40 + TIMEOUT, TIMEOUT)
    assert again is not None and [p.channels for p in again.paths] == [("a", "b", "c")]
    assert chain(again) == counts_of([(["a", "b", "c"], False, 0.0)])
    assert timed_out(again, late, 40 + 2 * TIMEOUT, TIMEOUT) is None  # judged once


def test_a_late_touchpoint_reopens_its_path_until_it_times_out_itself() -> None:
    row = timed_out(PathRow(), [touch(1, "a")], 1 + TIMEOUT, TIMEOUT)
    assert row is not None
    late = [touch(1, "a"), touch(2, "b")]
    reopened = timed_out(row, late, 1 + TIMEOUT, TIMEOUT)  # b's own timeout has not passed
    assert reopened is not None and reopened.paths == [] and chain(reopened).paths == 0
    closed = timed_out(reopened, late, 2 + TIMEOUT, TIMEOUT)
    assert closed is not None and [p.channels for p in closed.paths] == [("a", "b")]


def test_touchpoints_forgotten_by_retention_do_not_reopen_a_path() -> None:
    row = timed_out(PathRow(), [touch(1, "a"), touch(2, "b")], 2 + TIMEOUT, TIMEOUT)
    assert row is not None
    assert timed_out(row, [touch(2, "b")], 5 * TIMEOUT, TIMEOUT) is None  # a was pruned from the journey


def test_a_pause_shorter_than_path_timeout_keeps_one_path() -> None:
    row = timed_out(PathRow(), [touch(1, "a"), touch(TIMEOUT, "b")], 5 * TIMEOUT, TIMEOUT)
    assert row is not None and [p.channels for p in row.paths] == [("a", "b")]


def test_a_conversion_crediting_a_null_paths_touchpoints_turns_it_converting() -> None:
    touches = [touch(1, "a"), touch(5, "b")]
    row = timed_out(PathRow(), touches, 5 + TIMEOUT, TIMEOUT)
    assert row is not None and chain(row).null == 1
    row = converted(row, [*touches, touch(3 * DAY, "c")], 3 * DAY, 20.0)
    assert chain(row) == counts_of([(["a", "b", "c"], True, 20.0)])


def test_a_null_path_no_credited_touchpoint_was_in_stays_null() -> None:
    row = timed_out(PathRow(), [touch(1, "a", "i")], 1 + TIMEOUT, TIMEOUT)
    assert row is not None
    row = converted(row, [touch(5 * DAY, "b")], 5 * DAY, 0.0)  # the impression is out of the view lookback
    assert chain(row) == counts_of([(["a"], False, 0.0), (["b"], True, 0.0)])


def test_two_null_paths_credited_by_one_conversion_become_one_converting_path() -> None:
    row = timed_out(PathRow(), [touch(1, "a")], 1 + TIMEOUT, TIMEOUT)
    assert row is not None
    row = timed_out(row, [touch(1, "a"), touch(3 * DAY, "b")], 5 * DAY, TIMEOUT)
    assert row is not None and chain(row).null == 2
    row = converted(row, [touch(1, "a"), touch(3 * DAY, "b")], 6 * DAY, 0.0)
    assert chain(row) == counts_of([(["a", "b"], True, 0.0)])


def test_contributions_are_per_bucket_of_the_paths_end_and_forgotten_with_it() -> None:
    row = converted(PathRow(), [touch(1, "a")], 2 * DAY + 1, 0.0)
    row = converted(row, [touch(3 * DAY, "b")], 5 * DAY + 7, 0.0)
    assert sorted(contribution(row, SIZE)) == [2 * DAY, 5 * DAY]
    assert first_bucket(33 * DAY, 30 * DAY) == 3 * DAY
    assert [p.channels for p in forget_before(row, 3 * DAY, SIZE).paths] == [("b",)]


def test_sums_follow_a_row_by_its_contribution_before_and_after() -> None:
    sums: dict[int, PathCounts] = {}
    before = timed_out(PathRow(), [touch(1, "a")], 1 + TIMEOUT, TIMEOUT)
    assert before is not None
    add_contribution(sums, contribution(before, SIZE))
    after = converted(before, [touch(1, "a")], 2 * TIMEOUT, 0.0)
    add_contribution(sums, contribution(before, SIZE), -1)
    add_contribution(sums, contribution(after, SIZE))
    total = PathCounts()
    for counts in sums.values():
        total.add(counts)
    assert {k: v for k, v in total.transitions.items() if v} == counts_of([(["a"], True, 0.0)]).transitions
    assert (total.converting, total.null) == (1, 0)


def test_a_row_round_trips_and_keeps_at_most_max_paths() -> None:
    row = PathRow()
    for i in range(MAX_PATHS + 5):
        row = converted(row, [touch(10 * i + 1, "a")], 10 * i + 2, 1.0)
    assert len(row.paths) == MAX_PATHS and row.paths[-1].end_ts == 10 * (MAX_PATHS + 4) + 2
    assert PathRow.from_row(row.to_row()) == row
    assert PathRow.from_row(None) == PathRow()


def test_a_row_in_memory_costs_its_size_not_orjsons_buffer() -> None:
    row = converted(PathRow(), [touch(1, "google_ads"), touch(5, "email")], 10, 50.0)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        rows = [row.to_row() for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_row = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(rows)
    assert per_row < 4 * len(rows[0]), f"{per_row:.0f} B per row of {len(rows[0])} B"


# --- the index of journeys whose path may be open ---


def test_the_due_index_gives_each_filed_key_once_when_its_bucket_starts_by_the_cutoff() -> None:
    index = DueIndex(bucket_ms=1000)
    index.file("a", 1_500)
    index.file("b", 2_100)
    index.file("a", 9_000)  # filed already: comes out at its first ts, to be filed again by whoever takes it
    index.file("c", 1_999)
    assert index.take_due(999) == []
    assert sorted(index.take_due(1_000)) == ["a", "c"]  # the bucket [1000, 2000): up to a bucket younger
    assert "a" not in index and "b" in index and len(index) == 1
    index.file("a", 9_000)
    assert index.take_due(5_000) == ["b"]
    assert index.take_due(10**12) == ["a"] and len(index) == 0 and index.take_due(10**12) == []


def test_a_key_discarded_and_filed_again_comes_out_twice_at_most() -> None:
    index = DueIndex(bucket_ms=1000)
    index.file("a", 1_000)
    index.discard("a")
    index.file("a", 3_000)
    assert index.take_due(10**12) == ["a", "a"]


def test_the_due_index_takes_about_50_bytes_a_key() -> None:
    """At 200,000 keys (a set's table grows 4x below 50,000 entries, so fewer take more each)."""
    keys = [f"visitor-{i:09d}" for i in range(200_000)]  # the keys are the journeys table's: not counted
    tracemalloc.start()
    try:
        index = DueIndex()
        for i, key in enumerate(keys):
            index.file(key, 1_763_800_000_000 + i * 37)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size / len(keys) < 70
