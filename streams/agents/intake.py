"""Intake: input topics -> validated, normalised events re-keyed by tracking ID (spend by channel).

Stateless and thin: `streams.events` decides; this agent only moves bytes. Valid events of a
batch go out as one message per destination partition (JSON array of [key, event row]), so
the next stage pays Faust's per-message cost once per batch, not once per event.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from streams.app import Wiring
from streams.events import TOPIC_TYPES, Spend, parse_message
from streams.journeys import SEQ_PER_MESSAGE, SPEND_KEY_PREFIX

BATCH_MAX = 2000
BATCH_WITHIN_S = 0.02


def route_key(event: Any) -> str:
    """Journeys are keyed by tracking ID; spend has none and is keyed by channel."""
    return SPEND_KEY_PREFIX + event.channel if isinstance(event, Spend) else event.tracking_id


def dlq_record(error: str, topic: str, partition: int, offset: int, index: int | None, raw: bytes | None) -> bytes:
    text = "" if raw is None else raw.decode("utf-8", errors="replace")
    return orjson.dumps(
        {"error": error, "topic": topic, "partition": partition, "offset": offset, "index": index, "value": text}
    )


def register(w: Wiring) -> None:
    settings = w.settings
    invalid = {topic: w.metrics.events.labels(kind, "invalid") for topic, kind in TOPIC_TYPES.items()}

    @w.app.agent(w.inputs, name="intake")
    async def intake(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            routed: dict[int, list[list[Any]]] = defaultdict(list)
            for event in batch:
                message = event.message
                valid, rejections = parse_message(message.value, message.topic, settings)
                for rejection in rejections:
                    invalid[message.topic].inc()
                    record = dlq_record(
                        rejection.error, message.topic, message.partition, message.offset, rejection.index,
                        message.value,
                    )
                    await w.dlq.send(value=record)
                for item in valid:
                    key = route_key(item)
                    routed[w.partition_of(key)].append([key, list(item)])
            for partition, items in routed.items():
                for start in range(0, len(items), SEQ_PER_MESSAGE):
                    chunk = orjson.dumps(items[start : start + SEQ_PER_MESSAGE])
                    await w.journey_events.send(value=chunk, partition=partition)
