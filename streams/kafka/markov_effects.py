"""Every worker's view of the latest Markov model: the tail of `metrics.markov`, followed.

One worker computes the model (streams.stages.markov, the chain stage); every worker needs its removal
effects to credit conversions (`models.markov`) and serves them on `GET /api/v1/markov`. A plain aiokafka
consumer without a group reads each partition's last `TAIL` records and then follows the topic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from streams.kafka.topics import METRICS_MARKOV_TOPIC

log = logging.getLogger(__name__)
TAIL = 1000  # records read back per partition at start: far more than one computation's channels


class LatestModel:
    """The newest message per channel; the model in force is the channels of the newest computation."""

    def __init__(self) -> None:
        self.by_channel: dict[str, dict[str, Any]] = {}

    def apply(self, raw: bytes | None) -> None:
        try:
            message = orjson.loads(raw) if raw else None
            channel, computed_at = message["channel"], message["computed_at"]  # type: ignore[index]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a %s record that is not a model message: %r", METRICS_MARKOV_TOPIC,
                        (raw or b"")[:120])
            return
        known = self.by_channel.get(channel)
        if known is None or computed_at >= known["computed_at"]:
            self.by_channel[channel] = message  # type: ignore[assignment]

    def messages(self) -> list[dict[str, Any]]:
        """The newest computation's messages, ordered by channel (a channel that left the window is not in it)."""
        if not self.by_channel:
            return []
        newest = max(m["computed_at"] for m in self.by_channel.values())
        return [m for _, m in sorted(self.by_channel.items()) if m["computed_at"] == newest]

    def effects(self) -> dict[str, float]:
        return {m["channel"]: m["removal_effect"] for m in self.messages()}


class MarkovEffects(Service):
    def __init__(self, bootstrap: str, partitions: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.model = LatestModel()
        self.current: dict[str, float] = {}

    def apply(self, raw: bytes | None) -> None:
        self.model.apply(raw)

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        fetch_max_wait_ms=200)
            try:
                await consumer.start()
                # Assigned by number (the worker creates the topic with TOPIC_PARTITIONS): a consumer without a
                # group learns no topic's partitions from its bootstrap metadata.
                partitions = [TopicPartition(METRICS_MARKOV_TOPIC, p) for p in range(self.partitions)]
                consumer.assign(partitions)
                starts = await consumer.beginning_offsets(partitions)
                ends = await consumer.end_offsets(partitions)
                for tp in partitions:
                    consumer.seek(tp, max(starts[tp], ends[tp] - TAIL))
                while not self.should_stop:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        for record in records:
                            self.apply(record.value)
                    if batches:
                        self.current = self.model.effects()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following after a broker hiccup
                log.warning("reading %s failed (%s); retrying", METRICS_MARKOV_TOPIC, exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
