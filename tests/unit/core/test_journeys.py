"""Per-tracking-ID journey state (streams/core/journeys.py): dedup, replay, pending conversions, pruning, expiry."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.attribution import Touchpoint
from streams.core.events import Lead, Order, Touch
from streams.core.journeys import (
    MAX_SEEN_IDS,
    MAX_TOUCHES,
    SEQ_PER_MESSAGE,
    SPEND_KEY_PREFIX,
    SPEND_SHARDS,
    Admission,
    Journey,
    event_ids,
    id_hash,
    seq_of,
    spend_key,
)

HOUR, DAY = 3_600_000, 86_400_000
T0 = 1763800000000
LOOKBACK = 30 * DAY
DEDUP = 7 * DAY


def order(event_id: str = "o1", order_id: str = "A-1", ts: int = T0, customer: str | None = "cust-1") -> Order:
    return Order("o", event_id, ts, "t1", order_id, 120.0, None, None, customer)


def click(event_id: str, ts: int) -> Touch:
    return Touch("c", event_id, ts, "t1", "google_ads", "brand", None, 0.0)


def admit(journey: Journey, event: Touch | Lead | Order, seq: int) -> Admission:
    return journey.admit(event_ids(event), seq, event.ts)


# --- admit: NEW, REPLAY, DUPLICATE ---


def test_an_event_seen_for_the_first_time_is_new() -> None:
    assert admit(Journey(), click("c1", T0), seq_of(10, 0)) is Admission.NEW


def test_the_same_input_read_again_after_a_restart_is_a_replay() -> None:
    journey = Journey()
    admit(journey, click("c1", T0), seq_of(10, 0))
    assert admit(journey, click("c1", T0), seq_of(10, 0)) is Admission.REPLAY


def test_the_same_event_id_at_another_input_position_is_a_duplicate() -> None:
    journey = Journey()
    admit(journey, click("c1", T0), seq_of(10, 0))
    assert admit(journey, click("c1", T0 + 5), seq_of(11, 0)) is Admission.DUPLICATE


def test_another_event_id_with_the_same_order_id_is_a_duplicate() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), seq_of(10, 0))
    assert admit(journey, order("o2", "A-1", ts=T0 + HOUR), seq_of(12, 3)) is Admission.DUPLICATE


def test_another_order_id_with_a_new_event_id_is_new() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), seq_of(10, 0))
    assert admit(journey, order("o2", "A-2"), seq_of(10, 1)) is Admission.NEW


def test_a_replayed_order_is_a_replay_not_a_duplicate_of_its_own_order_id() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), seq_of(10, 0))
    assert admit(journey, order("o1", "A-1"), seq_of(10, 0)) is Admission.REPLAY


def test_a_replayed_duplicate_is_still_a_duplicate() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), seq_of(10, 0))
    admit(journey, order("o2", "A-1"), seq_of(11, 0))
    assert admit(journey, order("o2", "A-1"), seq_of(11, 0)) is Admission.DUPLICATE


def test_a_duplicate_is_not_remembered_and_does_not_move_event_time() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), seq_of(10, 0))
    before = Journey.from_row(journey.to_row())
    admit(journey, order("o2", "A-1", ts=T0 + DAY), seq_of(11, 0))
    assert journey == before


def test_an_order_is_judged_by_its_event_id_and_its_order_id() -> None:
    assert event_ids(order("o1", "A-1")) == ["e:o1", "o:A-1"]
    assert event_ids(click("c1", T0)) == ["e:c1"]
    assert event_ids(Lead("l", "l1", T0, "t1", None)) == ["e:l1"]


def test_an_event_id_never_collides_with_an_order_id_of_the_same_text() -> None:
    journey = Journey()
    assert journey.admit(event_ids(click("A-1", T0)), seq=1, ts=T0) is Admission.NEW
    assert journey.admit(event_ids(order("o1", "A-1")), seq=2, ts=T0) is Admission.NEW


def test_a_sequence_is_the_input_offset_times_1024_plus_the_position_in_the_message() -> None:
    assert SEQ_PER_MESSAGE == 1024
    assert seq_of(0, 0) == 0 and seq_of(3, 5) == 3 * 1024 + 5
    assert seq_of(2, SEQ_PER_MESSAGE - 1) < seq_of(3, 0)


def test_ids_are_remembered_as_a_stable_63_bit_hash() -> None:
    # Stored state depends on these exact values: a change would forget every remembered id.
    assert id_hash("e1") == 985917958979553154
    assert id_hash("order:A-1") == 2869249106486221086
    assert 0 <= id_hash("x" * 128) < 2**63


@st.composite
def streams_of_events(draw: st.DrawFn) -> list[Touch | Order]:
    size = draw(st.integers(1, 12))
    out: list[Touch | Order] = []
    for n in range(size):
        event_id = draw(st.sampled_from(["e1", "e2", "e3", "e4", f"u{n}"]))
        ts = T0 + draw(st.integers(0, DAY))
        if draw(st.booleans()):
            out.append(order(event_id, draw(st.sampled_from(["A-1", "A-2", f"B{n}"])), ts))
        else:
            out.append(click(event_id, ts))
    return out


@settings(max_examples=200, deadline=None)
@given(events=streams_of_events(), restore=st.booleans())
def test_replaying_the_input_gives_replay_for_exactly_what_was_new_and_counts_nothing_twice(
    events: list[Touch | Order], restore: bool
) -> None:
    journey = Journey()
    remembered: set[str] = set()
    first: list[Admission] = []
    for position, event in enumerate(events):
        ids = event_ids(event)
        expected = Admission.DUPLICATE if remembered & set(ids) else Admission.NEW
        if expected is Admission.NEW:
            remembered |= set(ids)
        if restore:  # state restored from the changelog between events
            journey = Journey.from_row(orjson.loads(orjson.dumps(journey.to_row())))
        first.append(admit(journey, event, seq_of(100, position)))
        assert first[-1] is expected
    again = [admit(journey, event, seq_of(100, position)) for position, event in enumerate(events)]
    assert again == [Admission.REPLAY if a is Admission.NEW else Admission.DUPLICATE for a in first]


# --- touchpoints and pending conversions ---


def test_a_touch_becomes_a_touchpoint_of_its_kind() -> None:
    journey = Journey()
    journey.add_touch(Touch("i", "i1", T0, "t1", "facebook", "retarget", None, 0.2))
    journey.add_touch(Touch("c", "c1", T0 + 1, "t1", "affiliate", "(none)", "blog", 0.5))
    assert journey.touchpoints() == [Touchpoint(T0, "i", "facebook", "retarget", None, "i1"),
                                     Touchpoint(T0 + 1, "c", "affiliate", "(none)", "blog", "c1")]


def test_a_pending_conversion_is_taken_once_by_its_sequence() -> None:
    journey = Journey()
    journey.add_pending(seq_of(4, 0), order("o1"))
    journey.add_pending(seq_of(4, 1), Lead("l", "l1", T0, "t1", None))
    assert journey.take_pending(seq_of(4, 1)) == list(Lead("l", "l1", T0, "t1", None))
    assert journey.take_pending(seq_of(4, 1)) is None
    assert journey.take_pending(seq_of(9, 9)) is None
    assert [seq for seq, _ in journey.pending] == [seq_of(4, 0)]


def pending_order_with_its_ids(journey: Journey, event: Order, seq: int) -> None:
    assert admit(journey, event, seq) is Admission.NEW
    journey.add_pending(seq, event)


def test_an_earlier_order_arriving_after_its_reload_takes_the_pending_place() -> None:
    journey = Journey()
    reload = order("o1-reload", "A-1", ts=T0 + 1_000)
    pending_order_with_its_ids(journey, reload, seq_of(10, 0))
    original = order("o1", "A-1", ts=T0)
    assert admit(journey, original, seq_of(11, 0)) is Admission.DUPLICATE
    assert journey.supersede_pending_order(original, seq_of(11, 0))
    assert journey.pending == [(seq_of(11, 0), list(original))]
    # read again after a restart, both are what they were: neither comes back
    assert admit(journey, original, seq_of(11, 0)) is Admission.REPLAY
    assert admit(journey, reload, seq_of(10, 0)) is Admission.REPLAY


def test_a_later_repeat_of_a_pending_order_does_not_supersede_it() -> None:
    journey = Journey()
    original = order("o1", "A-1", ts=T0)
    pending_order_with_its_ids(journey, original, seq_of(10, 0))
    reload = order("o1-reload", "A-1", ts=T0 + 1_000)
    assert not journey.supersede_pending_order(reload, seq_of(11, 0))
    assert journey.pending == [(seq_of(10, 0), list(original))]


def test_orders_of_one_order_id_at_the_same_ts_keep_the_smaller_event_id() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("b", "A-1"), seq_of(10, 0))
    assert journey.supersede_pending_order(order("a", "A-1"), seq_of(11, 0))
    assert [row[1] for _, row in journey.pending] == ["a"]
    assert not journey.supersede_pending_order(order("c", "A-1"), seq_of(12, 0))


def test_a_repeated_event_id_never_supersedes_even_with_an_earlier_ts() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("o1", "A-1", ts=T0 + 1_000), seq_of(10, 0))
    assert not journey.supersede_pending_order(order("o1", "A-1", ts=T0), seq_of(11, 0))
    assert [seq for seq, _ in journey.pending] == [seq_of(10, 0)]


def test_an_order_id_no_longer_pending_is_not_superseded() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("o1-reload", "A-1", ts=T0 + 1_000), seq_of(10, 0))
    journey.take_pending(seq_of(10, 0))  # attributed already: too late to change
    assert not journey.supersede_pending_order(order("o1", "A-1", ts=T0), seq_of(11, 0))
    assert journey.pending == []


def test_an_earlier_pending_order_of_the_same_customer_is_their_first_order() -> None:
    journey = Journey()
    journey.add_pending(1, order("o1", "A-1", ts=T0 - HOUR))
    assert journey.earlier_order_pending(order("o2", "A-2", ts=T0))


def test_a_later_pending_order_of_the_same_customer_does_not_stop_this_one_being_first() -> None:
    journey = Journey()
    journey.add_pending(1, order("o2", "A-2", ts=T0 + HOUR))
    assert not journey.earlier_order_pending(order("o1", "A-1", ts=T0))


def test_orders_at_the_same_ts_are_ordered_by_event_id() -> None:
    journey = Journey()
    journey.add_pending(1, order("a", "A-1"))
    journey.add_pending(2, order("b", "A-2"))
    assert journey.earlier_order_pending(order("b", "A-2"))
    assert not journey.earlier_order_pending(order("a", "A-1"))


def test_a_pending_order_of_another_customer_or_a_pending_lead_does_not_count() -> None:
    journey = Journey()
    journey.add_pending(1, order("o1", "A-1", ts=T0 - HOUR, customer="cust-2"))
    journey.add_pending(2, Lead("l", "l1", T0 - HOUR, "t1", "cust-1"))
    assert not journey.earlier_order_pending(order("o2", "A-2", ts=T0, customer="cust-1"))


def test_an_order_without_customer_id_never_has_an_earlier_order_pending() -> None:
    journey = Journey()
    journey.add_pending(1, order("o1", "A-1", ts=T0 - HOUR, customer=None))
    assert not journey.earlier_order_pending(order("o2", "A-2", ts=T0, customer=None))


# --- state round trip ---


def full_journey() -> Journey:
    journey = Journey()
    admit(journey, click("c1", T0 - HOUR), seq_of(1, 0))
    journey.add_touch(click("c1", T0 - HOUR))
    journey.add_touch(Touch("i", "i1", T0 - 2 * HOUR, "t1", "facebook", "(none)", None, 0.0))
    admit(journey, order("o1", "A-1"), seq_of(2, 0))
    journey.add_pending(seq_of(2, 0), order("o1", "A-1"))
    return journey


def test_a_journey_round_trips_through_its_row() -> None:
    journey = full_journey()
    assert Journey.from_row(journey.to_row()) == journey


def test_a_journey_round_trips_through_its_row_as_json() -> None:
    journey = full_journey()
    again = Journey.from_row(orjson.loads(orjson.dumps(journey.to_row())))
    assert again == journey
    assert again.touchpoints() == journey.touchpoints()
    assert admit(again, order("o1", "A-1"), seq_of(2, 0)) is Admission.REPLAY


def test_a_row_of_the_earlier_form_with_a_triple_per_id_is_read_the_same() -> None:
    journey = full_journey()
    earlier = [[list(t) for t in journey.touches], [[h, seq, ts] for h, (seq, ts) in journey.seen.items()],
               [[seq, row] for seq, row in journey.pending], journey.last_ts]
    assert Journey.from_row(orjson.loads(orjson.dumps(earlier))) == journey


def test_a_row_ends_with_pending_and_last_ts_in_both_forms() -> None:
    """What the sweep and recovery read from a row without decoding it."""
    journey = full_journey()
    row = journey.to_row()
    assert (row[-2], row[-1]) == ([[seq_of(2, 0), list(order("o1", "A-1"))]], T0)


def test_a_journey_from_no_row_is_empty() -> None:
    assert Journey.from_row(None) == Journey() == Journey.from_row([])


# --- pruning and expiry, by event time ---


def test_prune_forgets_touchpoints_older_than_the_horizon_by_event_time() -> None:
    journey = Journey()
    for event_id, ts in (("old", T0 - LOOKBACK - 1), ("edge", T0 - LOOKBACK), ("new", T0)):
        admit(journey, click(event_id, ts), seq_of(ts, 0))
        journey.add_touch(click(event_id, ts))
    journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert [t.event_id for t in journey.touchpoints()] == ["edge", "new"]


def test_prune_forgets_ids_older_than_the_dedup_window_by_event_time() -> None:
    journey = Journey()
    admit(journey, click("old", T0 - DEDUP - 1), seq_of(1, 0))
    admit(journey, click("edge", T0 - DEDUP), seq_of(2, 0))
    admit(journey, click("new", T0), seq_of(3, 0))
    journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert admit(journey, click("old", T0), seq_of(4, 0)) is Admission.NEW
    assert admit(journey, click("edge", T0), seq_of(5, 0)) is Admission.DUPLICATE


def impression(event_id: str, ts: int) -> Touch:
    return Touch("i", event_id, ts, "t1", "meta_ads", "prospecting", None, 0.01)


def test_prune_forgets_impressions_at_the_view_horizon_and_clicks_at_the_click_horizon() -> None:
    journey = Journey()
    view = 1 * DAY
    for event in (impression("i-old", T0 - view - 1), impression("i-edge", T0 - view), click("c-old", T0 - view - 1)):
        admit(journey, event, seq_of(event.ts, 0))
        journey.add_touch(event)
    admit(journey, click("now", T0), seq_of(T0, 0))
    journey.prune(LOOKBACK, view, DEDUP)
    assert [t.event_id for t in journey.touchpoints()] == ["i-edge", "c-old"]


def test_a_hot_tracking_id_keeps_only_its_latest_touchpoints() -> None:
    journey = Journey()
    stamps = [T0 - i for i in range(MAX_TOUCHES + 50)]  # newest first: arrival order is not ts order
    for i, ts in enumerate(stamps):
        event = click(f"c{i}", ts)
        admit(journey, event, seq_of(i, 0))
        journey.add_touch(event)
    journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert len(journey.touches) == MAX_TOUCHES
    assert min(t.ts for t in journey.touchpoints()) == T0 - MAX_TOUCHES + 1


def test_a_hot_tracking_id_forgets_its_oldest_ids_first_and_stays_small() -> None:
    journey = Journey()
    for i in range(MAX_SEEN_IDS + 100):
        admit(journey, click(f"c{i}", T0), seq_of(i, 0))
    journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert len(journey.seen) == MAX_SEEN_IDS
    assert admit(journey, click("c0", T0), seq_of(10**6, 0)) is Admission.NEW  # forgotten: the oldest
    assert admit(journey, click(f"c{MAX_SEEN_IDS + 99}", T0), seq_of(10**6, 1)) is Admission.DUPLICATE
    assert len(orjson.dumps(journey.to_row())) < 512 * 1024  # far below Kafka's 1 MiB message limit


def test_a_full_journey_row_stays_far_below_the_kafka_message_limit() -> None:
    journey = Journey()
    for i in range(MAX_SEEN_IDS * 2):
        event = Touch("c", f"click-{i:012d}-{'x' * 40}", T0 - i, "t" * 128, "c" * 64, "k" * 128, "a" * 64, 1.5)
        admit(journey, event, seq_of(10**9 + i, 1023))
        journey.add_touch(event)
    journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert len(orjson.dumps(journey.to_row())) < 768 * 1024


def test_spend_rows_of_a_channel_spread_over_its_shards_by_event_id() -> None:
    keys = {spend_key("google_ads", f"spend-{i}") for i in range(2000)}
    assert len(keys) == SPEND_SHARDS
    assert all(k.startswith(SPEND_KEY_PREFIX + "google_ads/") for k in keys)
    assert spend_key("google_ads", "spend-7") == spend_key("google_ads", "spend-7")  # a repeat meets its original
    assert spend_key("google_ads", "spend-7") != spend_key("meta_ads", "spend-7")


def test_prune_does_nothing_while_event_time_stands_still() -> None:
    journey = Journey()
    admit(journey, click("c1", T0 - 100 * DAY), seq_of(1, 0))
    journey.add_touch(click("c1", T0 - 100 * DAY))
    before = Journey.from_row(journey.to_row())
    for _ in range(3):  # however much wall-clock time passes between prunes
        journey.prune(LOOKBACK, LOOKBACK, DEDUP)
    assert journey == before


def test_an_old_event_admitted_late_does_not_move_event_time_back() -> None:
    journey = Journey()
    admit(journey, click("new", T0), seq_of(1, 0))
    admit(journey, click("old", T0 - 40 * DAY), seq_of(2, 0))
    assert journey.last_ts == T0


def test_a_journey_expires_when_nothing_happened_within_the_horizon_and_nothing_is_pending() -> None:
    journey = Journey()
    admit(journey, click("c1", T0), seq_of(1, 0))
    assert not journey.is_expired(T0 + LOOKBACK, LOOKBACK)
    assert journey.is_expired(T0 + LOOKBACK + 1, LOOKBACK)


def test_a_journey_with_a_pending_conversion_never_expires() -> None:
    journey = Journey()
    admit(journey, order(), seq_of(1, 0))
    journey.add_pending(seq_of(1, 0), order())
    assert not journey.is_expired(T0 + 1000 * DAY, LOOKBACK)
