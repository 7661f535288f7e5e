"""Input topics (CONTRACT.md section 2): bytes -> normalised events or rejections, rule by rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import Settings
from streams.core.events import (
    ANONYMOUS,
    INPUT_TOPICS,
    TOPIC_TYPES,
    Lead,
    Order,
    Refund,
    Rejection,
    Spend,
    Touch,
    decode,
    from_row,
    parse_message,
    parse_ts,
    to_reporting,
    validate,
)

TS = 1763800000000  # 2025-11-22T08:26:40Z
USD = Settings.from_env({})
FX = Settings.from_env({"FX_RATES": "EUR=1.08,GBP=1.27"})

IMPRESSION = {"event_id": "i1", "type": "impression", "ts": TS, "tracking_id": "t1", "channel": "facebook"}
CLICK = {"event_id": "c1", "type": "click", "ts": TS, "tracking_id": "t1", "channel": "google_ads"}
LEAD = {"event_id": "l1", "type": "lead", "ts": TS, "tracking_id": "t1"}
ORDER = {"event_id": "o1", "type": "order", "ts": TS, "tracking_id": "t1", "order_id": "A-1", "revenue": 120.0}
SPEND = {"event_id": "s1", "type": "spend", "ts": TS, "channel": "google_ads", "amount": 50.0}
REFUND = {"event_id": "r1", "type": "refund", "ts": TS, "order_id": "o-1", "amount": 40.0, "currency": "USD",
          "reason": "returned"}
VALID = {"impressions": IMPRESSION, "clicks": CLICK, "leads": LEAD, "orders": ORDER, "spend": SPEND, "refunds": REFUND}
REQUIRED = {
    "impressions": ("event_id", "type", "ts", "tracking_id", "channel"),
    "clicks": ("event_id", "type", "ts", "tracking_id", "channel"),
    "leads": ("event_id", "type", "ts", "tracking_id"),
    "orders": ("event_id", "type", "ts", "tracking_id", "order_id", "revenue"),
    "spend": ("event_id", "type", "ts", "channel", "amount"),
    "refunds": ("event_id", "type", "ts", "order_id"),
}
REQUIRED_CASES = [(topic, name) for topic, names in REQUIRED.items() for name in names]
REQUIRED_STRINGS = [
    (topic, name) for topic, name in REQUIRED_CASES if name in ("event_id", "tracking_id", "channel", "order_id")
]


def one(topic: str, settings_: Settings = USD, **changes: Any) -> Any:
    """Validate the topic's valid example with some fields changed (None here removes a field)."""
    obj = {**VALID[topic], **changes}
    return validate({k: v for k, v in obj.items() if v is not None}, topic, settings_)


def rejected(topic: str, **changes: Any) -> str:
    result = one(topic, **changes)
    assert isinstance(result, str), f"{changes} was accepted as {result}"
    return result


def as_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


# --- a value is UTF-8 JSON: one event object, or an array of event objects ---


def test_a_single_object_is_one_event_with_no_index() -> None:
    assert decode(as_bytes(CLICK)) == [(None, CLICK)]


def test_an_array_is_a_batch_whose_elements_carry_their_index() -> None:
    assert decode(as_bytes([CLICK, IMPRESSION])) == [(0, CLICK), (1, IMPRESSION)]


def test_truncated_json_is_rejected() -> None:
    rejection = decode(as_bytes(CLICK)[:-5])
    assert isinstance(rejection, Rejection) and rejection.index is None
    assert "not valid UTF-8 JSON" in rejection.error


def test_bytes_that_are_not_utf8_are_rejected() -> None:
    rejection = decode(b'{"event_id": "\xff\xfe"}')
    assert isinstance(rejection, Rejection) and "UTF-8" in rejection.error


def test_an_empty_value_is_rejected() -> None:
    for raw in (None, b"", b"   "):
        assert isinstance(decode(raw), Rejection)


@pytest.mark.parametrize(("raw", "shown"), [(b"null", "null"), (b'"click"', '"click"'), (b"42", "42"),
                                            (b"1.5", "1.5"), (b"true", "true")])
def test_json_that_is_neither_an_object_nor_an_array_is_rejected_naming_what_it_is(raw: bytes, shown: str) -> None:
    rejection = decode(raw)
    assert isinstance(rejection, Rejection) and rejection.index is None
    assert rejection.error.startswith("expected a JSON object or an array of objects")
    assert shown in rejection.error


def test_an_empty_array_is_rejected() -> None:
    rejection = decode(b"[]")
    assert isinstance(rejection, Rejection) and "empty array" in rejection.error


@pytest.mark.parametrize("element", [None, "click", 42, [CLICK]])
def test_a_batch_element_that_is_not_an_object_is_rejected_at_its_index(element: Any) -> None:
    events, rejections = parse_message(as_bytes([CLICK, element]), "clicks", USD)
    assert len(events) == 1
    assert [(r.index, r.error.startswith("expected an event object")) for r in rejections] == [(1, True)]


def test_each_batch_element_is_judged_on_its_own_and_rejections_carry_their_indexes() -> None:
    batch = [CLICK, {**CLICK, "event_id": ""}, {**CLICK, "event_id": "c2"}, 7, {**CLICK, "type": "impression"},
             {**CLICK, "event_id": "c3"}]
    events, rejections = parse_message(as_bytes(batch), "clicks", USD)
    assert [e.event_id for e in events] == ["c1", "c2", "c3"]
    assert [r.index for r in rejections] == [1, 3, 4]


def test_a_message_that_cannot_be_decoded_is_one_rejection_with_no_index() -> None:
    assert parse_message(b"[{", "clicks", USD) == ([], [decode(b"[{")])


def test_a_single_valid_object_gives_one_event_and_no_rejection() -> None:
    events, rejections = parse_message(as_bytes(ORDER), "orders", USD)
    assert rejections == [] and len(events) == 1


def test_an_unknown_topic_is_rejected() -> None:
    assert validate(CLICK, "pageviews", USD) == "unknown input topic 'pageviews'"


# --- required fields, per type ---


@pytest.mark.parametrize(("topic", "field"), REQUIRED_CASES)
def test_each_required_field_missing_is_rejected_naming_it(topic: str, field: str) -> None:
    assert rejected(topic, **{field: None}) == f"missing required field(s): {field}"


def test_several_missing_fields_are_named_together() -> None:
    assert rejected("orders", order_id=None, revenue=None) == "missing required field(s): order_id, revenue"


@pytest.mark.parametrize(("topic", "field"), REQUIRED_STRINGS)
def test_each_required_string_empty_is_rejected_naming_it(topic: str, field: str) -> None:
    assert rejected(topic, **{field: ""}) == f'{field} must be longer than or equal to 1 characters, got ""'


@pytest.mark.parametrize(("topic", "field"), REQUIRED_STRINGS)
def test_each_required_string_of_another_type_is_rejected_naming_it_and_the_value(topic: str, field: str) -> None:
    assert rejected(topic, **{field: 17}) == f"{field} must be string, got 17"


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_an_empty_type_is_rejected(topic: str) -> None:
    assert f"type must be '{TOPIC_TYPES[topic]}'" in rejected(topic, type="")


# --- lengths ---


@pytest.mark.parametrize(
    ("topic", "field", "limit"),
    [(topic, "event_id", 128) for topic in INPUT_TOPICS]
    + [(topic, "tracking_id", 128) for topic in ("impressions", "clicks", "leads", "orders")]
    + [(topic, "channel", 64) for topic in ("impressions", "clicks", "spend")],
)
def test_string_lengths_are_accepted_up_to_the_limit_and_rejected_one_beyond(
    topic: str, field: str, limit: int
) -> None:
    assert not isinstance(one(topic, **{field: "x" * limit}), str)
    assert rejected(topic, **{field: "x" * (limit + 1)}).startswith(
        f"{field} must be shorter than or equal to {limit} characters, got \"xxx"
    )


def test_a_one_character_id_is_enough() -> None:
    assert isinstance(one("orders", event_id="e", tracking_id="t", order_id="o"), Order)


# --- type must match the topic ---


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_a_type_that_does_not_match_the_topic_is_rejected_naming_both(topic: str) -> None:
    other = next(t for t in TOPIC_TYPES.values() if t != TOPIC_TYPES[topic])
    assert rejected(topic, type=other) == f"type must be '{TOPIC_TYPES[topic]}' on topic {topic}, got '{other}'"


def test_a_type_that_is_not_a_string_is_rejected() -> None:
    assert rejected("clicks", type=5).endswith("got 5")


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_every_topic_accepts_its_valid_example(topic: str) -> None:
    event = one(topic)
    assert not isinstance(event, str)
    assert event.ts == TS and event.event_id == VALID[topic]["event_id"]


# --- ts: integer epoch milliseconds, or ISO-8601 with an offset ---

# What orjson can decode (the only parser in front of validate): integers from -2^63 to 2^64-1.
JSON_INTEGERS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
JSON_FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**15), 10**15).map(float)
TS_RULE = "ts must be integer epoch milliseconds or an ISO-8601 date-time with a UTC offset"


def test_ts_as_a_bool_is_rejected() -> None:
    assert rejected("clicks", ts=True) == f"{TS_RULE}, got true"


def test_ts_as_a_float_with_a_fraction_is_rejected() -> None:
    assert rejected("clicks", ts=TS + 0.5) == f"{TS_RULE}, got {TS + 0.5}"


def test_ts_as_a_float_without_a_fraction_is_the_integer_it_equals() -> None:
    # JSON Schema (the single source of truth) counts 1.0 as an integer: take it as one, never crash on it.
    event = one("clicks", ts=float(TS))
    assert event.ts == TS and type(event.ts) is int


def test_ts_negative_is_rejected() -> None:
    assert rejected("clicks", ts=-1) == f"{TS_RULE}, got -1"


def test_ts_zero_is_the_epoch() -> None:
    assert one("clicks", ts=0).ts == 0


def test_ts_beyond_year_9999_is_rejected() -> None:
    assert rejected("clicks", ts=253402300800000).startswith(TS_RULE)


def test_ts_as_a_string_that_is_not_a_date_is_rejected() -> None:
    assert rejected("clicks", ts="yesterday") == f'{TS_RULE}, got "yesterday"'


def test_ts_as_iso_without_an_offset_is_rejected() -> None:
    assert rejected("clicks", ts="2025-11-22T08:26:40") == f'{TS_RULE}, got "2025-11-22T08:26:40"'


def test_ts_as_iso_with_z_is_utc() -> None:
    assert one("clicks", ts="2025-11-22T08:26:40Z").ts == TS
    assert one("clicks", ts="2025-11-22T08:26:40.123Z").ts == TS + 123


def test_ts_as_iso_with_an_offset_is_normalised_to_the_same_instant() -> None:
    assert one("clicks", ts="2025-11-22T10:26:40+02:00").ts == TS
    assert one("clicks", ts="2025-11-22T03:26:40.250-05:00").ts == TS + 250


def test_ts_as_iso_with_a_lower_case_t_and_z_is_accepted_as_rfc_3339_allows() -> None:
    assert one("clicks", ts="2025-11-22t08:26:40z").ts == TS


def test_ts_as_iso_with_an_impossible_date_is_rejected() -> None:
    assert "2025-13-22" in rejected("clicks", ts="2025-13-22T08:26:40Z")
    assert "2025-02-30" in rejected("clicks", ts="2025-02-30T08:26:40Z")


def test_ts_as_iso_before_1970_is_rejected_like_a_negative_integer() -> None:
    assert "1969-12-31T23:59:59Z" in rejected("clicks", ts="1969-12-31T23:59:59Z")


def test_ts_as_iso_with_microseconds_keeps_whole_milliseconds() -> None:
    assert parse_ts("2025-11-22T08:26:40.123999Z") == TS + 123


@settings(max_examples=200, deadline=None)
@given(
    ms=st.integers(min_value=0, max_value=253402300799999 - 86_400_000),
    offset_minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    zulu=st.booleans(),
)
def test_ts_as_iso_always_means_the_same_epoch_millisecond(ms: int, offset_minutes: int, zulu: bool) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    if zulu:
        text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    else:
        text = moment.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat(timespec="milliseconds")
    assert parse_ts(text) == ms
    assert one("leads", ts=text).ts == ms


# --- money ---


@pytest.mark.parametrize(
    ("topic", "field", "message"),
    [("impressions", "cost", "cost must be a number >= 0, got -0.01"),
     ("clicks", "cost", "cost must be a number >= 0, got -0.01"),
     ("orders", "revenue", "revenue must be bigger than or equal to 0, got -0.01"),
     ("spend", "amount", "amount must be bigger than or equal to 0, got -0.01")],
)
def test_negative_money_is_rejected_naming_the_field_and_the_value(topic: str, field: str, message: str) -> None:
    assert rejected(topic, **{field: -0.01}) == message


@pytest.mark.parametrize(("topic", "field"), [("clicks", "cost"), ("orders", "revenue"), ("spend", "amount")])
def test_money_that_is_not_a_number_is_rejected(topic: str, field: str) -> None:
    for bad in ("12.5", True):
        message = rejected(topic, **{field: bad})
        assert message.startswith(f"{field} must be") and message.endswith(orjson.dumps(bad).decode())


@pytest.mark.parametrize(("topic", "field"), [("clicks", "cost"), ("orders", "revenue"), ("spend", "amount")])
def test_zero_money_is_accepted(topic: str, field: str) -> None:
    assert not isinstance(one(topic, **{field: 0}), str)


def test_money_given_as_an_integer_becomes_a_float() -> None:
    order = one("orders", revenue=120)
    assert order.revenue == 120.0 and type(order.revenue) is float


@pytest.mark.parametrize("margin", [-0.1, 1.1, 2])
def test_margin_outside_zero_to_one_is_rejected(margin: float) -> None:
    assert rejected("orders", margin=margin) == f"margin must be a number between 0 and 1, got {margin}"


@pytest.mark.parametrize("margin", [0, 0.35, 1])
def test_margin_inside_zero_to_one_is_kept(margin: float) -> None:
    assert one("orders", margin=margin).margin == margin


def test_an_order_without_margin_leaves_it_to_default_margin() -> None:
    assert one("orders").margin is None


@pytest.mark.parametrize("topic", ["orders", "spend", "clicks", "impressions"])
def test_an_unknown_currency_is_rejected_naming_it(topic: str) -> None:
    extra = {"cost": 1.0} if topic in ("clicks", "impressions") else {}
    message = one(topic, FX, currency="JPY", **extra)
    assert isinstance(message, str) and "'JPY'" in message and "FX_RATES" in message


def test_a_currency_that_is_not_an_iso_code_is_rejected() -> None:
    assert rejected("orders", currency="eur") == 'currency must be an ISO 4217 code like USD, got "eur"'


def test_without_fx_rates_only_the_reporting_currency_is_accepted() -> None:
    assert isinstance(one("orders", USD, currency="EUR"), str)
    assert one("orders", USD, currency="USD").revenue == 120.0


def test_order_revenue_is_converted_with_fx_rates() -> None:
    assert one("orders", FX, currency="EUR", revenue=100.0).revenue == pytest.approx(108.0)


def test_spend_amount_is_converted_with_fx_rates() -> None:
    assert one("spend", FX, currency="GBP", amount=10.0).amount == pytest.approx(12.7)


def test_click_cost_is_converted_with_fx_rates() -> None:
    assert one("clicks", FX, currency="EUR", cost=2.0).cost == pytest.approx(2.16)


def test_money_in_the_reporting_currency_or_without_a_currency_is_unchanged() -> None:
    assert one("orders", FX, currency="USD", revenue=100.0).revenue == 100.0
    assert one("orders", FX, currency=None, revenue=100.0).revenue == 100.0
    assert one("spend", FX, amount=10.0).amount == 10.0


def test_money_is_converted_once_and_stays_converted_through_the_row_form() -> None:
    order = one("orders", FX, currency="EUR", revenue=100.0)
    again = from_row(orjson.loads(orjson.dumps(list(order))))
    assert again == order and again.revenue == pytest.approx(108.0)


def test_a_reporting_currency_other_than_usd_converts_usd_too() -> None:
    eur = Settings.from_env({"REPORTING_CURRENCY": "EUR", "FX_RATES": "USD=0.9"})
    assert one("orders", eur, currency="USD", revenue=100.0).revenue == pytest.approx(90.0)
    assert one("orders", eur, currency="EUR", revenue=100.0).revenue == 100.0
    assert isinstance(one("orders", eur, currency="GBP"), str)


def test_to_reporting_names_the_field_and_the_currency() -> None:
    with pytest.raises(ValueError, match=r"^amount: currency 'CHF' has no rate in FX_RATES \(known: EUR, GBP, USD\)$"):
        to_reporting(1.0, "CHF", FX, "amount")


def test_a_touch_without_cost_costs_nothing() -> None:
    assert one("clicks").cost == 0.0
    assert one("impressions", cost=None).cost == 0.0


# --- optional fields, defaults, extra fields ---


@pytest.mark.parametrize("topic", ["impressions", "clicks", "spend"])
def test_campaign_defaults_to_none_label(topic: str) -> None:
    assert one(topic).campaign == "(none)"
    assert validate({**VALID[topic], "campaign": None}, topic, USD).campaign == "(none)"
    assert one(topic, campaign="").campaign == "(none)"
    assert one(topic, campaign="brand").campaign == "brand"


def test_a_campaign_that_is_not_a_string_is_rejected() -> None:
    assert rejected("clicks", campaign=5) == "campaign must be a string of at most 256 characters, got 5"


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_unknown_extra_fields_are_accepted_and_ignored(topic: str) -> None:
    extra = {"utm_source": "newsletter", "nested": {"a": [1, 2]}, "revenue_eur": -5, "ts2": "never"}
    assert one(topic, **extra) == one(topic)


def test_affiliate_id_is_kept_on_clicks() -> None:
    assert one("clicks", affiliate_id="anna_fit").affiliate_id == "anna_fit"
    assert one("clicks").affiliate_id is None


def test_affiliate_id_is_ignored_on_impressions() -> None:
    assert one("impressions", affiliate_id="anna_fit").affiliate_id is None


def test_an_empty_affiliate_id_on_a_click_is_rejected() -> None:
    assert rejected("clicks", affiliate_id="") == 'affiliate_id must be a string of 1-128 characters, got ""'


def test_promo_code_and_customer_id_are_kept_on_orders() -> None:
    order = one("orders", promo_code="ANNA10", customer_id="cust-1")
    assert (order.promo_code, order.customer_id) == ("ANNA10", "cust-1")


def test_an_empty_promo_code_is_no_promo_code() -> None:
    assert one("orders", promo_code="").promo_code is None


def test_customer_id_is_kept_on_leads() -> None:
    assert one("leads", customer_id="cust-1").customer_id == "cust-1"


@pytest.mark.parametrize("topic", ["leads", "orders"])
def test_an_empty_customer_id_is_rejected(topic: str) -> None:
    assert rejected(topic, customer_id="") == 'customer_id must be a string of 1-128 characters, got ""'


# --- normalised events ---


def test_events_normalise_to_their_named_tuples() -> None:
    assert one("impressions") == Touch("i", "i1", TS, "t1", "facebook", "(none)", None, 0.0)
    assert one("clicks", cost=0.5, campaign="brand") == Touch("c", "c1", TS, "t1", "google_ads", "brand", None, 0.5)
    assert one("leads") == Lead("l", "l1", TS, "t1", None)
    assert one("orders", margin=0.4) == Order("o", "o1", TS, "t1", "A-1", 120.0, 0.4, None, None)
    assert one("spend") == Spend("s", "s1", TS, "google_ads", "(none)", 50.0)


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_an_event_round_trips_through_its_json_row(topic: str) -> None:
    event = one(topic, FX)
    row = orjson.loads(orjson.dumps(list(event)))
    assert from_row(row) == event
    assert type(from_row(row)) is type(event)


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_an_event_row_with_a_field_too_many_or_too_few_is_refused(topic: str) -> None:
    row = list(one(topic, FX))
    for wrong in (row[:-1], [*row, None]):
        with pytest.raises(ValueError, match=f"has {len(row)} fields, not {len(wrong)}"):
            from_row(wrong)


# --- error messages name the field and the bad value ---


@pytest.mark.parametrize(
    ("topic", "changes", "field", "value"),
    [
        ("orders", {"revenue": -5}, "revenue", "-5"),
        ("orders", {"margin": 1.5}, "margin", "1.5"),
        ("orders", {"order_id": 42}, "order_id", "42"),
        ("spend", {"amount": "lots"}, "amount", '"lots"'),
        ("clicks", {"cost": -2}, "cost", "-2"),
        ("clicks", {"channel": ""}, "channel", '""'),
        ("clicks", {"ts": "noon"}, "ts", '"noon"'),
        ("leads", {"tracking_id": None, "event_id": 9}, "event_id", "9"),
        ("orders", {"currency": "XXX"}, "currency", "XXX"),
    ],
)
def test_error_messages_name_the_field_and_the_bad_value(
    topic: str, changes: dict[str, Any], field: str, value: str
) -> None:
    message = validate({**VALID[topic], **changes}, topic, USD)
    assert isinstance(message, str)
    assert field in message and value in message


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | JSON_INTEGERS | JSON_FLOATS | st.text(),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                          max_leaves=10),
       topic=st.sampled_from(INPUT_TOPICS), field=st.sampled_from(["ts", "revenue", "amount", "cost", "currency",
                                                                   "margin", "campaign", "channel", "event_id"]))
def test_any_json_value_in_any_field_is_either_an_event_or_a_rejection_never_an_exception(
    value: Any, topic: str, field: str
) -> None:
    result = validate({**VALID[topic], field: value}, topic, FX)
    assert isinstance(result, str | Touch | Lead | Order | Spend | Refund)
    if isinstance(result, str):
        assert result


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode), topic=st.sampled_from(INPUT_TOPICS))
def test_any_bytes_give_events_or_rejections_never_an_exception(raw: bytes, topic: str) -> None:
    events, rejections = parse_message(raw, topic, FX)
    assert all(isinstance(r, Rejection) and r.error for r in rejections)
    assert events or rejections


# --- consent (CONTRACT.md section 10) ---


@pytest.mark.parametrize("topic", ["impressions", "clicks", "leads", "orders"])
def test_an_event_without_consent_keeps_no_identifier_of_the_visitor(topic: str) -> None:
    with_consent = one(topic, customer_id="cust-9" if topic in ("leads", "orders") else None)
    without = one(topic, consent=False, customer_id="cust-9" if topic in ("leads", "orders") else None)
    assert without.tracking_id == ANONYMOUS != with_consent.tracking_id
    if topic in ("leads", "orders"):
        assert (without.customer_id, with_consent.customer_id) == (None, "cust-9")
    if topic == "orders":
        assert without.order_id == ANONYMOUS and with_consent.order_id == "A-1"
        assert without.revenue == with_consent.revenue
    changed = {"tracking_id", "customer_id", "order_id"}
    assert {f: v for f, v in without._asdict().items() if f not in changed} == {
        f: v for f, v in with_consent._asdict().items() if f not in changed}
    assert one(topic, consent=True) == one(topic)


@pytest.mark.parametrize(("value", "shown"), [("no", '"no"'), (0, "0"), (None, None)])
def test_consent_must_be_a_boolean(value: Any, shown: str | None) -> None:
    if value is None:  # absent: consent given
        assert one("clicks").tracking_id == "t1"
        return
    assert rejected("clicks", consent=value) == f"consent must be boolean, got {shown}"
