"""Affiliate and influencer records (CONTRACT.md section 3): schemas/affiliate.json and streams/core/affiliates.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.core.affiliates import Affiliate, parse_affiliate, parse_affiliates, to_record

ANNA = {"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
        "commission_rate": 0.10, "assist_fee": 2.0}


def test_a_valid_record_becomes_a_frozen_affiliate() -> None:
    affiliate = parse_affiliate(ANNA)
    assert affiliate == Affiliate("anna_fit", "influencer", ("ANNA10",), 0.10, 2.0)
    with pytest.raises(AttributeError):
        affiliate.commission_rate = 0.5  # type: ignore[misc, union-attr]
    assert hash(affiliate)


def test_promo_codes_and_assist_fee_default_to_empty_and_zero() -> None:
    affiliate = parse_affiliate({"affiliate_id": "blog", "channel": "affiliate", "commission_rate": 0})
    assert affiliate == Affiliate("blog", "affiliate", (), 0.0, 0.0)


def test_integers_count_as_numbers_and_extra_fields_are_ignored() -> None:
    affiliate = parse_affiliate({**ANNA, "commission_rate": 1, "assist_fee": 3, "note": "top seller"})
    assert affiliate == Affiliate("anna_fit", "influencer", ("ANNA10",), 1.0, 3.0)
    assert isinstance(affiliate, Affiliate) and isinstance(affiliate.commission_rate, float)


def test_to_record_round_trips() -> None:
    affiliate = parse_affiliate(ANNA)
    assert isinstance(affiliate, Affiliate)
    assert parse_affiliate(orjson.loads(orjson.dumps(to_record(affiliate)))) == affiliate
    assert to_record(affiliate) == ANNA


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"affiliate_id": None}, "affiliate_id must be string"),
        ({"affiliate_id": ""}, "affiliate_id must be longer than or equal to 1 characters"),
        ({"affiliate_id": "x" * 129}, "affiliate_id must be shorter than or equal to 128 characters"),
        ({"channel": 7}, "channel must be string, got 7"),
        ({"channel": ""}, "channel must be longer than or equal to 1"),
        ({"commission_rate": 1.5}, "commission_rate must be smaller than or equal to 1, got 1.5"),
        ({"commission_rate": -0.1}, "commission_rate must be bigger than or equal to 0, got -0.1"),
        ({"commission_rate": "10%"}, "commission_rate must be number, got \"10%\""),
        ({"commission_rate": True}, "commission_rate must be number, got true"),
        ({"assist_fee": -2}, "assist_fee must be bigger than or equal to 0, got -2"),
        ({"assist_fee": "2"}, "assist_fee must be number"),
        ({"promo_codes": "ANNA10"}, "promo_codes must be array, got \"ANNA10\""),
        ({"promo_codes": ["ANNA10", ""]}, "promo_codes[1] must be longer than or equal to 1"),
        ({"promo_codes": ["ANNA10", 10]}, "promo_codes[1] must be string, got 10"),
        ({"promo_codes": ["ANNA10", "ANNA10"]}, "promo_codes must contain unique items"),
    ],
)
def test_each_kind_of_bad_field_is_named(change: dict[str, Any], error: str) -> None:
    result = parse_affiliate({**ANNA, **change})
    assert isinstance(result, str)
    assert error in result


@pytest.mark.parametrize("missing", ["affiliate_id", "channel", "commission_rate"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    record = {k: v for k, v in ANNA.items() if k != missing}
    assert parse_affiliate(record) == f"missing required field(s): {missing}"


@pytest.mark.parametrize("value", [None, 5, "anna_fit", ["anna_fit"]])
def test_a_record_that_is_not_an_object_is_rejected(value: Any) -> None:
    result = parse_affiliate(value)
    assert isinstance(result, str) and result.startswith("expected an affiliate object, got")


def test_errors_name_the_record_index_and_valid_records_still_pass() -> None:
    records = [ANNA, {"affiliate_id": "blog", "channel": "affiliate"}, 3,
               {"affiliate_id": "deals", "channel": "affiliate", "commission_rate": 0.05}]
    valid, errors = parse_affiliates(records)
    assert [a.affiliate_id for a in valid] == ["anna_fit", "deals"]
    assert errors == ["record 1: missing required field(s): commission_rate",
                      "record 2: expected an affiliate object, got int 3"]


def test_an_affiliate_id_twice_in_one_list_is_an_error() -> None:
    valid, errors = parse_affiliates([ANNA, {**ANNA, "promo_codes": []}])
    assert len(valid) == 1
    assert errors == ["record 1: affiliate_id 'anna_fit' repeats record 0"]


def test_a_promo_code_registered_to_two_affiliates_is_an_error_whatever_its_case() -> None:
    other = {"affiliate_id": "copycat", "channel": "influencer", "promo_codes": ["anna10"], "commission_rate": 0.2}
    valid, errors = parse_affiliates([ANNA, other])
    assert [a.affiliate_id for a in valid] == ["anna_fit"]
    assert errors == ["record 1: promo_codes 'anna10' is already registered to 'anna_fit' (record 0)"]
