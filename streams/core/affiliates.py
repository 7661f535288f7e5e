"""Affiliate and influencer records (CONTRACT.md section 3) and `attribution affiliates load FILE`.

A record registers who earns commissions and which promo codes are theirs:

    {"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
     "commission_rate": 0.10, "assist_fee": 2.0}

`schemas/affiliate.json` says what a valid record is (`promo_codes` defaults to [] and
`assist_fee` to 0). `parse_affiliate` turns one decoded record into an `Affiliate` or the
reason it is not one; the worker builds its affiliate table with it from the compacted
`affiliates` topic (key = affiliate_id), which `load` and the simulator publish to.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from aiokafka import AIOKafkaProducer

from streams.config import Settings
from streams.core.attribution import Affiliate
from streams.core.events import SCHEMA_DIR, schema_error, short_repr
from streams.kafka.topics import AFFILIATES_TOPIC, ensure_topics, make_producer, wait_for_broker

__all__ = ["Affiliate", "load", "parse_affiliate", "parse_affiliates", "publish", "read_records", "to_record"]


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


def read_records(path: str | Path) -> list[Any] | str:
    """The JSON list in a file, or what is wrong with the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"{path} is not valid JSON: {exc}"
    if not isinstance(data, list):
        return f"{path}: expected a JSON list of affiliate records, got {type(data).__name__} {short_repr(data)}"
    return data


async def publish(producer: AIOKafkaProducer, affiliates: Iterable[Affiliate]) -> int:
    """Send each affiliate to the compacted `affiliates` topic (key = affiliate_id) and wait for the acks."""
    futures = [
        await producer.send(AFFILIATES_TOPIC, key=a.affiliate_id.encode(), value=orjson.dumps(to_record(a)))
        for a in affiliates
    ]
    await asyncio.gather(*futures)
    return len(futures)


async def publish_to(bootstrap: str, partitions: int, affiliates: Sequence[Affiliate]) -> int:
    """Make sure the topics exist, then publish `affiliates` with a producer of its own."""
    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, partitions)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        return await publish(producer, affiliates)
    finally:
        await producer.stop()


def load(settings: Settings, args: argparse.Namespace) -> int:
    """`attribution affiliates load FILE`: validate the file's records and publish the valid ones.

    Exit status 0 when every record was published, 1 when some were rejected (the valid ones
    are still published), 2 when the file cannot be read as a JSON list.
    """
    records = read_records(args.file)
    if isinstance(records, str):
        print(f"attribution affiliates load: {records}", file=sys.stderr)
        return 2
    affiliates, errors = parse_affiliates(records)
    for error in errors:
        print(f"attribution affiliates load: {args.file}: {error}", file=sys.stderr)
    published = 0
    if affiliates:
        from streams.kafka.embedded_broker import resolve_for_producer

        bootstrap, owned = resolve_for_producer(settings, "affiliates load")
        try:
            published = asyncio.run(publish_to(bootstrap, settings.topic_partitions, affiliates))
        finally:
            if owned is not None:
                owned.stop()
    rejected = f"; {len(errors)} rejected" if errors else ""
    print(f"published {published} affiliate record(s) to topic {AFFILIATES_TOPIC}{rejected}")
    return 1 if errors else 0
