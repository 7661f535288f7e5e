"""`attribution affiliates load FILE`: read a JSON list of affiliate records, publish the valid ones."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.config import Settings
from streams.core.affiliates import Affiliate, parse_affiliates, to_record
from streams.core.events import short_repr
from streams.kafka.topics import AFFILIATES_TOPIC, ensure_topics, make_producer, wait_for_broker


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


async def publish_to(bootstrap: str, settings: Settings, affiliates: Sequence[Affiliate]) -> int:
    """Make sure the topics exist, then publish `affiliates` with a producer of its own."""
    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings)
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
            published = asyncio.run(publish_to(bootstrap, settings, affiliates))
        finally:
            if owned is not None:
                owned.stop()
    rejected = f"; {len(errors)} rejected" if errors else ""
    print(f"published {published} affiliate record(s) to topic {AFFILIATES_TOPIC}{rejected}")
    return 1 if errors else 0
