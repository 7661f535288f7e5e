"""The faust.App and every topic and table: the wiring on one screen.

    input topics ──intake──► attribution-journey-events (by tracking ID; spend by channel shard)
                 (its own aiokafka consumer group, attribution-intake: not a Faust agent)
                                  │ journeys: dedup, touchpoints, conversions after the grace
                                  ├──► attributions
                                  ▼
                 attribution-metric-partials (by channel; absolute snapshots per source partition)
                                  │ metrics: sum the partials, throttle, close windows
                                  ▼
                 metrics.channel · metrics.campaign   (+ Redis/in-process store for the read API)
                                  │ signals: trailing SIGNAL_WINDOW per key ──► signals
 journeys ──► attribution-customer-orders (by customer_id)
                                  │ ltv customers: acquisition by the first order, per-partition sums
                                  ▼
                 attribution-ltv-partials (by channel; absolute sums per source partition)
                                  │ ltv channels: + cumulative spend from metrics.channel
                                  ▼
                 metrics.ltv   (+ the store for GET /api/v1/ltv)

Tables choose their changelog partition from the key with the same murmur2 the intake uses
to route events, so a key's state always lives with the partition that reads its events.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.kafka.affiliate_directory import AffiliateDirectory
from streams.kafka.faust_patches import drain_producer_buffer_on_flush, seek_uncommitted_partitions_to_beginning
from streams.kafka.topics import (
    ATTRIBUTIONS_TOPIC,
    METRICS_CAMPAIGN_TOPIC,
    METRICS_CHANNEL_TOPIC,
    METRICS_LTV_TOPIC,
    SIGNALS_TOPIC,
)
from streams.serving.prometheus import WorkerMetrics
from streams.serving.pushgateway import Pusher
from streams.serving.store import Store

APP_ID = "attribution"
JOURNEY_TOPIC = "attribution-journey-events"
PARTIALS_TOPIC = "attribution-metric-partials"
CUSTOMER_ORDERS_TOPIC = "attribution-customer-orders"
LTV_PARTIALS_TOPIC = "attribution-ltv-partials"
FETCH_MAX_WAIT_MS = 10
CHANGELOG_CODECS: dict[Any, Callable[[Any], bytes]] = {"json": orjson.dumps, "raw": str.encode}  # Faust's, for str keys
PARTITION_CACHE_SIZE = 1 << 15  # recent keys' partitions: ~170 B each, so at most ~5.5 MiB
PRODUCER_BATCH_BYTES = 256 * 1024  # a batch of changelog rows in one produce request (Kafka's limit: 1 MiB)
TABLES = ("journeys", "partials", "channel-windows", "ltv-customers", "ltv-channels", "signal-keys")
# Created before Faust starts: a producer's first send must never auto-create one of these with the
# broker's default partition count (Tansu's is 4), or routing by key would name missing partitions.
INTERNAL_TOPICS = (JOURNEY_TOPIC, PARTIALS_TOPIC, CUSTOMER_ORDERS_TOPIC, LTV_PARTIALS_TOPIC)
CHANGELOG_TOPICS = tuple(f"{APP_ID}-{table}-changelog" for table in TABLES)
# Tables keyed like these topics find a key's partition with TOPIC_PARTITIONS: they must have that many.
CO_PARTITIONED_TOPICS = INTERNAL_TOPICS + CHANGELOG_TOPICS + (METRICS_CHANNEL_TOPIC, METRICS_CAMPAIGN_TOPIC)


@lru_cache(maxsize=PARTITION_CACHE_SIZE)  # pure-Python murmur2 (~2 us) per event, again per table write of its key
def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a key: routing and tables agree."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class KeyPartitionedTable(faust.Table):
    """A table whose changelog partition comes from `partition_for(key)`, so it can be written
    from timers and from batches that mix partitions, and which reports recovery.

    Besides `table[key] = row`, which sends one Faust message per key, it can be written in bulk:
    `put_rows` sets the rows and queues their changelog records, `send_changes` hands the queue to the
    Kafka client as one record batch per changelog partition. Faust's per-message publish path (a
    message future, the producer buffer and their callbacks per record) was a third of the worker's CPU
    with a record per tracking ID per batch. A table must use one way or the other, never both: the
    changelog's order per key is only kept within a way. Offsets are still committed only after these
    records are acknowledged: Faust's commit flushes the client, and `send_changes` is awaited before
    the events that made the rows are acknowledged.

    With STATE_STORE=rocksdb the rows live in `streams.kafka.rocksdb_store`, which finds a key's database by
    `partition_for` too.
    """

    def __init__(self, *args: Any, partition_for: Callable[[str], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.partition_for = partition_for
        self.recovered_callbacks: list[Callable[[set[int]], None]] = []
        self.unsent: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.sending = asyncio.Lock()
        self.deliveries: list[asyncio.Future[Any]] = []

    def partition_for_key(self, key: Any) -> int:
        return self.partition_for(key)

    def _new_store_by_url(self, url: Any) -> Any:
        if str(url).startswith("rocksdb:"):
            from streams.kafka.rocksdb_store import (
                KeyPartitionedRocksDBStore,  # RocksDB's bindings only where it is used
            )

            return KeyPartitionedRocksDBStore(
                url, self.app, self, table_name=self.name, key_type=self.key_type,
                key_serializer=self.key_serializer, value_serializer=self.value_serializer,
                value_type=self.value_type, loop=self.loop, options=self.options,
            )
        return super()._new_store_by_url(url)

    def put_rows(self, rows: Mapping[str, Any]) -> None:
        """Set each key to its row (None: delete it) now, and queue the changelog records in that order,
        encoded as Faust encodes this table's records, so that its recovery reads them back."""
        data = self.data
        encode_key = CHANGELOG_CODECS[self.key_serializer]
        encode_value = CHANGELOG_CODECS[self.value_serializer]
        for key, row in rows.items():
            if row is None:
                data.pop(key, None)
                value = None
            else:
                data[key] = row
                value = encode_value(row)
            self.unsent.setdefault(self.partition_for(key), []).append((encode_key(key), value))

    async def send_changes(self) -> None:
        """Hand every queued changelog record to the Kafka client, in the order the rows were put."""
        async with self.sending:
            self.raise_failed_delivery()
            client = self.app.producer._ensure_producer()
            topic = self.changelog_topic.get_topic_name()
            while self.unsent:
                partition, records = self.unsent.popitem()
                batch = client.create_batch()
                for key, value in records:
                    if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                        self.deliveries.append(await client.send_batch(batch, topic, partition=partition))
                        batch = client.create_batch()
                        batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
                self.deliveries.append(await client.send_batch(batch, topic, partition=partition))

    def raise_failed_delivery(self) -> None:
        """A batch the broker refused stops the worker, as a failed Faust changelog write would."""
        pending = []
        for delivery in self.deliveries:
            if not delivery.done():
                pending.append(delivery)
            elif delivery.exception() is not None:
                raise RuntimeError(f"changelog of table {self.name} not written") from delivery.exception()
        self.deliveries = pending

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        partitions = {tp.partition for tp in active_tps if tp.topic == self.changelog_topic.get_topic_name()}
        for callback in self.recovered_callbacks:
            callback(partitions)


@dataclass
class Wiring:
    """Everything the agents share; built once per worker by `build`."""

    settings: Settings
    app: faust.App
    store: Store
    metrics: WorkerMetrics
    registry: CollectorRegistry
    bootstrap: str = ""  # the Kafka bootstrap servers, for the stages that keep clients of their own
    journey_events: Any = None
    partials_topic: Any = None
    customer_orders: Any = None
    attributions: Any = None
    metrics_channel: Any = None
    metrics_campaign: Any = None
    journeys: Any = None
    partials: Any = None
    channel_windows: Any = None
    ltv_partials_topic: Any = None  # lifetime value (section 7): agents/ltv.py
    ltv_channel_inputs: Any = None
    metrics_ltv: Any = None
    ltv_customers: Any = None
    ltv_channels: Any = None
    signal_inputs: Any = None  # switch-off signals (section 7): agents/signals.py
    signals: Any = None
    signal_keys: Any = None
    affiliates: AffiliateDirectory | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.settings.topic_partitions)

    def assigned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}


def build(settings: Settings, bootstrap: str, store: Store, session_timeout_s: float = 10.0) -> Wiring:
    lower_fetch_wait(FETCH_MAX_WAIT_MS)
    drain_producer_buffer_on_flush()  # offsets are committed only after the table changes are sent
    seek_uncommitted_partitions_to_beginning()  # nothing fetched before a rebalance is skipped
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{server.strip()}" for server in bootstrap.split(",")],
        store="rocksdb://" if settings.state_store == "rocksdb" else "memory://",
        datadir=settings.state_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        broker_session_timeout=session_timeout_s,
        broker_rebalance_timeout=session_timeout_s,
        broker_heartbeat_interval=min(1.0, session_timeout_s / 3),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        stream_wait_empty=False,
        autodiscover=False,
        table_cleanup_interval=3600.0,
        logging_config=None,
        loghandlers=[],
    )
    registry = CollectorRegistry()
    wiring = Wiring(settings, app, store, WorkerMetrics(registry, settings.campaign_label_cap), registry, bootstrap)
    n = settings.topic_partitions
    wiring.journey_events = app.topic(JOURNEY_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.partials_topic = app.topic(PARTIALS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.customer_orders = app.topic(CUSTOMER_ORDERS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.attributions = app.topic(ATTRIBUTIONS_TOPIC, partitions=n)
    wiring.metrics_channel = app.topic(METRICS_CHANNEL_TOPIC, partitions=n)
    wiring.metrics_campaign = app.topic(METRICS_CAMPAIGN_TOPIC, partitions=n)
    wiring.journeys = _table(app, "journeys", n, wiring.partition_of)
    wiring.partials = _table(app, "partials", n, lambda key: int(key.split("|", 1)[0]))
    wiring.channel_windows = _table(app, "channel-windows", n, lambda key: wiring.partition_of(key.rsplit("|", 1)[0]))
    wiring.affiliates = AffiliateDirectory(bootstrap)
    app.service(wiring.affiliates)
    if settings.prometheus_pushgateway:
        app.service(Pusher(settings.prometheus_pushgateway, instance_name(settings), registry))

    from streams.stages import intake, journeys, ltv, metrics, signals, web

    if settings.ltv_stage:  # LTV_STAGE=off: no lifetime-value tables or agents, no customer orders sent
        wiring.ltv_partials_topic = app.topic(LTV_PARTIALS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
        wiring.ltv_channel_inputs = app.topic(LTV_PARTIALS_TOPIC, METRICS_CHANNEL_TOPIC, key_type=bytes,
                                              value_type=bytes)
        wiring.metrics_ltv = app.topic(METRICS_LTV_TOPIC, partitions=n)
        wiring.ltv_customers = _table(app, "ltv-customers", n, ltv.key_partition)
        wiring.ltv_channels = _table(app, "ltv-channels", n, wiring.partition_of)
    wiring.signal_inputs = app.topic(METRICS_CHANNEL_TOPIC, METRICS_CAMPAIGN_TOPIC, key_type=bytes, value_type=bytes)
    wiring.signals = app.topic(SIGNALS_TOPIC, partitions=n)
    wiring.signal_keys = _table(app, "signal-keys", n, lambda key: signals.key_partition(key, wiring.partition_of))

    if settings.worker_intake:  # WORKER_INTAKE=off: `attribution intake` processes read the inputs
        intake.register(wiring, session_timeout_s)
    journeys.register(wiring)
    metrics.register(wiring)
    if settings.ltv_stage:
        ltv.register(wiring)
    signals.register(wiring)
    web.register(wiring)
    return wiring


def instance_name(settings: Settings) -> str:
    """This worker's name in Prometheus groups and watermark reports: WORKER_NAME, else host-pid."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


def _table(app: faust.App, name: str, partitions: int, partition_for: Callable[[str], int]) -> KeyPartitionedTable:
    table = KeyPartitionedTable(
        app,
        name=name,
        default=None,
        partitions=partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        partition_for=partition_for,
        beacon=app.tables.beacon,
    )
    return app.tables.add(table)


def lower_fetch_wait(ms: int) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500 in its worker consumer: p50 latency 1.2-1.7 s.
    Lower it on the consumer Faust builds (measured here: 13-46 ms end to end with 10 ms)."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    if getattr(thread._create_worker_consumer, "fetch_wait_ms", None) == ms:
        return
    original = getattr(thread._create_worker_consumer, "original", thread._create_worker_consumer)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create_worker_consumer.original = original  # type: ignore[attr-defined]
    create_worker_consumer.fetch_wait_ms = ms  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer
