"""Attribution (CONTRACT.md section 3): touchpoints -> journey -> credits per model, and commissions."""

from __future__ import annotations

import math
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import MODELS, Model
from streams.core.attribution import (
    DIRECT,
    NONE_CAMPAIGN,
    Affiliate,
    Commission,
    Credit,
    Lookback,
    Touchpoint,
    commissions,
    credits,
    journey_for,
    too_close_clicks,
    weights,
)

SECOND, HOUR, DAY = 1_000, 3_600_000, 86_400_000
CONVERSION = 100 * DAY
LOOKBACK = Lookback(click_ms=30 * DAY, view_ms=1 * DAY)
HALF_LIFE = 7 * DAY
ANNA = Affiliate("anna_fit", "influencer", ("ANNA10",), 0.10, 2.0)
BLOG = Affiliate("blog", "affiliate", (), 0.05, 1.5)
DEALS = Affiliate("deals", "affiliate", ("DEALS5",), 0.08, 0.5)
REGISTERED = {a.affiliate_id: a for a in (ANNA, BLOG, DEALS)}
SETTLE = settings(max_examples=120, deadline=None)


def click(ts: int, channel: str = "google_ads", campaign: str = "brand", affiliate: str | None = None,
          event_id: str | None = None) -> Touchpoint:
    return Touchpoint(ts, "c", channel, campaign, affiliate, event_id or f"c{ts}{channel}")


def impression(ts: int, channel: str = "facebook", campaign: str = "retarget", event_id: str | None = None
               ) -> Touchpoint:
    return Touchpoint(ts, "i", channel, campaign, None, event_id or f"i{ts}{channel}")


def credit_of(model: Model, touches: list[Touchpoint], promo: Affiliate | None = None) -> list[Credit]:
    journey = journey_for(touches, CONVERSION, LOOKBACK, promo, "order-1")
    return credits(model, journey, CONVERSION, HALF_LIFE)


def channels(model: Model, touches: list[Touchpoint], promo: Affiliate | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for credit in credit_of(model, touches, promo):
        out[credit.channel] = out.get(credit.channel, 0.0) + credit.weight
    return out


@st.composite
def touchpoints(draw: st.DrawFn, max_size: int = 8) -> list[Touchpoint]:
    """Touchpoints around CONVERSION (some after it, some beyond either lookback), unique event ids."""
    size = draw(st.integers(min_value=0, max_value=max_size))
    out = []
    for n in range(size):
        kind = draw(st.sampled_from("ci"))
        ts = CONVERSION - draw(st.one_of(st.integers(-2 * DAY, 35 * DAY), st.sampled_from(
            [0, 1, -1, LOOKBACK.view_ms, LOOKBACK.view_ms + 1, LOOKBACK.click_ms, LOOKBACK.click_ms + 1])))
        ts = draw(st.sampled_from([ts, CONVERSION - DAY]))  # make ties in ts common
        affiliate = draw(st.sampled_from([None, "anna_fit", "blog", "ghost"])) if kind == "c" else None
        out.append(Touchpoint(ts, kind, draw(st.sampled_from(["google_ads", "facebook", "email", "influencer"])),
                              draw(st.sampled_from(["brand", "(none)"])), affiliate, f"e{n}"))
    return out


# --- the journey ---


def test_the_models_are_the_five_of_the_contract() -> None:
    assert set(MODELS) == set(get_args(Model)) == {
        "last_click", "first_click", "linear", "time_decay", "position_based"}


def test_a_click_exactly_at_the_click_lookback_counts() -> None:
    edge = click(CONVERSION - LOOKBACK.click_ms)
    assert journey_for([edge], CONVERSION, LOOKBACK) == [edge]


def test_a_click_one_ms_beyond_the_click_lookback_does_not_count() -> None:
    assert journey_for([click(CONVERSION - LOOKBACK.click_ms - 1)], CONVERSION, LOOKBACK) == []


def test_an_impression_exactly_at_the_view_lookback_counts() -> None:
    edge = impression(CONVERSION - LOOKBACK.view_ms)
    assert journey_for([edge], CONVERSION, LOOKBACK) == [edge]


def test_an_impression_one_ms_beyond_the_view_lookback_does_not_count() -> None:
    assert journey_for([impression(CONVERSION - LOOKBACK.view_ms - 1)], CONVERSION, LOOKBACK) == []


def test_an_impression_older_than_the_view_lookback_but_inside_the_click_lookback_does_not_count() -> None:
    old_view, old_click = impression(CONVERSION - 2 * DAY), click(CONVERSION - 2 * DAY)
    assert journey_for([old_view, old_click], CONVERSION, LOOKBACK) == [old_click]


def test_a_touchpoint_at_the_conversion_ts_counts() -> None:
    touches = [click(CONVERSION), impression(CONVERSION)]
    assert len(journey_for(touches, CONVERSION, LOOKBACK)) == 2


def test_touchpoints_after_the_conversion_ts_do_not_count() -> None:
    assert journey_for([click(CONVERSION + 1), impression(CONVERSION + 1)], CONVERSION, LOOKBACK) == []


def test_touchpoints_are_ordered_by_ts() -> None:
    touches = [click(CONVERSION - HOUR), impression(CONVERSION - 3 * HOUR), click(CONVERSION - 2 * HOUR)]
    assert [t.ts for t in journey_for(touches, CONVERSION, LOOKBACK)] == [
        CONVERSION - 3 * HOUR, CONVERSION - 2 * HOUR, CONVERSION - HOUR]


def test_ties_in_ts_are_broken_by_event_id_whatever_the_arrival_order() -> None:
    a = click(CONVERSION - HOUR, "google_ads", event_id="a")
    b = click(CONVERSION - HOUR, "facebook", event_id="b")
    for arrival in ([a, b], [b, a]):
        assert journey_for(arrival, CONVERSION, LOOKBACK) == [a, b]
        assert channels("last_click", arrival) == {"facebook": 1.0}
        assert channels("first_click", arrival) == {"google_ads": 1.0}


@SETTLE
@given(touches=touchpoints(), data=st.data(), model=st.sampled_from(MODELS))
def test_the_order_touchpoints_are_given_in_does_not_change_the_result(
    touches: list[Touchpoint], data: st.DataObject, model: Model
) -> None:
    shuffled = data.draw(st.permutations(touches))
    assert journey_for(shuffled, CONVERSION, LOOKBACK) == journey_for(touches, CONVERSION, LOOKBACK)
    assert credit_of(model, shuffled, ANNA) == credit_of(model, touches, ANNA)


@SETTLE
@given(touches=touchpoints())
def test_the_journey_is_exactly_the_touchpoints_in_their_lookback(touches: list[Touchpoint]) -> None:
    journey = journey_for(touches, CONVERSION, LOOKBACK)
    for touch in touches:
        window = LOOKBACK.click_ms if touch.kind == "c" else LOOKBACK.view_ms
        assert (touch in journey) == (CONVERSION - window <= touch.ts <= CONVERSION)
    assert [t.ts for t in journey] == sorted(t.ts for t in journey)


# --- credits sum to 1 ---


@SETTLE
@given(touches=touchpoints().filter(bool), model=st.sampled_from(MODELS),
       half_life=st.integers(1, 1000) | st.integers(1, 60 * DAY), promo=st.sampled_from([None, ANNA]))
def test_the_credits_of_one_conversion_sum_to_1_for_every_model(
    touches: list[Touchpoint], model: Model, half_life: int, promo: Affiliate | None
) -> None:
    journey = journey_for(touches, CONVERSION, LOOKBACK, promo, "order-1")
    shares = weights(model, journey, CONVERSION, half_life) if journey else []
    assert all(0.0 <= w <= 1.0 for w in shares)
    given_credits = credits(model, journey, CONVERSION, half_life)
    assert math.isclose(sum(c.weight for c in given_credits), 1.0, rel_tol=1e-9)
    assert all(c.weight > 0 for c in given_credits)
    assert len({(c.channel, c.campaign, c.affiliate_id) for c in given_credits}) == len(given_credits)


@pytest.mark.parametrize("model", MODELS)
def test_a_conversion_with_no_touchpoint_is_credited_wholly_to_direct(model: Model) -> None:
    assert credit_of(model, []) == [Credit(DIRECT, NONE_CAMPAIGN, None, 1.0)]


@pytest.mark.parametrize("model", MODELS)
def test_a_conversion_whose_touchpoints_are_all_out_of_lookback_is_direct(model: Model) -> None:
    stale = [click(CONVERSION - 31 * DAY), impression(CONVERSION - 2 * DAY), click(CONVERSION + SECOND)]
    assert credit_of(model, stale) == [Credit(DIRECT, NONE_CAMPAIGN, None, 1.0)]


@pytest.mark.parametrize("model", MODELS)
def test_a_single_touchpoint_takes_all_the_credit(model: Model) -> None:
    assert credit_of(model, [impression(CONVERSION - HOUR)]) == [Credit("facebook", "retarget", None, 1.0)]


def test_credits_of_the_same_channel_campaign_and_affiliate_are_merged() -> None:
    touches = [click(CONVERSION - 3 * HOUR), impression(CONVERSION - 2 * HOUR), click(CONVERSION - HOUR)]
    assert credit_of("linear", touches) == [
        Credit("google_ads", "brand", None, pytest.approx(2 / 3)),
        Credit("facebook", "retarget", None, pytest.approx(1 / 3)),
    ]


def test_an_unknown_model_is_rejected_naming_it() -> None:
    with pytest.raises(ValueError, match="'u_shaped'"):
        weights("u_shaped", [click(CONVERSION)], CONVERSION, HALF_LIFE)  # type: ignore[arg-type]


# --- the models ---


def test_last_click_gives_all_to_the_latest_click() -> None:
    touches = [click(CONVERSION - 2 * HOUR, "email"), click(CONVERSION - HOUR, "google_ads"),
               impression(CONVERSION - 1)]
    assert channels("last_click", touches) == {"google_ads": 1.0}


def test_last_click_falls_back_to_the_latest_impression_when_there_is_no_click() -> None:
    touches = [impression(CONVERSION - 2 * HOUR, "facebook"), impression(CONVERSION - HOUR, "tiktok")]
    assert channels("last_click", touches) == {"tiktok": 1.0}


def test_first_click_gives_all_to_the_earliest_click() -> None:
    touches = [impression(CONVERSION - 3 * HOUR), click(CONVERSION - 2 * HOUR, "email"),
               click(CONVERSION - HOUR, "google_ads")]
    assert channels("first_click", touches) == {"email": 1.0}


def test_first_click_falls_back_to_the_earliest_impression_when_there_is_no_click() -> None:
    touches = [impression(CONVERSION - HOUR, "tiktok"), impression(CONVERSION - 2 * HOUR, "facebook")]
    assert channels("first_click", touches) == {"facebook": 1.0}


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_linear_gives_equal_shares_to_every_touchpoint(n: int) -> None:
    journey = journey_for([click(CONVERSION - i * HOUR) for i in range(n)], CONVERSION, LOOKBACK)
    assert weights("linear", journey, CONVERSION, HALF_LIFE) == pytest.approx([1 / n] * n)


def test_time_decay_weighs_by_two_to_the_minus_age_over_half_life_normalised() -> None:
    # ages 2, 1 and 0 half-lives: raw 1/4, 1/2, 1 -> normalised by 7/4 -> 1/7, 2/7, 4/7
    touches = [click(CONVERSION - 2 * HALF_LIFE), click(CONVERSION - HALF_LIFE, "email"), impression(CONVERSION)]
    journey = journey_for(touches, CONVERSION, LOOKBACK)
    assert weights("time_decay", journey, CONVERSION, HALF_LIFE) == pytest.approx([1 / 7, 2 / 7, 4 / 7])


def test_time_decay_at_unequal_ages_matches_the_formula() -> None:
    ages = [20 * DAY, 3 * DAY + 5 * HOUR, 2 * HOUR]
    journey = journey_for([click(CONVERSION - age) for age in ages], CONVERSION, LOOKBACK)
    raw = [2 ** (-age / HALF_LIFE) for age in ages]
    assert weights("time_decay", journey, CONVERSION, HALF_LIFE) == pytest.approx([r / sum(raw) for r in raw])


def test_time_decay_of_touchpoints_many_half_lives_old_still_sums_to_1() -> None:
    # 2^(-age/half-life) underflows to 0.0 for every touchpoint here; the shares must still be defined.
    journey = [click(CONVERSION - 29 * DAY), click(CONVERSION - 28 * DAY, "email")]
    shares = weights("time_decay", journey, CONVERSION, SECOND)
    assert shares == pytest.approx([0.0, 1.0])


@SETTLE
@given(ages=st.lists(st.integers(0, 30 * DAY), min_size=1, max_size=8), half_life=st.integers(1, 30 * DAY))
def test_time_decay_shares_are_defined_and_halve_with_every_half_life_of_age(ages: list[int], half_life: int) -> None:
    journey = journey_for([click(CONVERSION - age, event_id=f"e{i}") for i, age in enumerate(ages)],
                          CONVERSION, LOOKBACK)
    shares = weights("time_decay", journey, CONVERSION, half_life)
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-9)
    newest = shares[-1]
    for touch, share in zip(journey, shares, strict=True):
        assert share <= newest
        assert share == pytest.approx(newest * 2 ** (-(journey[-1].ts - touch.ts) / half_life), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [1.0]), (2, [0.5, 0.5]), (3, [0.4, 0.2, 0.4]), (4, [0.4, 0.1, 0.1, 0.4]),
     (6, [0.4, 0.05, 0.05, 0.05, 0.05, 0.4])],
)
def test_position_based_gives_40_first_40_last_and_20_over_the_middle(n: int, expected: list[float]) -> None:
    journey = journey_for([click(CONVERSION - i * HOUR) for i in range(n)], CONVERSION, LOOKBACK)
    assert weights("position_based", journey, CONVERSION, HALF_LIFE) == pytest.approx(expected)


@SETTLE
@given(touches=touchpoints().filter(bool))
def test_last_click_and_first_click_credit_exactly_one_touchpoint(touches: list[Touchpoint]) -> None:
    journey = journey_for(touches, CONVERSION, LOOKBACK)
    if not journey:
        return
    clicks = [t for t in journey if t.kind == "c"] or journey
    for model, chosen in (("last_click", clicks[-1]), ("first_click", clicks[0])):
        shares = weights(model, journey, CONVERSION, HALF_LIFE)  # type: ignore[arg-type]
        assert shares.count(1.0) == 1 and shares.count(0.0) == len(journey) - 1
        assert journey[shares.index(1.0)] == chosen


# --- promo codes ---


def test_a_registered_promo_code_adds_a_click_at_the_order_ts_in_the_affiliate_channel() -> None:
    journey = journey_for([], CONVERSION, LOOKBACK, ANNA, "order-1")
    assert journey == [Touchpoint(CONVERSION, "p", "influencer", NONE_CAMPAIGN, "anna_fit", "order-1")]


def test_a_registered_promo_codes_click_wins_under_last_click() -> None:
    touches = [click(CONVERSION - HOUR, "google_ads"), click(CONVERSION, "email", event_id="zzz"),
               impression(CONVERSION)]
    assert credit_of("last_click", touches, ANNA) == [Credit("influencer", NONE_CAMPAIGN, "anna_fit", 1.0)]


def test_a_promo_codes_click_is_one_more_touchpoint_under_the_other_models() -> None:
    assert channels("linear", [click(CONVERSION - HOUR)], ANNA) == {"google_ads": 0.5, "influencer": 0.5}
    assert channels("first_click", [click(CONVERSION - HOUR)], ANNA) == {"google_ads": 1.0}


# --- commissions ---


def test_the_latest_clicks_affiliate_converts_and_earns_its_rate_times_revenue() -> None:
    journey = journey_for([click(CONVERSION - HOUR, "affiliate", affiliate="blog")], CONVERSION, LOOKBACK)
    assert commissions(journey, 200.0, REGISTERED) == [Commission("blog", "converter", pytest.approx(10.0))]


def test_every_other_affiliate_earns_its_assist_fee_once_even_with_several_touchpoints() -> None:
    touches = [click(CONVERSION - 5 * HOUR, "affiliate", affiliate="blog", event_id="b1"),
               click(CONVERSION - 4 * HOUR, "affiliate", affiliate="deals"),
               click(CONVERSION - 3 * HOUR, "affiliate", affiliate="blog", event_id="b2"),
               click(CONVERSION - HOUR, "influencer", affiliate="anna_fit")]
    journey = journey_for(touches, CONVERSION, LOOKBACK)
    assert commissions(journey, 100.0, REGISTERED) == [
        Commission("anna_fit", "converter", pytest.approx(10.0)),
        Commission("blog", "assist", 1.5),
        Commission("deals", "assist", 0.5),
    ]


def test_the_converter_earns_no_assist_fee_for_its_earlier_clicks() -> None:
    touches = [click(CONVERSION - 2 * HOUR, affiliate="blog", event_id="b1"),
               click(CONVERSION - HOUR, affiliate="blog", event_id="b2")]
    journey = journey_for(touches, CONVERSION, LOOKBACK)
    assert commissions(journey, 100.0, REGISTERED) == [Commission("blog", "converter", pytest.approx(5.0))]


def test_a_promo_codes_affiliate_is_the_converter() -> None:
    journey = journey_for([click(CONVERSION - HOUR, affiliate="blog")], CONVERSION, LOOKBACK, ANNA, "order-1")
    assert commissions(journey, 50.0, REGISTERED) == [
        Commission("anna_fit", "converter", pytest.approx(5.0)), Commission("blog", "assist", 1.5)]


def test_unregistered_affiliates_earn_nothing() -> None:
    touches = [click(CONVERSION - 2 * HOUR, affiliate="ghost", event_id="g1"),
               click(CONVERSION - HOUR, affiliate="phantom", event_id="p1")]
    assert commissions(journey_for(touches, CONVERSION, LOOKBACK), 100.0, REGISTERED) == []


def test_an_unregistered_latest_click_makes_no_converter_but_others_still_assist() -> None:
    touches = [click(CONVERSION - 2 * HOUR, affiliate="blog"), click(CONVERSION - HOUR, affiliate="ghost")]
    assert commissions(journey_for(touches, CONVERSION, LOOKBACK), 100.0, REGISTERED) == [
        Commission("blog", "assist", 1.5)]


def test_no_converter_when_the_latest_click_has_no_affiliate() -> None:
    touches = [click(CONVERSION - 2 * HOUR, affiliate="blog"), click(CONVERSION - HOUR, "google_ads")]
    assert commissions(journey_for(touches, CONVERSION, LOOKBACK), 100.0, REGISTERED) == [
        Commission("blog", "assist", 1.5)]


def test_an_impression_after_the_latest_click_does_not_take_the_conversion() -> None:
    touches = [click(CONVERSION - 2 * HOUR, affiliate="blog"), impression(CONVERSION - HOUR)]
    assert commissions(journey_for(touches, CONVERSION, LOOKBACK), 100.0, REGISTERED) == [
        Commission("blog", "converter", pytest.approx(5.0))]


def test_affiliates_outside_the_lookback_earn_nothing() -> None:
    touches = [click(CONVERSION - 31 * DAY, affiliate="blog")]
    assert commissions(journey_for(touches, CONVERSION, LOOKBACK), 100.0, REGISTERED) == []


@SETTLE
@given(touches=touchpoints(), revenue=st.floats(min_value=0, max_value=1e6), promo=st.sampled_from([None, DEALS]))
def test_commissions_pay_at_most_one_converter_and_each_registered_affiliate_at_most_once(
    touches: list[Touchpoint], revenue: float, promo: Affiliate | None
) -> None:
    journey = journey_for(touches, CONVERSION, LOOKBACK, promo, "order-1")
    paid = commissions(journey, revenue, REGISTERED)
    assert [c.role for c in paid].count("converter") <= 1
    assert len({c.affiliate_id for c in paid}) == len(paid)
    assert {c.affiliate_id for c in paid} <= set(REGISTERED) & {t.affiliate_id for t in journey}
    for c in paid:
        affiliate = REGISTERED[c.affiliate_id]
        expected = affiliate.commission_rate * revenue if c.role == "converter" else affiliate.assist_fee
        assert c.amount == pytest.approx(expected)


# --- MIN_CLICK_GAP (CONTRACT.md section 9) ---
GAPPED = Lookback(click_ms=30 * DAY, view_ms=1 * DAY, min_click_gap_ms=10 * SECOND)


def test_a_click_closer_than_min_click_gap_is_no_touchpoint_of_the_conversion() -> None:
    touches = [click(CONVERSION - HOUR, "search"), click(CONVERSION - 10 * SECOND + 1, "coupons")]
    assert [t.channel for t in journey_for(touches, CONVERSION, GAPPED)] == ["search"]
    assert too_close_clicks(touches, CONVERSION, GAPPED) == touches[1:]


def test_a_click_exactly_min_click_gap_before_is_a_touchpoint_and_an_impression_is_never_too_close() -> None:
    touches = [click(CONVERSION - 10 * SECOND, "coupons"), impression(CONVERSION, "facebook")]
    assert [t.channel for t in journey_for(touches, CONVERSION, GAPPED)] == ["coupons", "facebook"]
    assert too_close_clicks(touches, CONVERSION, GAPPED) == []


def test_a_promo_codes_click_at_the_conversion_is_not_held_to_min_click_gap() -> None:
    path = journey_for([], CONVERSION, GAPPED, ANNA, "order-1")
    assert [(t.kind, t.channel) for t in path] == [("p", "influencer")]


def test_a_click_after_the_conversion_is_neither_a_touchpoint_nor_too_close() -> None:
    late = [click(CONVERSION + 1, "search")]
    assert journey_for(late, CONVERSION, GAPPED) == [] and too_close_clicks(late, CONVERSION, GAPPED) == []


@given(st.lists(st.integers(min_value=0, max_value=60 * SECOND), max_size=12), st.integers(0, 30 * SECOND))
@SETTLE
def test_every_click_in_the_lookback_is_either_a_touchpoint_or_too_close(ages: list[int], gap: int) -> None:
    lookback = Lookback(click_ms=30 * DAY, view_ms=DAY, min_click_gap_ms=gap)
    touches = [click(CONVERSION - age, event_id=f"c{i}") for i, age in enumerate(ages)]
    kept, close = journey_for(touches, CONVERSION, lookback), too_close_clicks(touches, CONVERSION, lookback)
    assert sorted(t.event_id for t in kept + close) == sorted(t.event_id for t in touches)
    assert all(CONVERSION - t.ts < gap for t in close) and all(CONVERSION - t.ts >= gap for t in kept)
