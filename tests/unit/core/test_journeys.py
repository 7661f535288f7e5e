"""Per-tracking-ID journey state (streams/core/journeys.py): dedup, replay, pending conversions, pruning, expiry."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import ClickFlood, Settings
from streams.core.attribution import Touchpoint
from streams.core.events import Lead, Order, Touch
from streams.core.journeys import (
    ID_RECORD,
    MAX_SEEN_IDS,
    MAX_TOUCHES,
    NARROW_ROW,
    SEQ_PER_MESSAGE,
    SPEND_KEY_PREFIX,
    SPEND_SHARDS,
    WIDE,
    Admission,
    Journey,
    Retention,
    event_ids,
    id_hash,
    journey_row_older,
    path_touches,
    row_facts,
    row_mark,
    seq_of,
    spend_key,
)

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1763800000000
LOOKBACK = 30 * DAY
DEDUP = 7 * DAY


def order(event_id: str = "o1", order_id: str = "A-1", ts: int = T0, customer: str | None = "cust-1") -> Order:
    return Order("o", event_id, ts, "t1", order_id, 120.0, None, None, customer)


def click(event_id: str, ts: int) -> Touch:
    return Touch("c", event_id, ts, "t1", "google_ads", "brand", None, 0.0)


def impression(event_id: str, ts: int) -> Touch:
    return Touch("i", event_id, ts, "t1", "meta_ads", "prospecting", None, 0.01)


# every id kept for the dedup window, every touchpoint for the lookback: the tests below move one at a time
RETENTION = Retention(click_ms=LOOKBACK, view_ms=LOOKBACK, event_id_ms=DEDUP, order_id_ms=DEDUP, dedup_ms=DEDUP)


def admit(journey: Journey, event: Touch | Lead | Order, seq: int, retention: Retention = RETENTION) -> Admission:
    return journey.admit(event, seq, retention)


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
    assert admit(journey, click("A-1", T0), seq=1) is Admission.NEW
    assert admit(journey, order("o1", "A-1"), seq=2) is Admission.NEW


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
            journey = Journey.from_row(journey.to_row())
        first.append(admit(journey, event, seq_of(100, position)))
        assert first[-1] is expected
    again = [admit(journey, event, seq_of(100, position)) for position, event in enumerate(events)]
    assert again == [Admission.REPLAY if a is Admission.NEW else Admission.DUPLICATE for a in first]


# --- touchpoints and pending conversions ---


def test_a_new_touch_becomes_a_touchpoint_of_its_kind_its_id_hash_breaking_ties() -> None:
    journey = Journey()
    admit(journey, Touch("i", "i1", T0, "t1", "facebook", "retarget", None, 0.2), 1)
    admit(journey, Touch("c", "c1", T0 + 1, "t1", "affiliate", "(none)", "blog", 0.5), 2)
    admit(journey, Touch("c", "c1", T0 + 1, "t1", "affiliate", "(none)", "blog", 0.5), 3)  # a duplicate
    assert journey.touchpoints() == [Touchpoint(T0, "i", "facebook", "retarget", None, id_hash("e:i1")),
                                     Touchpoint(T0 + 1, "c", "affiliate", "(none)", "blog", id_hash("e:c1"))]


def test_a_conversion_or_spend_is_remembered_by_its_ids_not_as_a_touchpoint() -> None:
    journey = Journey()
    admit(journey, order("o1", "A-1"), 1)
    admit(journey, Lead("l", "l1", T0, "t1", None), 2)
    assert journey.touches == [] and len(journey.ids) == 3


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
    assert journey.supersede_pending_order(original, seq_of(11, 0), RETENTION)
    assert journey.pending == [(seq_of(11, 0), list(original))]
    # read again after a restart, both are what they were: neither comes back
    assert admit(journey, original, seq_of(11, 0)) is Admission.REPLAY
    assert admit(journey, reload, seq_of(10, 0)) is Admission.REPLAY


def test_a_later_repeat_of_a_pending_order_does_not_supersede_it() -> None:
    journey = Journey()
    original = order("o1", "A-1", ts=T0)
    pending_order_with_its_ids(journey, original, seq_of(10, 0))
    reload = order("o1-reload", "A-1", ts=T0 + 1_000)
    assert not journey.supersede_pending_order(reload, seq_of(11, 0), RETENTION)
    assert journey.pending == [(seq_of(10, 0), list(original))]


def test_orders_of_one_order_id_at_the_same_ts_keep_the_smaller_event_id() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("b", "A-1"), seq_of(10, 0))
    assert journey.supersede_pending_order(order("a", "A-1"), seq_of(11, 0), RETENTION)
    assert [row[1] for _, row in journey.pending] == ["a"]
    assert not journey.supersede_pending_order(order("c", "A-1"), seq_of(12, 0), RETENTION)


def test_a_repeated_event_id_never_supersedes_even_with_an_earlier_ts() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("o1", "A-1", ts=T0 + 1_000), seq_of(10, 0))
    assert not journey.supersede_pending_order(order("o1", "A-1", ts=T0), seq_of(11, 0), RETENTION)
    assert [seq for seq, _ in journey.pending] == [seq_of(10, 0)]


def test_an_order_id_no_longer_pending_is_not_superseded() -> None:
    journey = Journey()
    pending_order_with_its_ids(journey, order("o1-reload", "A-1", ts=T0 + 1_000), seq_of(10, 0))
    journey.take_pending(seq_of(10, 0))  # attributed already: too late to change
    assert not journey.supersede_pending_order(order("o1", "A-1", ts=T0), seq_of(11, 0), RETENTION)
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
    admit(journey, Touch("i", "i1", T0 - 2 * HOUR, "t1", "facebook", "(none)", "blog", 0.0), seq_of(1, 1))
    admit(journey, order("o1", "A-1"), seq_of(2, 0))
    journey.add_pending(seq_of(2, 0), order("o1", "A-1"))
    return journey


def test_a_journey_round_trips_through_its_packed_row() -> None:
    journey = full_journey()
    row = journey.to_row()
    assert isinstance(row, bytes)
    again = Journey.from_row(row)
    assert again == journey
    assert again.touchpoints() == journey.touchpoints()
    assert admit(again, order("o1", "A-1"), seq_of(2, 0)) is Admission.REPLAY
    assert admit(again, click("c1", T0 - HOUR), seq_of(1, 0)) is Admission.REPLAY
    assert admit(again, click("c1", T0 - HOUR), seq_of(3, 0)) is Admission.DUPLICATE


def test_a_row_holds_each_name_once_and_a_fixed_record_per_touchpoint_and_per_id() -> None:
    journey = Journey()
    admit(journey, click("c1", T0), 1)
    one_click = len(journey.to_row())
    names = ("google_ads", "brand", "")  # "": no affiliate
    assert one_click == NARROW_ROW.header.size + len(names) + sum(map(len, names)) + NARROW_ROW.touch.size
    admit(journey, click("c2", T0 + 1), 2)  # same channel and campaign: no new name
    admit(journey, Lead("l", "l1", T0 + 2, "t1", None), 3)
    assert len(journey.to_row()) == one_click + NARROW_ROW.touch.size + ID_RECORD.size


def test_a_row_too_large_for_byte_fields_is_wide_and_round_trips() -> None:
    long_name = Journey()
    admit(long_name, Touch("c", "c1", T0, "t1", "google_ads", "ü" * 200, "aff", 0.0), 1)  # 400 bytes of UTF-8
    many_touches = Journey()
    for i in range(300):
        admit(many_touches, click(f"c{i}", T0 + i), i)
    many_ids = Journey()
    for i in range(300):
        admit(many_ids, Lead("l", f"l{i}", T0, "t1", None), i)
    for journey in (long_name, many_touches, many_ids):
        row = journey.to_row()
        assert row[0] & WIDE
        assert Journey.from_row(row) == journey
    assert long_name.touchpoints()[0].campaign == "ü" * 200
    assert not full_journey().to_row()[0] & WIDE


def test_a_row_of_the_earlier_json_forms_is_read_with_its_touchpoints_ids_and_pending() -> None:
    touches = [[T0 - HOUR, "c", "google_ads", "brand", None, "c1"],
               [T0 - 2 * HOUR, "i", "facebook", "(none)", "blog", "i1"]]
    seen = {id_hash("e:c1"): (seq_of(1, 0), T0 - HOUR), id_hash("e:i1"): (seq_of(1, 1), T0 - 2 * HOUR),
            id_hash("e:o1"): (seq_of(2, 0), T0), id_hash("o:A-1"): (seq_of(2, 0), T0)}
    pending = [[seq_of(2, 0), list(order("o1", "A-1"))]]
    triples = [touches, [[h, seq, ts] for h, (seq, ts) in seen.items()], pending, T0]
    columns = [touches, list(seen), [list(mark) for mark in seen.values()], pending, T0]
    for earlier in (triples, columns):
        journey = Journey.from_row(orjson.dumps(earlier))  # as the changelog hands it back: bytes
        assert journey.touchpoints() == full_journey().touchpoints()
        assert journey.pending == full_journey().pending and journey.last_ts == T0
        assert admit(journey, order("o1", "A-1"), seq_of(2, 0)) is Admission.REPLAY
        assert admit(journey, click("c1", T0 - HOUR), seq_of(1, 0)) is Admission.REPLAY
        assert Journey.from_row(journey.to_row()) == journey


def test_row_facts_reads_last_ts_expiry_and_pending_from_the_header_in_every_form() -> None:
    journey = full_journey()
    facts = (T0, journey.expires_s * 1000, True)
    assert row_facts(journey.to_row()) == facts
    journey.take_pending(seq_of(2, 0))
    assert row_facts(journey.to_row()) == (T0, journey.expires_s * 1000, False)
    earlier = [[], [], [[1, list(order("o1", "A-1"))]], T0]
    assert row_facts(orjson.dumps(earlier))[::2] == (T0, True)


def test_a_journey_from_no_row_is_empty_and_an_unknown_version_is_refused() -> None:
    assert Journey.from_row(None) == Journey() == Journey.from_row(b"")
    with pytest.raises(ValueError, match="unknown version"):
        Journey.from_row(b"\x09" + Journey().to_row()[1:])


# --- retention and pruning, by event time ---


def retention(**changes: int) -> Retention:
    return replace(RETENTION, **changes)


def test_retention_from_the_settings_keeps_what_a_conversion_or_a_repeat_could_still_change() -> None:
    s = Settings()
    r = Retention.of(s)
    open_ms = s.metrics_window_ms + s.allowed_lateness_ms
    assert r.click_ms == s.click_lookback_ms + open_ms and r.view_ms == s.view_lookback_ms + open_ms
    assert r.event_id_ms == open_ms and r.order_id_ms == r.dedup_ms == s.dedup_window_ms
    assert Retention.of(replace(s, dedup_window_ms=HOUR)).event_id_ms == HOUR  # never past DEDUP_WINDOW


def test_prune_forgets_impressions_and_clicks_at_their_own_horizons() -> None:
    journey = Journey()
    r = retention(click_ms=LOOKBACK, view_ms=DAY)
    events = (impression("i-old", T0 - DAY - 1), impression("i-edge", T0 - DAY), click("c-old", T0 - DAY - 1),
              click("c-gone", T0 - LOOKBACK - 1), click("now", T0))
    for n, event in enumerate(events):
        admit(journey, event, n, r)
    journey.prune(r)
    assert [t.event_id for t in journey.touchpoints()] == [id_hash(f"e:{i}") for i in ("c-old", "i-edge", "now")]
    assert journey.names == ["google_ads", "brand", "", "meta_ads", "prospecting"]  # only names still used


def test_an_event_id_goes_when_its_window_closes_an_order_id_at_the_dedup_window() -> None:
    journey = Journey()
    r = retention(event_id_ms=HOUR)
    admit(journey, order("o1", "A-1"), 1, r)
    admit(journey, Lead("l", "l1", T0, "t1", None), 2, r)
    admit(journey, click("later", T0 + HOUR + 1000), 3, r)
    journey.prune(r)
    assert set(journey.ids) == {id_hash("o:A-1")}
    assert admit(journey, order("o2", "A-1", ts=T0 + 2 * HOUR), 4, r) is Admission.DUPLICATE
    admit(journey, click("much-later", T0 + DEDUP + 1000), 5, r)
    journey.prune(r)
    assert journey.ids == {}


def test_a_touchpoint_kept_past_the_dedup_window_no_longer_makes_a_repeat_duplicate() -> None:
    journey = Journey()
    admit(journey, click("c1", T0 - DEDUP - 1), 1)
    admit(journey, click("c2", T0), 2)
    assert len(journey.touches) == 2  # the click can still win a conversion: LOOKBACK > DEDUP
    assert journey.judge([id_hash("e:c1")], 3, DEDUP) is Admission.NEW
    assert journey.judge([id_hash("e:c2")], 3, DEDUP) is Admission.DUPLICATE


def test_a_hot_tracking_id_keeps_its_latest_touchpoints_and_the_ids_of_the_others_until_their_window_closes() -> None:
    journey = Journey()
    r = retention(event_id_ms=HOUR)
    stamps = [T0 - i for i in range(MAX_TOUCHES + 50)]  # newest first: arrival order is not ts order
    for i, ts in enumerate(stamps):
        admit(journey, click(f"c{i}", ts), seq_of(i, 0), r)
    journey.prune(r)
    assert len(journey.touches) == MAX_TOUCHES and len(journey.ids) == 50
    assert min(t.ts for t in journey.touchpoints()) == T0 - MAX_TOUCHES + 1
    assert admit(journey, click(f"c{MAX_TOUCHES + 49}", T0), seq_of(10**6, 0), r) is Admission.DUPLICATE
    admit(journey, impression("next-hour", T0 + HOUR + 1000), seq_of(10**6, 1), r)
    journey.prune(r)
    assert journey.ids == {}


def test_a_hot_tracking_id_forgets_its_oldest_ids_first_and_stays_small() -> None:
    journey = Journey()
    for i in range(MAX_SEEN_IDS + 100):
        admit(journey, Lead("l", f"l{i}", T0, "t1", None), seq_of(i, 0))
    journey.prune(RETENTION)
    assert len(journey.ids) == MAX_SEEN_IDS
    assert admit(journey, Lead("l", "l0", T0, "t1", None), seq_of(10**6, 0)) is Admission.NEW  # the oldest: gone
    assert admit(journey, Lead("l", f"l{MAX_SEEN_IDS + 99}", T0, "t1", None), seq_of(10**6, 1)) is Admission.DUPLICATE


def test_a_full_journey_row_stays_far_below_the_kafka_message_limit() -> None:
    journey = Journey()
    for i in range(MAX_SEEN_IDS * 2):
        event = Touch("c", f"click-{i:012d}-{'x' * 40}", T0 - i, "t" * 128, f"c{i}" * 30, "k" * 256, "a" * 128, 1.5)
        admit(journey, event, seq_of(10**9 + i, 1023))
    for i in range(MAX_SEEN_IDS * 2):
        admit(journey, order(f"order-{i}", f"A-{i}"), seq_of(2 * 10**9 + i, 1023))
    journey.prune(RETENTION)
    row = journey.to_row()
    assert len(row) < 256 * 1024  # Kafka's message limit is 1 MiB
    assert Journey.from_row(row) == journey


def test_a_hot_tracking_id_with_the_longest_names_keeps_a_row_far_below_the_kafka_message_limit() -> None:
    journey = Journey()
    for i in range(MAX_TOUCHES * 2):
        longest = f"{i:06d}"
        event = Touch("c", f"c{i}", T0 + i, "t1", longest + "ш" * 58, longest + "ш" * 250, longest + "ш" * 122, 0.0)
        admit(journey, event, seq_of(i, 0))
    journey.prune(RETENTION)
    row = journey.to_row()
    assert len(row) < 512 * 1024
    assert min(t.ts for t in journey.touchpoints()) > T0 + MAX_TOUCHES  # the newest stay
    assert admit(journey, click("c0", T0), seq_of(10**6, 0)) is Admission.DUPLICATE  # the others' ids too


def test_spend_rows_of_a_channel_spread_over_its_shards_by_event_id() -> None:
    keys = {spend_key("google_ads", f"spend-{i}") for i in range(2000)}
    assert len(keys) == SPEND_SHARDS
    assert all(k.startswith(SPEND_KEY_PREFIX + "google_ads/") for k in keys)
    assert spend_key("google_ads", "spend-7") == spend_key("google_ads", "spend-7")  # a repeat meets its original
    assert spend_key("google_ads", "spend-7") != spend_key("meta_ads", "spend-7")


def test_prune_does_nothing_while_event_time_stands_still() -> None:
    journey = Journey()
    admit(journey, click("c1", T0 - 100 * DAY), seq_of(1, 0))
    before = Journey.from_row(journey.to_row())
    for _ in range(3):  # however much wall-clock time passes between prunes
        journey.prune(RETENTION)
    assert journey == before


def test_an_old_event_admitted_late_does_not_move_event_time_back() -> None:
    journey = Journey()
    admit(journey, click("new", T0), seq_of(1, 0))
    admit(journey, click("old", T0 - 40 * DAY), seq_of(2, 0))
    assert journey.last_ts == T0


def test_a_journey_expires_when_stream_time_passes_whatever_it_keeps_longest() -> None:
    journey = Journey()
    r = retention(click_ms=LOOKBACK, view_ms=DAY, order_id_ms=DEDUP, event_id_ms=HOUR)
    admit(journey, impression("i1", T0), 1, r)
    assert not journey.is_expired(T0 + DAY) and journey.is_expired(T0 + DAY + 1000)
    admit(journey, order("o1", "A-1"), 2, r)  # its order_id is kept for the dedup window
    assert not journey.is_expired(T0 + DEDUP) and journey.is_expired(T0 + DEDUP + 1000)
    admit(journey, click("c1", T0), 3, r)
    assert not journey.is_expired(T0 + LOOKBACK) and journey.is_expired(T0 + LOOKBACK + 1000)
    admit(journey, click("c2", T0 + 10 * DAY), 4, r)
    journey.prune(r)
    assert journey.is_expired(T0 + 10 * DAY + LOOKBACK + 1000)
    assert Journey.from_row(journey.to_row()).expires_s == journey.expires_s


def test_a_journey_with_a_pending_conversion_never_expires() -> None:
    journey = Journey()
    admit(journey, order(), seq_of(1, 0))
    journey.add_pending(seq_of(1, 0), order())
    assert not journey.is_expired(T0 + 1000 * DAY)


# --- CLICK_FLOOD (CONTRACT.md section 9) ---
FLOOD = ClickFlood(3, HOUR)


def test_clicks_beyond_the_flood_limit_in_an_hour_are_suspect_and_kept_by_id_only() -> None:
    journey = Journey()
    outcomes = [journey.admit(click(f"c{i}", T0 + i * MINUTE), i + 1, RETENTION, FLOOD) for i in range(5)]
    assert outcomes == [Admission.NEW] * 3 + [Admission.SUSPECT] * 2
    assert journey.touch_count() == 3
    assert journey.admit(click("c4", T0 + 4 * MINUTE), 5, RETENTION, FLOOD) is Admission.SUSPECT_REPLAY
    assert journey.admit(click("c4", T0 + 4 * MINUTE), 99, RETENTION, FLOOD) is Admission.DUPLICATE


def test_a_click_an_hour_after_the_first_of_the_limit_is_no_longer_suspect() -> None:
    journey = Journey()
    for i in range(3):
        assert journey.admit(click(f"c{i}", T0 + i * MINUTE), i + 1, RETENTION, FLOOD) is Admission.NEW
    assert journey.admit(click("late", T0 + HOUR - 1), 4, RETENTION, FLOOD) is Admission.SUSPECT
    assert journey.admit(click("next", T0 + HOUR), 5, RETENTION, FLOOD) is Admission.NEW  # c0 left the span


def test_an_earlier_click_arriving_late_is_suspect_when_any_hour_holding_it_is_full() -> None:
    journey = Journey()
    for i, minute in enumerate((30, 40, 50)):
        assert journey.admit(click(f"c{i}", T0 + minute * MINUTE), i + 1, RETENTION, FLOOD) is Admission.NEW
    # [T0, T0 + 1h) would hold it and the three later ones: four clicks
    assert journey.admit(click("early", T0), 4, RETENTION, FLOOD) is Admission.SUSPECT
    # no hour holds both a click at T0 - 31m and one at T0 + 30m
    assert journey.admit(click("earlier", T0 - 31 * MINUTE), 5, RETENTION, FLOOD) is Admission.NEW


def test_impressions_are_never_suspect_and_no_flood_rule_means_none_are() -> None:
    journey = Journey()
    assert {journey.admit(impression(f"i{i}", T0 + i), i + 1, RETENTION, FLOOD) for i in range(10)} == {Admission.NEW}
    other = Journey()
    assert {other.admit(click(f"c{i}", T0 + i), i + 1, RETENTION, None) for i in range(10)} == {Admission.NEW}


@given(st.lists(st.integers(min_value=0, max_value=3 * HOUR), min_size=1, max_size=25))
@settings(max_examples=150, deadline=None)
def test_no_hour_ever_holds_more_kept_clicks_than_the_limit(times: list[int]) -> None:
    journey = Journey()
    for i, offset in enumerate(times):
        journey.admit(click(f"c{i}", T0 + offset), i + 1, RETENTION, FLOOD)
    kept = sorted(t[0] for t in journey.touches)
    assert all(sum(start <= t < start + HOUR for t in kept) <= FLOOD.clicks for start in kept)


# --- row marks: which of two rows of a key was made from newer state (recovery skips the older) ---


def expected_mark(journey: Journey) -> int:
    seqs = [t[1] for t in journey.touches] + [seq for seq, _ in journey.ids.values()]
    return max(seqs + [seq for seq, _ in journey.pending], default=-1)


def journey_of(events: list[tuple[str, int, int, str]], wide_name: bool) -> Journey:
    """(kind: "i", "c" or "l", ts offset, seq, channel) in order, leads left pending; `wide_name`: a first
    touchpoint whose name needs the wide layout."""
    journey = Journey()
    if wide_name:
        admit(journey, Touch("c", "wide", T0 + 200, "t1", "google_ads", "ü" * 200, None, 0.0), 0)
    for kind, i, seq, channel in events:
        if kind == "l":
            lead = Lead("l", f"l{i}", T0 + i, "t1", None)
            if admit(journey, lead, seq) is Admission.NEW:
                journey.add_pending(seq, lead)
        else:
            admit(journey, Touch(kind, f"{kind}{i}", T0 + i, "t1", channel, "brand", None, 0.0), seq)
    return journey


@given(st.lists(st.tuples(st.sampled_from("icl"), st.integers(0, 400), st.integers(0, 10**6)), max_size=40),
       st.booleans())
@settings(max_examples=150, deadline=None)
def test_a_row_s_mark_is_the_highest_sequence_it_holds_in_either_layout(
    events: list[tuple[str, int, int]], wide_name: bool
) -> None:
    journey = journey_of([(kind, i, seq, "google_ads") for kind, i, seq in events], wide_name)
    row = journey.to_row()
    assert bool(row[0] & WIDE) == wide_name
    assert row_mark(row) == expected_mark(journey)


def test_a_row_of_the_earlier_json_form_has_its_mark_too() -> None:
    journey = Journey()
    admit(journey, click("c1", T0), seq_of(3, 1))
    journey.add_pending(seq_of(5, 0), order("o1"))
    earlier = [[[T0, "c", "google_ads", "brand", None, "c1"]], [[id_hash("e:c1"), seq_of(3, 1), T0]],
               [[seq_of(5, 0), list(order("o1"))]], T0]
    assert row_mark(orjson.dumps(earlier)) == seq_of(5, 0)


# --- what the Markov stage reads of a row to end its null paths ---


@given(st.lists(st.tuples(st.sampled_from("icl"), st.integers(0, 400), st.sampled_from(["a", "b", "ü-c"])),
                max_size=40), st.booleans())
@settings(max_examples=150, deadline=None)
def test_path_touches_are_the_touchpoints_ts_and_channels_in_order_and_whether_a_conversion_waits(
    events: list[tuple[str, int, str]], wide_name: bool
) -> None:
    journey = journey_of([(kind, i, seq, channel) for seq, (kind, i, channel) in enumerate(events, start=1)],
                         wide_name)
    row = journey.to_row()
    assert bool(row[0] & WIDE) == wide_name
    touches = path_touches(row)
    decoded = Journey.from_row(row)
    assert row_facts(row)[2] == bool(decoded.pending)
    assert [(t.ts, t.channel) for t in touches] == [(t.ts, t.channel) for t in decoded.touchpoints()]


def test_path_touches_of_a_row_of_the_earlier_json_form() -> None:
    earlier = [[[T0, "c", "google_ads", "brand", None, "c1"], [T0 + 5, "i", "meta_ads", "p", None, "i1"]],
               [[id_hash("e:c1"), seq_of(3, 1), T0]], [[seq_of(5, 0), list(order("o1"))]], T0 + 5]
    row = orjson.dumps(earlier)
    touches = path_touches(row)
    assert row_facts(row)[2] and [(t.ts, t.channel) for t in touches] == [(T0, "google_ads"), (T0 + 5, "meta_ads")]


def test_a_row_made_before_the_last_events_of_its_key_is_older_and_an_equal_mark_is_not() -> None:
    """A zombie's late record: its state had not absorbed what the new owner's row holds."""
    journey = Journey()
    admit(journey, click("c1", T0), seq_of(10, 0))
    before = journey.to_row()
    admit(journey, click("c2", T0 + MINUTE), seq_of(12, 3))
    after = journey.to_row()
    assert journey_row_older(after, before) and not journey_row_older(before, after)
    lead = Lead("l", "l1", T0 + HOUR, "t1", None)
    admit(journey, lead, seq_of(13, 0))
    journey.add_pending(seq_of(13, 0), lead)
    waiting = journey.to_row()
    journey.take_pending(seq_of(13, 0))  # attributed: its id stays, with the same mark
    attributed = journey.to_row()
    assert not journey_row_older(waiting, attributed) and not journey_row_older(attributed, waiting)
    assert journey_row_older(waiting, after)
