"""The faust.App of a worker, assembled: its topics, tables and stages as `streams.stages.topology` names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.journeys import journey_row_older
from streams.core.windows import channel_window_row_older, partial_row_older
from streams.kafka.affiliate_directory import AffiliateDirectory
from streams.kafka.bulk_recovery import read_changelogs_in_bulk
from streams.kafka.faust_patches import (
    drain_producer_buffer_on_flush,
    seek_uncommitted_partitions_to_beginning,
    set_fetch_limits,
)
from streams.kafka.group_fence import GroupFence, track_group_liveness
from streams.kafka.markov_effects import MarkovEffects
from streams.kafka.tables import KeyPartitionedTable
from streams.kafka.topics import (
    ATTRIBUTIONS_TOPIC,
    DLQ_TOPIC,
    ERASURE_LOG_TOPIC,
    ERASURE_REQUESTS_TOPIC,
    METRICS_CAMPAIGN_TOPIC,
    METRICS_CHANNEL_TOPIC,
    METRICS_LTV_TOPIC,
    METRICS_MARKOV_TOPIC,
    SIGNALS_TOPIC,
)
from streams.serving.prometheus import WorkerMetrics
from streams.serving.pushgateway import Pusher
from streams.serving.store import Claims, Store
from streams.stages import erasure, intake, journeys, ltv, markov, metrics, refunds, signals, web
from streams.stages.claims import TableClaims
from streams.stages.topology import (
    APP_ID,
    CUSTOMER_ORDERS_TOPIC,
    ERASURES_TOPIC,
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    JOURNEY_TOPIC,
    LEDGER_TOPIC,
    LTV_PARTIALS_TOPIC,
    MARKOV_PARTIALS_TOPIC,
    PARTIALS_TOPIC,
    PRODUCER_BATCH_BYTES,
    Wiring,
    instance_name,
)

BULK_RECOVERY_BUDGET_S = 45.0  # half the 90 s Faust gives the step it runs in (it stops recovering past them)


def build(
    settings: Settings, bootstrap: str, store: Store, session_timeout_s: float = 10.0, claims: Claims | None = None,
    replication: int = 1,
) -> Wiring:
    """The worker's app. Claims on customers and order ids go to `claims` (Redis) when given, else to the
    changelogged `claims` table. `replication`: of the topics Faust creates (the engine's own exist already)."""
    set_fetch_limits(FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
    drain_producer_buffer_on_flush()  # offsets are committed only after the table changes are sent
    seek_uncommitted_partitions_to_beginning()  # nothing fetched before a rebalance is skipped
    read_changelogs_in_bulk(BULK_RECOVERY_BUDGET_S)  # STATE_STORE=memory restarts in seconds, not minutes
    track_group_liveness()  # the zombie fence (streams.kafka.group_fence) knows when the member was last alive
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{server.strip()}" for server in bootstrap.split(",")],
        store="rocksdb://" if settings.state_store == "rocksdb" else "memory://",
        datadir=settings.state_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=replication,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        web_tables_enabled=False,  # Faust's /table serves table rows (tracking IDs) to anyone, past WEB_TOKEN
        web_router_enabled=False,  # and /router the workers' URLs; nothing here routes by table key
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
    wiring.journeys = _table(app, settings, "journeys", wiring.partition_of, value_serializer="raw",  # packed rows
                             older=journey_row_older)
    wiring.partials = _table(app, settings, "partials", lambda key: int(key.split("|", 1)[0]), older=partial_row_older)
    wiring.claims_table = _table(app, settings, "claims", wiring.partition_of)
    wiring.claims = claims or TableClaims(wiring.claims_table, lambda: wiring.assigned(JOURNEY_TOPIC))
    wiring.channel_windows = _table(app, settings, "channel-windows",
                                    lambda key: wiring.partition_of(key.rsplit("|", 1)[0]),
                                    older=channel_window_row_older)
    wiring.erasure_requests = app.topic(ERASURE_REQUESTS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.erasure_topic = app.topic(ERASURES_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.erasure_log = app.topic(ERASURE_LOG_TOPIC, partitions=n)
    wiring.erasure_links = _table(app, settings, "erasure-links", erasure.link_key_partition(wiring.partition_of))
    wiring.erasure_ledger = _table(app, settings, "erasures", wiring.partition_of)
    wiring.erasers = erasure.Erasers()
    wiring.ledger_topic = app.topic(LEDGER_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.order_ledger = _table(app, settings, "order-ledger", wiring.partition_of)
    wiring.refund_partials = _table(app, settings, "refund-partials", lambda key: int(key.split("|", 1)[0]))
    wiring.dlq = app.topic(DLQ_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
    wiring.affiliates = AffiliateDirectory(bootstrap)
    app.service(wiring.affiliates)
    if settings.prometheus_pushgateway:
        app.service(Pusher(settings.prometheus_pushgateway, instance_name(settings), registry))


    if settings.ltv_stage:  # LTV_STAGE=off: no lifetime-value tables or agents, no customer orders sent
        wiring.ltv_partials_topic = app.topic(LTV_PARTIALS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
        wiring.ltv_channel_inputs = app.topic(LTV_PARTIALS_TOPIC, METRICS_CHANNEL_TOPIC, key_type=bytes,
                                              value_type=bytes)
        wiring.metrics_ltv = app.topic(METRICS_LTV_TOPIC, partitions=n)
        wiring.ltv_customers = _table(app, settings, "ltv-customers", ltv.key_partition)
        wiring.ltv_channels = _table(app, settings, "ltv-channels", wiring.partition_of)
    if settings.markov_stage:  # MARKOV_STAGE=off: no paths, no chain, `models.markov` linear
        wiring.markov_partials_topic = app.topic(MARKOV_PARTIALS_TOPIC, partitions=n, key_type=bytes, value_type=bytes)
        wiring.metrics_markov = app.topic(METRICS_MARKOV_TOPIC, partitions=n)
        wiring.markov_paths = _table(app, settings, "markov-paths", wiring.partition_of, value_serializer="raw")
        wiring.markov_chain = _table(app, settings, "markov-chain", lambda key: markov.CHAIN_PARTITION)
        wiring.markov_effects = MarkovEffects(bootstrap, n)
        app.service(wiring.markov_effects)
    wiring.signal_inputs = app.topic(METRICS_CHANNEL_TOPIC, METRICS_CAMPAIGN_TOPIC, key_type=bytes, value_type=bytes)
    wiring.signals = app.topic(SIGNALS_TOPIC, partitions=n)
    wiring.signal_keys = _table(app, settings, "signal-keys",
                                lambda key: signals.key_partition(key, wiring.partition_of))

    fence = GroupFence(app, session_timeout_s,
                       on_dropped=lambda table, n: wiring.metrics.fenced_records.labels(table).inc(n))
    for table in app.tables.values():
        if isinstance(table, KeyPartitionedTable):
            table.fence = fence
            table.on_older = lambda table, n: wiring.metrics.stale_changelog_records.labels(table).inc(n)
            # at 0 from the start, so that a dashboard shows "none" rather than no data
            wiring.metrics.fenced_records.labels(table.name)
            wiring.metrics.stale_changelog_records.labels(table.name)
    wiring.fence = fence

    if settings.worker_intake:  # WORKER_INTAKE=off: `attribution intake` processes read the inputs
        intake.register(wiring, session_timeout_s)
    journeys.register(wiring)
    refunds.register(wiring)
    if settings.markov_stage:
        markov.register(wiring)
    metrics.register(wiring)
    if settings.ltv_stage:
        ltv.register(wiring)
    signals.register(wiring)
    erasure.register(wiring)  # after the stages: their erasers run before those of the links naming the rows
    web.register(wiring)
    return wiring


def _table(
    app: faust.App, settings: Settings, name: str, partition_for: Callable[[str], int], value_serializer: str = "json",
    older: Callable[[Any, Any], bool] | None = None,
) -> KeyPartitionedTable:
    table = KeyPartitionedTable(
        app,
        name=name,
        default=None,
        partitions=settings.topic_partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer=value_serializer),
        value_codec=value_serializer,
        rocksdb_cache_bytes=settings.rocksdb_cache_mb * 1024 * 1024,
        partition_for=partition_for,
        older=older,
        beacon=app.tables.beacon,
    )
    return app.tables.add(table)
