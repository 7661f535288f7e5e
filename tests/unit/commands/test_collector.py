"""The collector's pure parts: pixel parameters -> event, batch bodies -> events, routing, auth."""

from __future__ import annotations

import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.commands.collector import (
    GIF,
    MAX_BODY_BYTES,
    TYPE_TOPICS,
    authorized,
    bearer_token,
    consent_given,
    cookie_tracking_id,
    message_key,
    new_event_id,
    new_tracking_id,
    parse_batch,
    pixel_body_params,
    pixel_event,
    route_event,
)
from streams.config import Settings
from streams.core.events import Lead, Touch, validate

SETTINGS = Settings.from_env({})
NOW = 1_763_800_000_000


def event(params: dict[str, str], tid: str = "visitor-1") -> dict | str:
    return pixel_event(params, tid, NOW, "ev-1")


# --- pixel parameters -> contract event ----------------------------------------------------


def test_pixel_impression_has_the_contract_fields():
    assert event({"e": "impression", "ch": "google_ads", "cmp": "brand"}) == {
        "event_id": "ev-1", "type": "impression", "ts": NOW, "tracking_id": "visitor-1",
        "channel": "google_ads", "campaign": "brand",
    }


def test_pixel_click_carries_the_affiliate():
    result = event({"e": "click", "ch": "affiliate", "cmp": "spring", "aff": "anna_fit"})
    assert result["affiliate_id"] == "anna_fit"
    assert isinstance(validate(result, "clicks", SETTINGS), Touch)


def test_pixel_lead_maps_cid_to_customer_id_and_drops_touch_fields():
    result = event({"e": "lead", "cid": "cust-9", "ch": "ignored", "aff": "ignored"})
    assert result == {"event_id": "ev-1", "type": "lead", "ts": NOW, "tracking_id": "visitor-1",
                      "customer_id": "cust-9"}
    assert isinstance(validate(result, "leads", SETTINGS), Lead)


def test_pixel_impression_does_not_take_an_affiliate_or_cost():
    result = event({"e": "impression", "ch": "x", "aff": "a", "cost": "5"})
    assert "affiliate_id" not in result and "cost" not in result


def test_pixel_given_ts_in_milliseconds_wins_over_now():
    assert event({"e": "click", "ch": "x", "ts": "1700000000123"})["ts"] == 1_700_000_000_123


def test_pixel_given_iso_ts_is_kept_as_a_string_for_the_validator():
    result = event({"e": "click", "ch": "x", "ts": "2025-11-22T10:00:00+00:00"})
    assert result["ts"] == "2025-11-22T10:00:00+00:00"
    assert validate(result, "clicks", SETTINGS).ts == 1_763_805_600_000


def test_pixel_bad_ts_is_rejected_by_the_validator():
    result = event({"e": "click", "ch": "x", "ts": "yesterday"})
    assert isinstance(validate(result, "clicks", SETTINGS), str)


def test_pixel_given_event_id_wins_so_a_resent_beacon_is_a_duplicate():
    assert event({"e": "click", "ch": "x", "eid": "abc"})["event_id"] == "abc"


def test_pixel_empty_optional_parameters_are_absent():
    assert "campaign" not in event({"e": "click", "ch": "x", "cmp": ""})


def test_pixel_click_without_channel_fails_validation_naming_the_field():
    error = validate(event({"e": "click"}), "clicks", SETTINGS)
    assert isinstance(error, str) and "channel" in error


@pytest.mark.parametrize("kind", ["order", "spend"])
def test_pixel_refuses_money_events(kind):
    error = event({"e": kind, "revenue": "100", "amount": "5"})
    assert isinstance(error, str)
    assert "/v1/events" in error and "money" in error


def test_pixel_without_event_type_is_refused():
    assert event({"ch": "x"}) == "e (impression, click or lead) is required"


def test_pixel_unknown_event_type_is_refused_naming_it():
    assert "'pageview'" in event({"e": "pageview", "ch": "x"})


def test_new_ids_are_unique_and_valid():
    assert new_tracking_id() != new_tracking_id()
    assert uuid.UUID(new_event_id()).version == 4
    assert cookie_tracking_id(new_tracking_id()) is not None


@pytest.mark.parametrize("value", [None, "", "a" * 129, "has space", "semi;colon", "é"])
def test_unusable_cookie_values_get_a_new_tracking_id(value):
    assert cookie_tracking_id(value) is None


def test_a_usable_cookie_is_reused():
    assert cookie_tracking_id("05c14b316fbc4313be711c7c2cc61d98") == "05c14b316fbc4313be711c7c2cc61d98"


def test_gif_is_a_1x1_gif():
    assert GIF.startswith(b"GIF89a") and GIF.endswith(b";")
    assert int.from_bytes(GIF[6:8], "little") == 1 and int.from_bytes(GIF[8:10], "little") == 1


# --- beacon bodies ---------------------------------------------------------------------------


def test_beacon_form_body():
    assert pixel_body_params(b"e=click&ch=email&cmp=nov", "application/x-www-form-urlencoded") == {
        "e": "click", "ch": "email", "cmp": "nov"}


def test_beacon_text_plain_body_is_read_as_a_form():
    assert pixel_body_params(b"e=lead&cid=c1", "text/plain") == {"e": "lead", "cid": "c1"}


def test_beacon_json_body_numbers_become_parameters():
    assert pixel_body_params(b'{"e": "click", "ch": "x", "ts": 1700000000000, "aff": null}', "application/json") == {
        "e": "click", "ch": "x", "ts": "1700000000000"}


def test_beacon_json_body_must_be_an_object():
    assert "JSON object" in pixel_body_params(b"[1]", "application/json")


def test_beacon_broken_json_body_is_an_error():
    assert "not valid JSON" in pixel_body_params(b"{oops", "application/json")


def test_beacon_empty_body_means_parameters_in_the_query():
    assert pixel_body_params(b"", "text/plain") == {}


# --- batch bodies ----------------------------------------------------------------------------


def test_batch_json_array():
    assert parse_batch(b'[{"a": 1}, 2]') == [{"a": 1}, 2]


def test_batch_json_lines_skip_blank_lines_and_crlf():
    assert parse_batch(b'{"a": 1}\r\n\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]


def test_batch_single_object_is_one_line():
    assert parse_batch(b'{"a": 1}') == [{"a": 1}]


def test_batch_bom_is_ignored():
    assert parse_batch(b'\xef\xbb\xbf[{"a": 1}]') == [{"a": 1}]


def test_batch_empty_array_is_no_events():
    assert parse_batch(b"[]") == []


@pytest.mark.parametrize("body", [b"", b"  \n ", b"hello", b"[1, 2", b'{"a": 1}\nnot json\n', b"\xff\xfe"])
def test_batch_that_is_not_json_is_refused_as_a_whole(body):
    assert isinstance(parse_batch(body), str)


def test_batch_bad_line_is_named():
    assert "line 2" in parse_batch(b'{"a": 1}\n{oops}')


_VALUES = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)


@given(st.lists(st.dictionaries(st.text(max_size=5), _VALUES, max_size=3), max_size=8))
def test_batch_array_and_json_lines_read_the_same(objs):
    array = orjson.dumps(objs)
    lines = b"\n".join(orjson.dumps(o) for o in objs)
    assert parse_batch(array) == objs
    if objs:
        assert parse_batch(lines) == objs


def test_max_body_is_one_mebibyte():
    assert MAX_BODY_BYTES == 1024 * 1024


# --- routing ---------------------------------------------------------------------------------

ORDER = {"event_id": "o-1", "type": "order", "ts": NOW, "tracking_id": "t1", "order_id": "A1", "revenue": 120.0}
SPEND = {"event_id": "s-1", "type": "spend", "ts": NOW, "channel": "tiktok", "amount": 50}


def test_every_type_routes_to_its_topic():
    assert TYPE_TOPICS == {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders",
                           "spend": "spend", "refund": "refunds"}


def test_valid_order_routes_to_orders_keyed_by_tracking_id():
    assert route_event(ORDER, SETTINGS) == ("orders", b"t1")


def test_spend_is_keyed_by_channel():
    assert route_event(SPEND, SETTINGS) == ("spend", b"tiktok")
    assert message_key({"channel": "x"}) == b"x"


def test_missing_type_is_a_rejection():
    assert route_event({k: v for k, v in ORDER.items() if k != "type"}, SETTINGS) == "missing required field(s): type"


@pytest.mark.parametrize("kind", ["purchase", 3, "", "Order", ["order"]])
def test_unknown_type_is_a_rejection_naming_it(kind):
    error = route_event({**ORDER, "type": kind}, SETTINGS)
    assert isinstance(error, str) and error.startswith("type must be one of")


def test_non_object_is_a_rejection():
    assert route_event("order", SETTINGS) == "expected an event object, got str"


def test_invalid_event_is_a_rejection_with_the_validators_reason():
    error = route_event({**ORDER, "revenue": -5}, SETTINGS)
    assert isinstance(error, str) and "revenue" in error


def test_unconvertible_currency_is_a_rejection():
    error = route_event({**ORDER, "currency": "JPY"}, SETTINGS)
    assert isinstance(error, str) and "JPY" in error


# --- auth ------------------------------------------------------------------------------------


KEYS = ("key-one", "key-two")


@pytest.mark.parametrize("header", ["Bearer key-one", "Bearer key-two", "bearer key-one", "Bearer  key-two "])
def test_configured_keys_are_authorized(header):
    assert authorized(header, KEYS)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Bearer key", "Bearer key-one-more", "Basic key-one", "key-one",
               "Bearer KEY-ONE", "Bearer ключ"],
)
def test_missing_or_wrong_keys_are_not_authorized(header):
    assert not authorized(header, KEYS)


def test_no_keys_configured_means_closed():
    assert not authorized("Bearer anything", ())
    assert not authorized("Bearer ", ())


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


# --- consent (CONTRACT.md section 10) ---


@pytest.mark.parametrize(("params", "consented"), [
    ({}, True), ({"consent": "1"}, True), ({"consent": "true"}, True), ({"consent": "0"}, False),
    ({"consent": "false"}, False), ({"consent": " FALSE "}, False), ({"given": "0"}, False), ({"given": "1"}, True),
])
def test_consent_is_refused_only_by_0_or_false(params: dict[str, str], consented: bool) -> None:
    assert consent_given(params) is consented
