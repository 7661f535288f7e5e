"""`attribution forget --tracking-id T --customer-id C`: publish one erasure request (CONTRACT.md section 10).

The workers erase every row holding the identifiers and confirm on `erasure-log` within ERASURE_DEADLINE.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from streams.config import Settings
from streams.core.erasure import Request, parse_request
from streams.kafka.topics import ERASURE_REQUESTS_TOPIC, ensure_topics, make_producer, wait_for_broker


async def publish_request(bootstrap: str, settings: Settings, request: Request) -> None:
    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(ERASURE_REQUESTS_TOPIC, orjson.dumps(request.as_json()))
    finally:
        await producer.stop()


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit status 0 once the request is on the topic, 2 when neither identifier is given (or one is invalid)."""
    request = parse_request({key: value for key, value in (("tracking_id", args.tracking_id),
                                                           ("customer_id", args.customer_id)) if value is not None})
    if isinstance(request, str):
        print(f"attribution forget: {request} (--tracking-id, --customer-id)", file=sys.stderr)
        return 2
    from streams.kafka.embedded_broker import resolve_for_producer

    bootstrap, owned = resolve_for_producer(settings, "forget")
    try:
        asyncio.run(publish_request(bootstrap, settings, request))
    finally:
        if owned is not None:
            owned.stop()
    print(f"erasure request published to {ERASURE_REQUESTS_TOPIC}; the confirmation comes on erasure-log")
    return 0
