"""Affiliate and influencer records (CONTRACT.md section 3): what a valid record is.

A record registers who earns commissions and which promo codes are theirs:

    {"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
     "commission_rate": 0.10, "assist_fee": 2.0}

`schemas/affiliate.json` says what a valid record is (`promo_codes` defaults to [] and
`assist_fee` to 0). `parse_affiliate` turns one decoded record into an `Affiliate` or the
reason it is not one; the worker builds its affiliate table with it from the compacted
`affiliates` topic (key = affiliate_id), which `attribution affiliates load` (`streams.commands.affiliates`)
and the simulator publish to.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import fastjsonschema
import orjson

from streams.core.attribution import Affiliate
from streams.core.events import SCHEMA_DIR, schema_error, short_repr

__all__ = ["Affiliate", "parse_affiliate", "parse_affiliates", "to_record"]


@cache
def _validator():
    return fastjsonschema.compile(orjson.loads((SCHEMA_DIR / "affiliate.json").read_bytes()))


def parse_affiliate(obj: Any) -> Affiliate | str:
    """One decoded record -> an `Affiliate`, or the reason it is not a valid record."""
    if not isinstance(obj, dict):
        return f"expected an affiliate object, got {type(obj).__name__} {short_repr(obj)}"
    try:
        _validator()(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        return schema_error(exc)
    return Affiliate(
        obj["affiliate_id"],
        obj["channel"],
        tuple(obj.get("promo_codes") or ()),
        float(obj["commission_rate"]),
        float(obj.get("assist_fee") or 0.0),
    )


def parse_affiliates(records: Sequence[Any]) -> tuple[list[Affiliate], list[str]]:
    """A list of decoded records -> the valid affiliates and one error per bad record.

    Errors name the record by its index in the list. Besides the schema, a list must not
    register one `affiliate_id` twice, nor one promo code (case-insensitively) to two records.
    """
    valid: list[Affiliate] = []
    errors: list[str] = []
    ids: dict[str, int] = {}
    codes: dict[str, tuple[str, int]] = {}
    for index, obj in enumerate(records):
        result = parse_affiliate(obj)
        if isinstance(result, str):
            errors.append(f"record {index}: {result}")
            continue
        if result.affiliate_id in ids:
            first = ids[result.affiliate_id]
            errors.append(f"record {index}: affiliate_id {result.affiliate_id!r} repeats record {first}")
            continue
        clash = next((code for code in result.promo_codes if code.casefold() in codes), None)
        if clash is not None:
            owner, owner_index = codes[clash.casefold()]
            errors.append(
                f"record {index}: promo_codes {clash!r} is already registered to {owner!r} (record {owner_index})"
            )
            continue
        ids[result.affiliate_id] = index
        codes.update({code.casefold(): (result.affiliate_id, index) for code in result.promo_codes})
        valid.append(result)
    return valid, errors


def to_record(affiliate: Affiliate) -> dict[str, Any]:
    """The JSON form of an affiliate, as published on the `affiliates` topic."""
    return {
        "affiliate_id": affiliate.affiliate_id,
        "channel": affiliate.channel,
        "promo_codes": list(affiliate.promo_codes),
        "commission_rate": affiliate.commission_rate,
        "assist_fee": affiliate.assist_fee,
    }
