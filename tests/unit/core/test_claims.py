"""Claims on customers and order ids in event time (streams/core/claims.py): who holds a key, for how long."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.core.claims import claim, expired

DAY = 86_400_000


def claims(events: list[tuple[str, int]], ttl_ms: int, refresh: bool, row: Any = None) -> tuple[list[bool], Any]:
    answers = []
    for event_id, ts in events:
        holds, row = claim(row, event_id, ts, ttl_ms, refresh)
        answers.append(holds)
    return answers, row


def test_the_first_event_holds_a_free_key_until_its_ts_plus_the_hold() -> None:
    assert claim(None, "e1", 1_000, DAY, refresh=False) == (True, ["e1", 1_000 + DAY])


def test_another_event_inside_the_hold_does_not_hold_it_and_the_holder_still_does() -> None:
    assert claims([("e1", 0), ("e2", 5), ("e1", 0)], DAY, refresh=False)[0] == [True, False, True]


def test_an_order_id_is_free_again_at_the_end_of_the_dedup_window_and_a_repeat_does_not_extend_it() -> None:
    answers, row = claims([("e1", 0), ("e2", DAY - 1), ("e3", DAY)], DAY, refresh=False)
    assert answers == [True, False, True]
    assert row == ["e3", 2 * DAY]


def test_every_order_of_a_customer_pushes_the_end_of_retention_out() -> None:
    answers, row = claims([("o1", 0), ("o2", 8 * DAY), ("o3", 17 * DAY), ("o4", 28 * DAY)], 10 * DAY, refresh=True)
    assert answers == [True, False, False, True]
    assert row == ["o4", 38 * DAY]


def test_an_older_order_judged_later_does_not_shorten_retention() -> None:
    _, row = claims([("o1", 10 * DAY), ("o0", 2 * DAY)], 10 * DAY, refresh=True)
    assert row == ["o1", 20 * DAY]


def test_expiry_is_by_event_time_so_a_backfill_keeps_its_holds() -> None:
    # a month-old order and its repeat a minute later, both judged today: still one holder
    month_ago = 1_700_000_000_000
    assert claims([("e1", month_ago), ("e2", month_ago + 60_000)], 7 * DAY, refresh=False)[0] == [True, False]


def test_a_row_is_expired_only_once_its_hold_ended_before_the_cutoff() -> None:
    assert expired(["e1", 100], 101)
    assert not expired(["e1", 100], 100)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 30)), min_size=1, max_size=30),
       st.booleans())
def test_a_replay_of_the_holder_gets_the_same_answer_as_its_first_claim(events: list[tuple[str, int]],
                                                                         refresh: bool) -> None:
    answers, row = claims(events, 10, refresh)
    holder, _ = row
    last_claim = max(i for i, (event_id, _) in enumerate(events) if event_id == holder)
    assert answers[last_claim] is True
    replay_ts = events[last_claim][1]
    if replay_ts < row[1]:
        assert claim(row, holder, replay_ts, 10, refresh)[0] is True
