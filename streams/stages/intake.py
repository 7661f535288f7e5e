"""Intake: input topics -> validated, normalised events re-keyed by tracking ID (spend by channel shard).

Stateless and thin: `streams.core.events` decides; this stage only moves bytes. It reads the input topics
with a plain aiokafka consumer of its own group (`attribution-intake`), not through a Faust agent:
Faust hands an agent one message at a time through its conductor, buffers and the event loop, about
12k messages/s on this machine with no work at all, while `getmany` returns thousands of records per
call (bench/RESULTS.md). Offsets are committed once a second, only after the broker has acknowledged
every record sent for the inputs read up to them, and before a rebalance hands a partition on.

Valid events of a batch go out as one message per destination partition, so the next stage pays Faust's
per-message cost once per batch, not once per event. Each message, and a heartbeat to every partition,
carries this intake's touchpoint watermark (see `streams.core.watermarks`):

    {"src": "<worker>", "wm": <event time the touchpoint partitions are read up to>,
     "own": ["<topic>/<partition>", ...: the touchpoint partitions that "wm" is about],
     "n": {"<topic>": <its number of partitions>, ...: every touchpoint partition, owned or not},
     "mx": <the highest event time read before this batch>, "e": [[key, row], ...]}

`mx` gives every journey partition the stream's event time, so that lateness is judged the
same way on a partition that has been quiet for a while as on a busy one.

It runs inside each worker, or with WORKER_INTAKE=off in processes of its own (`attribution intake`,
`streams.stages.intake_process`): it needs only the settings, the counters and the partitioner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from streams.config import Settings
from streams.core.events import INPUT_TOPICS, TOPIC_TYPES, Refund, Spend, parse_message
from streams.core.journeys import SEQ_PER_MESSAGE, anonymous_key, spend_key
from streams.core.watermarks import NOTHING_READ, TouchProgress
from streams.kafka.topics import DLQ_TOPIC
from streams.serving.prometheus import WorkerMetrics
from streams.stages.topology import (
    APP_ID,
    FETCH_MAX_WAIT_MS,
    JOURNEY_TOPIC,
    LEDGER_TOPIC,
    PRODUCER_BATCH_BYTES,
    Wiring,
    instance_name,
)

log = logging.getLogger(__name__)
INTAKE_GROUP = f"{APP_ID}-intake"
LEGACY_GROUP = APP_ID  # the Faust group that read the inputs before: where a new intake group starts
BATCH_MAX = 1_000  # records per read: one event each, or an array of up to a few hundred
HEARTBEAT_INTERVAL_S = 0.2
COMMIT_INTERVAL_S = 1.0
RETRY_AFTER_S = 1.0
STOP_TIMEOUT_S = 15.0
LAG_REPORT_INTERVAL_S = 5.0
FUTURE_TOLERANCE_MS = 300_000  # a clock far in the future must not close every window
# Conversions wait until these are read past their ts: touchpoints (so none is missed) and the other
# conversions (so a customer's earlier order is judged first, whatever partition it came on).
WATERMARK_TOPICS = ("impressions", "clicks", "leads", "orders")


class IntakeWiring(Protocol):
    """What the intake uses of a worker's `Wiring` (`attribution intake` builds just this)."""

    settings: Settings
    metrics: WorkerMetrics
    bootstrap: str

    def partition_of(self, key: str) -> int: ...


def route_key(event: Any) -> str:
    """Journeys are keyed by tracking ID; spend has none and is keyed by its channel's shard, an event sent
    without consent neither, and is keyed by a shard of its own."""
    if isinstance(event, Spend):
        return spend_key(event.channel, event.event_id)
    return event.tracking_id or anonymous_key(event.event_id)


def dlq_record(error: str, topic: str, partition: int, offset: int, index: int | None, raw: bytes | None) -> bytes:
    text = "" if raw is None else raw.decode("utf-8", errors="replace")
    return orjson.dumps(
        {"error": error, "topic": topic, "partition": partition, "offset": offset, "index": index, "value": text}
    )


class Intake:
    """Validates and routes the records of one read, and reports how far the inputs are read."""

    def __init__(self, w: IntakeWiring, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self.w = w
        self.producer = producer
        self.consumer = consumer
        self.unacked: list[asyncio.Future[Any]] = []
        self.source = instance_name(w.settings)
        self.progress = TouchProgress()
        self.mark = NOTHING_READ  # the watermark of the last heartbeat: conversions wait for the first
        self.owned: list[str] | None = None  # the input partitions ("topic/partition") that `mark` is about
        self.partition_counts: dict[str, int] = {}  # every touchpoint topic's partitions, from the metadata
        self.invalid = {topic: w.metrics.events.labels(kind, "invalid") for topic, kind in TOPIC_TYPES.items()}
        self.stream_time = 0  # highest event time read (never ahead of now by more than the tolerance)
        self.last_lag_report = 0.0
        self.reported_lag: set[tuple[str, str]] = set()

    async def handle(self, fetched: Mapping[TopicPartition, list[Any]]) -> None:
        """One read: the records of each input partition, in offset order."""
        routed: dict[int, list[list[Any]]] = defaultdict(list)
        refunds: dict[int, list[list[Any]]] = defaultdict(list)
        read: list[tuple[TopicPartition, int, int | None]] = []
        newest = None  # the highest event time routed
        settings, partition_of = self.w.settings, self.w.partition_of
        for tp, records in fetched.items():
            topic, max_ts = tp.topic, None
            for record in records:
                valid, rejections = parse_message(record.value, topic, settings)
                for rejection in rejections:
                    self.invalid[topic].inc()
                    dead = dlq_record(rejection.error, topic, tp.partition, record.offset, rejection.index,
                                      record.value)
                    await self.produce(DLQ_TOPIC, dead)
                if topic == "refunds":
                    self.route_refunds(tp, record, valid, {r.index for r in rejections}, refunds)
                    valid = []
                for item in valid:
                    key = route_key(item)
                    routed[partition_of(key)].append([key, list(item)])
                    if max_ts is None or item.ts > max_ts:
                        max_ts = item.ts
            if max_ts is not None:
                newest = max_ts if newest is None else max(newest, max_ts)
            if topic in WATERMARK_TOPICS and records:
                read.append((tp, records[-1].offset, max_ts))
        for partition, items in routed.items():
            for start in range(0, len(items), SEQ_PER_MESSAGE):
                await self.send(partition, self.mark, items[start : start + SEQ_PER_MESSAGE])
        for partition, items in refunds.items():
            for start in range(0, len(items), SEQ_PER_MESSAGE):
                value = orjson.dumps({"src": self.source, "mx": self.stream_time,
                                      "r": items[start : start + SEQ_PER_MESSAGE]})
                await self.produce(LEDGER_TOPIC, value, partition)
        # Counted as read only once sent: a heartbeat must never overtake the events it vouches for.
        for tp, offset, max_ts in read:
            self.progress.saw(tp, offset, max_ts)
        if newest is not None:
            self.stream_time = max(self.stream_time, min(newest, int(time.time() * 1000) + FUTURE_TOLERANCE_MS))

    def route_refunds(self, tp: TopicPartition, record: Any, valid: list[Any], rejected: set[int | None],
                      out: dict[int, list[list[Any]]]) -> None:
        """Refunds go to the order ledger, on the partition of their order_id (streams.stages.refunds), each
        with where it came from and its own text, for a dead letter if its order turns out unknown."""
        value = orjson.loads(record.value)
        if isinstance(value, list):
            indexes: list[int | None] = [i for i in range(len(value)) if i not in rejected]
            texts = [orjson.dumps(value[i]).decode() for i in indexes if i is not None]
        else:
            indexes, texts = [None], [record.value.decode("utf-8", errors="replace")]
        for refund, index, text in zip(valid, indexes, texts, strict=True):
            assert isinstance(refund, Refund)
            out[self.w.partition_of(refund.order_id)].append(
                [list(refund), [tp.topic, tp.partition, record.offset, index, text]])
            self.stream_time = max(self.stream_time, min(refund.ts, int(time.time() * 1000) + FUTURE_TOLERANCE_MS))

    async def send(self, partition: int, watermark: int, items: list[list[Any]]) -> None:
        value = orjson.dumps({"src": self.source, "wm": watermark, "own": self.owned, "n": self.partition_counts,
                              "mx": self.stream_time, "e": items})
        await self.produce(JOURNEY_TOPIC, value, partition)

    async def produce(self, topic: str, value: bytes, partition: int | None = None) -> None:
        self.unacked.append(await self.producer.send(topic, value, partition=partition))

    async def acknowledged(self) -> None:
        """Wait until the broker has acknowledged every record sent so far; raise if it refused one."""
        unacked, self.unacked = self.unacked, []
        await asyncio.gather(*unacked)

    async def refresh_watermark(self) -> None:
        """Ask the broker for the end offsets of the owned partitions and compare with what was read."""
        owned = {tp for tp in self.consumer.assignment() if tp.topic in WATERMARK_TOPICS}
        self.progress.forget(owned)
        asked_at = int(time.time() * 1000)
        try:
            ends = await self.consumer.end_offsets(list(owned)) if owned else {}
        except Exception as exc:  # noqa: BLE001 - the broker is away: keep the last mark, conversions wait
            log.warning("end offsets unavailable (%s): the watermark stays at %d", exc, self.mark)
            return
        self.mark = self.progress.watermark(owned, ends.get, lambda tp: position(self.consumer, tp), asked_at)
        self.owned = sorted(f"{tp.topic}/{tp.partition}" for tp in owned)
        for topic in WATERMARK_TOPICS:
            partitions = self.consumer.partitions_for_topic(topic)
            if partitions:
                self.partition_counts[topic] = len(partitions)

    async def heartbeat(self) -> None:
        """Tell every journey partition how far this intake has read, even when nothing is routed there."""
        await self.refresh_watermark()
        for partition in range(self.w.settings.topic_partitions):
            await self.send(partition, self.mark, [])
        if time.monotonic() - self.last_lag_report >= LAG_REPORT_INTERVAL_S:
            self.last_lag_report = time.monotonic()
            self.report_consumer_lag()

    def report_consumer_lag(self) -> None:
        owned = {tp for tp in self.consumer.assignment() if tp.topic in TOPIC_TYPES}
        gauge = self.w.metrics.consumer_lag
        for tp in owned:
            end, at = self.consumer.highwater(tp), position(self.consumer, tp)
            if end is not None and at is not None:
                gauge.labels(tp.topic, str(tp.partition)).set(max(0, end - at))
        for labels in list(self.reported_lag - {(tp.topic, str(tp.partition)) for tp in owned}):
            gauge.remove(*labels)  # a partition given away in a rebalance is another worker's to report
        self.reported_lag = {(tp.topic, str(tp.partition)) for tp in owned}


def position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The next offset the consumer will hand out from tp, where it knows it (None otherwise). Every record
    handed out is handled before the next heartbeat, so for a partition not read from since it was
    assigned this is where the intake stands."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return None if state is None or not state.has_valid_position else state.position
    except (AttributeError, AssertionError, KeyError):
        return None


class IntakeReader(Service):
    """Runs the intake over its own consumer and producer: read, route, heartbeat, commit.

    One task does all of it, so a heartbeat never runs while a read is half sent (its mark would count
    touchpoints a journey partition has not got yet; found by the kill -9 test). A rebalance waits for
    the read in hand, then commits what was read and acknowledged. A failed send or commit closes both
    clients and reads again from the last committed offsets: the journeys stage drops the repeats."""

    def __init__(self, w: IntakeWiring, session_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.w = w
        self.bootstrap = w.bootstrap
        self.session_timeout_ms = int(session_timeout_s * 1000)
        self.intake: Intake | None = None
        self.reading = asyncio.Lock()
        self.read_to: dict[TopicPartition, int] = {}  # per partition, the next offset once acknowledged
        self.stopped_reading = asyncio.Event()

    @Service.task
    async def _run(self) -> None:
        try:
            while not self.should_stop:
                try:
                    await self.read_until_stopped()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a broker away, a refused send: read again
                    log.warning("intake: %s: %s; reading again from the last committed offsets in %.0f s",
                                type(exc).__name__, exc, RETRY_AFTER_S)
                    await asyncio.sleep(RETRY_AFTER_S)
        finally:
            self.stopped_reading.set()

    async def on_stop(self) -> None:
        """SIGTERM: let the loop finish its read, commit and leave the group before the task is cancelled."""
        try:
            await asyncio.wait_for(self.stopped_reading.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("intake: not stopped within %.0f s; its last reads will be read again", STOP_TIMEOUT_S)

    async def read_until_stopped(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                    max_batch_size=PRODUCER_BATCH_BYTES, client_id=f"{INTAKE_GROUP}-producer")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=INTAKE_GROUP, client_id=f"{INTAKE_GROUP}-consumer",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=self.session_timeout_ms, rebalance_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=min(1000, self.session_timeout_ms // 3),
        )
        self.intake, self.read_to = Intake(self.w, producer, consumer), {}
        await adopt_the_faust_groups_offsets(self.bootstrap)
        await producer.start()
        try:
            consumer.subscribe(INPUT_TOPICS, listener=Rebalance(self))
            await consumer.start()
            try:
                await self.read(consumer)
            finally:
                await consumer.stop()  # leaves the group: its partitions go to the other workers now
        finally:
            await producer.stop()

    async def read(self, consumer: AIOKafkaConsumer) -> None:
        assert self.intake is not None
        next_heartbeat = next_commit = time.monotonic()
        while not self.should_stop:
            fetched = await consumer.getmany(timeout_ms=int(HEARTBEAT_INTERVAL_S * 1000), max_records=BATCH_MAX)
            async with self.reading:
                await self.intake.handle(fetched)
                for tp, batch in fetched.items():
                    self.read_to[tp] = batch[-1].offset + 1
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
                    await self.intake.heartbeat()
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + COMMIT_INTERVAL_S
                    await self.commit(consumer, consumer.assignment())
        async with self.reading:
            await self.commit(consumer, consumer.assignment())

    async def commit(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """Commit what was read from `partitions`, once every record sent for it is acknowledged."""
        assert self.intake is not None
        await self.intake.acknowledged()
        offsets = {tp: self.read_to.pop(tp) for tp in partitions if tp in self.read_to}
        if offsets:
            await consumer.commit(offsets)

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance takes partitions away: finish the read in hand and commit them."""
        if self.intake is None:
            return
        async with self.reading:
            try:
                await self.commit(self.intake.consumer, revoked)
            except Exception as exc:  # noqa: BLE001 - the next owner reads them again; the journeys drop repeats
                log.warning("intake: could not commit before a rebalance (%s)", exc)
            for tp in revoked:
                self.read_to.pop(tp, None)


class Rebalance(ConsumerRebalanceListener):
    def __init__(self, reader: IntakeReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self.reader.hand_over(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Nothing to load: the intake keeps no state per partition, and commits were adopted before joining."""


async def adopt_the_faust_groups_offsets(bootstrap: str) -> None:
    """Before the intake had a group of its own, the worker's Faust group read the inputs. A cluster where
    that group committed input offsets and this one never did gets them committed for this group, before
    it joins: an upgrade then reads nothing twice and skips nothing. (Elsewhere a new group starts from
    the earliest offset.) Neither consumer joins its group; a commit refused because the intake group
    already has members changes nothing."""
    mine = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=INTAKE_GROUP, enable_auto_commit=False)
    theirs = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=LEGACY_GROUP, enable_auto_commit=False)
    await mine.start()
    await theirs.start()
    try:
        cluster = await mine._client.fetch_all_metadata()  # partitions_for_topic knows subscribed topics only
        inputs = [TopicPartition(topic, partition) for topic in INPUT_TOPICS
                  for partition in sorted(cluster.partitions_for_topic(topic) or ())]
        mine.assign(inputs)
        theirs.assign(inputs)
        if any([await mine.committed(tp) is not None for tp in inputs]):
            return
        legacy = {tp: offset for tp in inputs if (offset := await theirs.committed(tp)) is not None}
        if legacy:
            await mine.commit(legacy)
            log.warning("intake: group %s starts where group %s stopped on %d input partitions", INTAKE_GROUP,
                        LEGACY_GROUP, len(legacy))
    except KafkaError as exc:
        log.warning("intake: group %s's offsets not adopted (%s)", LEGACY_GROUP, exc)
    finally:
        await theirs.stop()
        await mine.stop()


def register(w: Wiring, session_timeout_s: float) -> IntakeReader:
    reader = IntakeReader(w, session_timeout_s)
    w.state["intake"] = reader
    w.app.service(reader)
    return reader
