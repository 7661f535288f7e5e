"""Event-time windows and the two-stage sums behind the metric topics (streams/core/windows.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.kpis import Figures
from streams.core.windows import (
    CLICKS,
    FIGURE_COUNT,
    GROSS_PROFIT,
    IMPRESSIONS,
    LEADS,
    ORDERS,
    REVENUE,
    SPEND,
    SUSPECT_CLICKS,
    ChannelWindow,
    Partial,
    channel_figures,
    is_closed,
    parse_partial_key,
    partial_key,
    window_start,
)

MINUTE, DAY = 60_000, 86_400_000
W = 1763799960000  # a window start (a multiple of a minute)
SETTLE = settings(max_examples=100, deadline=None)


def figures(**values: float) -> list[float]:
    row = [0.0] * FIGURE_COUNT
    for name, value in values.items():
        row[Figures._fields.index(name)] = value
    return row


# --- windows ---


def test_the_figure_indexes_follow_the_figures_fields() -> None:
    assert len(Figures._fields) == FIGURE_COUNT
    indexes = (IMPRESSIONS, CLICKS, LEADS, ORDERS, REVENUE, SPEND, GROSS_PROFIT)
    names = ("impressions", "clicks", "leads", "orders", "revenue", "spend", "gross_profit")
    assert [Figures._fields[i] for i in indexes] == list(names)


def test_a_window_starts_at_the_multiple_of_its_length_at_or_before_ts() -> None:
    assert window_start(W, MINUTE) == W
    assert window_start(W + MINUTE - 1, MINUTE) == W
    assert window_start(W + MINUTE, MINUTE) == W + MINUTE
    assert window_start(0, MINUTE) == 0


@SETTLE
@given(ts=st.integers(0, 253402300799999), window_ms=st.integers(1, 7 * DAY))
def test_every_ts_falls_in_exactly_one_window(ts: int, window_ms: int) -> None:
    start = window_start(ts, window_ms)
    assert start % window_ms == 0 and start <= ts < start + window_ms


def test_a_window_closes_exactly_when_event_time_has_passed_its_end_by_the_allowed_lateness() -> None:
    end = W + MINUTE
    assert not is_closed(W, MINUTE, end + DAY - 1, DAY)
    assert is_closed(W, MINUTE, end + DAY, DAY)
    assert is_closed(W, MINUTE, end + 2 * DAY, DAY)


def test_with_no_allowed_lateness_a_window_closes_at_its_end() -> None:
    assert not is_closed(W, MINUTE, W + MINUTE - 1, 0)
    assert is_closed(W, MINUTE, W + MINUTE, 0)


def test_a_window_is_open_while_event_time_is_inside_it() -> None:
    assert not is_closed(W, MINUTE, W, DAY)


# --- stage one: Partial ---


def test_a_new_partial_has_absorbed_nothing() -> None:
    partial = Partial()
    assert (partial.touch_seq, partial.conversion_seq, partial.campaigns) == (-1, -1, {})


def test_partial_add_sums_into_the_campaigns_figure() -> None:
    partial = Partial()
    partial.add("brand", CLICKS, 1)
    partial.add("brand", CLICKS, 1)
    partial.add("brand", LEADS, 0.25)
    partial.add("(none)", SPEND, 3.5)
    assert partial.campaigns == {"brand": figures(clicks=2, leads=0.25), "(none)": figures(spend=3.5)}


def test_a_partial_round_trips_through_its_row_and_json() -> None:
    partial = Partial(touch_seq=5 * 1024 + 3, conversion_seq=4 * 1024)
    partial.add("brand", REVENUE, 99.5)
    assert Partial.from_row(orjson.loads(orjson.dumps(partial.to_row()))) == partial


def test_a_partial_from_no_row_is_a_new_partial() -> None:
    assert Partial.from_row(None) == Partial()
    assert Partial.from_row([]) == Partial()


def test_partials_of_different_rows_do_not_share_campaigns() -> None:
    a, b = Partial(), Partial()
    a.add("brand", CLICKS, 1)
    assert b.campaigns == {}


@pytest.mark.parametrize("channel", ["google_ads", "weird|channel|name", "", "(direct)"])
def test_a_partial_key_names_its_source_partition_window_and_channel(channel: str) -> None:
    assert parse_partial_key(partial_key(7, W, channel)) == (7, W, channel)


# --- stage two: ChannelWindow ---


def test_a_channel_window_sums_the_snapshots_of_every_source() -> None:
    window = ChannelWindow()
    window.sources["0"] = {"brand": figures(impressions=100, clicks=4, revenue=50.0)}
    window.sources["1"] = {"brand": figures(impressions=20, clicks=1, spend=7.5),
                           "(none)": figures(leads=0.5)}
    assert window.campaign_figures() == {
        "brand": Figures(impressions=120, clicks=5, revenue=50.0, spend=7.5),
        "(none)": Figures(leads=0.5),
    }


def test_overwriting_a_sources_snapshot_never_double_counts() -> None:
    window = ChannelWindow()
    window.sources["0"] = {"brand": figures(clicks=4, spend=2.0)}
    window.sources["1"] = {"brand": figures(clicks=1)}
    window.sources["0"] = {"brand": figures(clicks=6, spend=3.0)}  # the same source, a later absolute snapshot
    window.sources["0"] = {"brand": figures(clicks=6, spend=3.0)}  # and the same snapshot again (a redelivery)
    assert window.campaign_figures() == {"brand": Figures(clicks=7, spend=3.0)}


def test_a_later_snapshot_without_a_campaign_drops_that_sources_share_of_it() -> None:
    window = ChannelWindow({"0": {"brand": figures(clicks=1), "promo": figures(clicks=2)}})
    window.sources["0"] = {"brand": figures(clicks=1)}
    assert window.campaign_figures() == {"brand": Figures(clicks=1)}


def test_channel_figures_sum_the_campaigns() -> None:
    campaigns = {"brand": Figures(clicks=2, revenue=10.0), "(none)": Figures(clicks=1, spend=4.0)}
    assert channel_figures(campaigns) == Figures(clicks=3, revenue=10.0, spend=4.0)
    assert channel_figures({}) == Figures()


def test_impression_and_click_counts_come_out_as_integers() -> None:
    window = ChannelWindow({"0": {"brand": figures(impressions=2.0, clicks=1.0)}})
    counted = window.campaign_figures()["brand"]
    assert (counted.impressions, counted.clicks) == (2, 1)
    assert type(counted.impressions) is int and type(counted.clicks) is int


def test_a_channel_window_round_trips_through_its_row_and_json() -> None:
    window = ChannelWindow({"0": {"brand": figures(clicks=3, revenue=1.5)}, "3": {"(none)": figures(spend=2.0)}})
    again = ChannelWindow.from_row(orjson.loads(orjson.dumps(window.to_row())))
    assert again == window and again.campaign_figures() == window.campaign_figures()


def test_a_channel_window_from_no_row_is_empty() -> None:
    assert ChannelWindow.from_row(None).campaign_figures() == {}


snapshot = st.dictionaries(
    st.sampled_from(["brand", "(none)", "promo"]),
    st.tuples(st.integers(0, 1000), st.integers(0, 100), st.floats(0, 100), st.floats(0, 1e4)),
    max_size=3,
)


@SETTLE
@given(writes=st.lists(st.tuples(st.sampled_from(["0", "1", "2", "3"]), snapshot), max_size=20))
def test_the_sum_is_that_of_the_latest_snapshot_of_each_source_however_often_sources_send(
    writes: list[tuple[str, dict[str, tuple[int, int, float, float]]]]
) -> None:
    window = ChannelWindow()
    latest: dict[str, dict[str, tuple[int, int, float, float]]] = {}
    for source, campaigns in writes:
        window.sources[source] = {c: figures(impressions=i, clicks=k, leads=l_, revenue=r)
                                  for c, (i, k, l_, r) in campaigns.items()}
        latest[source] = campaigns
    totals = window.campaign_figures()
    expected_campaigns = {c for campaigns in latest.values() for c in campaigns}
    assert set(totals) == expected_campaigns
    for campaign in expected_campaigns:
        parts = [campaigns[campaign] for campaigns in latest.values() if campaign in campaigns]
        assert totals[campaign].impressions == sum(p[0] for p in parts)
        assert totals[campaign].clicks == sum(p[1] for p in parts)
        assert totals[campaign].leads == pytest.approx(sum(p[2] for p in parts))
        assert totals[campaign].revenue == pytest.approx(sum(p[3] for p in parts))


def test_a_partial_written_before_suspect_clicks_existed_reads_as_zero_of_them() -> None:
    earlier = [3, 4, {"brand": [10.0, 2.0, 0.0, 1.0, 0.0, 50.0, 5.0, 40.0]}]  # eight figures, as before section 9
    partial = Partial.from_row(orjson.loads(orjson.dumps(earlier)))
    partial.add("brand", SUSPECT_CLICKS, 1)
    assert partial.campaigns["brand"] == [10.0, 2.0, 0.0, 1.0, 0.0, 50.0, 5.0, 40.0, 1.0, 0.0, 0.0]


def test_suspect_clicks_sum_as_a_whole_count() -> None:
    window = ChannelWindow({"0": {"brand": [0.0] * 8 + [2.0]}, "1": {"brand": [0.0] * 8 + [3.0]}})
    assert window.campaign_figures()["brand"].suspect_clicks == 5

# --- stale snapshots: a partial's marks only grow ---


def test_a_snapshot_with_a_mark_below_the_one_held_is_older_and_ignored() -> None:
    window = ChannelWindow()
    assert window.offer("0", [10, 5], {"brand": figures(clicks=4)})
    assert window.offer("0", [12, 7], {"brand": figures(clicks=6)})  # newer: both marks grew
    assert not window.offer("0", [10, 5], {"brand": figures(clicks=4)})  # a zombie's, sent after it woke
    assert not window.offer("0", [13, 6], {"brand": figures(clicks=9)})  # ahead on touchpoints, behind on conversions
    assert window.offer("0", [12, 7], {"brand": figures(clicks=6)})  # the same again: a redelivery
    assert window.campaign_figures() == {"brand": Figures(clicks=6)} and window.marks == {"0": [12, 7]}


def test_marks_are_per_source_and_a_snapshot_without_marks_is_taken() -> None:
    window = ChannelWindow()
    window.offer("0", [50, 50], {"brand": figures(clicks=5)})
    assert window.offer("1", [1, -1], {"brand": figures(clicks=1)})  # another source's marks are its own
    assert window.offer("0", None, {"brand": figures(clicks=2)})  # the form before marks
    assert window.marks == {"1": [1, -1]}
    assert window.campaign_figures() == {"brand": Figures(clicks=3)}


def test_a_row_written_before_marks_reads_with_none_and_round_trips_with_them() -> None:
    earlier = ChannelWindow.from_row({"0": {"brand": figures(clicks=3)}})
    assert earlier.marks == {} and earlier.campaign_figures() == {"brand": Figures(clicks=3)}
    earlier.offer("0", [4, 2], {"brand": figures(clicks=4)})
    assert ChannelWindow.from_row(orjson.loads(orjson.dumps(earlier.to_row()))) == earlier


@SETTLE
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12), st.randoms())
def test_whatever_order_snapshots_arrive_in_the_newest_one_is_held_at_the_end(
    steps: list[tuple[int, int]], rng: Any
) -> None:
    history, marks = [], [0, 0]  # a partial's history: its marks grow, its clicks are a function of them
    for dt, dc in steps:
        marks = [marks[0] + dt, marks[1] + dc]
        history.append(list(marks))
    arrivals = history[:-1]
    rng.shuffle(arrivals)
    window = ChannelWindow()
    for m in [*arrivals, history[-1], *rng.sample(arrivals, len(arrivals) // 2)]:  # stale ones also after the last
        window.offer("0", m, {"brand": figures(clicks=m[0] * 10 + m[1])})
    assert window.marks["0"] == history[-1]
    assert window.campaign_figures()["brand"].clicks == history[-1][0] * 10 + history[-1][1]
