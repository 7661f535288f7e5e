"""Every topic, table and shared handle of the stages, on one screen; `streams.stages.app` assembles them.

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
 journeys, intake (refunds) ──► attribution-order-ledger (by order_id)
                                  │ order ledger: refunds judged against the attributed orders
                                  ├──► attributions, events.dlq, attribution-customer-orders (lifetime value)
                                  ▼
                 attribution-metric-partials (refund partials, source r<partition>)
 journeys ──► attribution-markov-partials (paths per visitor -> counts per partition; all on partition 0)
                                  │ markov chain: removal effects, at most every MARKOV_INTERVAL
                                  ▼
                 metrics.markov ──► every worker (models.markov credit, GET /api/v1/markov)
 erasure-requests ──► attribution-erasures (a part per identifier, on its owner's partition; reports to the
                                  │ request's partition) ── every registered eraser deletes its rows
                                  ▼
                 erasure-log (one confirmation per request, once every part reported)

Tables choose their changelog partition from the key with the same murmur2 the intake uses
to route events, so a key's state always lives with the partition that reads its events.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.kafka.affiliate_directory import AffiliateDirectory
from streams.kafka.partitioner import partition_of
from streams.kafka.topics import METRICS_CAMPAIGN_TOPIC, METRICS_CHANNEL_TOPIC
from streams.serving.prometheus import WorkerMetrics
from streams.serving.store import Claims, Store

APP_ID = "attribution"
JOURNEY_TOPIC = "attribution-journey-events"
PARTIALS_TOPIC = "attribution-metric-partials"
CUSTOMER_ORDERS_TOPIC = "attribution-customer-orders"
LTV_PARTIALS_TOPIC = "attribution-ltv-partials"
MARKOV_PARTIALS_TOPIC = "attribution-markov-partials"
ERASURES_TOPIC = "attribution-erasures"
LEDGER_TOPIC = "attribution-order-ledger"
# A worker's fetch returns once FETCH_MIN_BYTES are there or FETCH_MAX_WAIT_MS has passed. With 10 ms and 1 byte
# its consumer sent hundreds of fetches a second, each naming every partition it reads (~40), and spent a quarter
# of the worker's CPU on them at 5,000 events/s (bench/RESULTS.md, 2026-12-08: 30 ms and 32 KiB cut the worker's
# CPU by 16-33% at 1,000-5,000 events/s, the touchpoints' p99 unchanged). The intake's consumer waits as long, for
# 1 byte.
FETCH_MAX_WAIT_MS = 30
FETCH_MIN_BYTES = 32 * 1024
PRODUCER_BATCH_BYTES = 256 * 1024  # a batch of changelog rows in one produce request (Kafka's limit: 1 MiB)
TABLES = ("journeys", "partials", "channel-windows", "ltv-customers", "ltv-channels", "signal-keys", "claims",
          "markov-paths", "markov-chain", "erasure-links", "erasures", "order-ledger", "refund-partials")
# Created before Faust starts: a producer's first send must never auto-create one of these with the
# broker's default partition count (Tansu's is 4), or routing by key would name missing partitions.
INTERNAL_TOPICS = (JOURNEY_TOPIC, PARTIALS_TOPIC, CUSTOMER_ORDERS_TOPIC, LTV_PARTIALS_TOPIC, MARKOV_PARTIALS_TOPIC,
                   ERASURES_TOPIC, LEDGER_TOPIC)
CHANGELOG_TOPICS = tuple(f"{APP_ID}-{table}-changelog" for table in TABLES)
# Tables keyed like these topics find a key's partition with TOPIC_PARTITIONS: they must have that many.
CO_PARTITIONED_TOPICS = INTERNAL_TOPICS + CHANGELOG_TOPICS + (METRICS_CHANNEL_TOPIC, METRICS_CAMPAIGN_TOPIC)


@dataclass
class Wiring:
    """Everything the stages share; built once per worker by `streams.stages.app.build`."""

    settings: Settings
    app: faust.App
    store: Store  # the latest KPI messages for the read API
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
    claims: Claims | None = None  # customers and order ids: Redis, or the claims table (streams.stages.claims)
    claims_table: Any = None
    markov_partials_topic: Any = None  # the Markov model (section 8): stages/markov.py
    metrics_markov: Any = None
    markov_paths: Any = None
    markov_chain: Any = None
    markov_effects: Any = None  # streams.kafka.markov_effects.MarkovEffects: the latest model, on every worker
    fence: Any = None  # streams.kafka.group_fence.GroupFence: whether the worker may write its changelogs now
    affiliates: AffiliateDirectory | None = None
    erasure_requests: Any = None  # erasure (section 10): stages/erasure.py
    erasure_topic: Any = None
    erasure_log: Any = None
    erasure_links: Any = None
    erasure_ledger: Any = None
    erasers: Any = None  # streams.stages.erasure.Erasers: every store that holds an identifier registers there
    ledger_topic: Any = None  # refunds (section 9): stages/refunds.py
    order_ledger: Any = None
    refund_partials: Any = None
    dlq: Any = None
    state: dict[str, Any] = field(default_factory=dict)

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.settings.topic_partitions)

    def assigned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}


def may_write(w: Any) -> bool:
    """False while the worker's group membership may have lapsed (the zombie fence, streams.kafka.group_fence), and
    in a new generation until its recovery has completed (the journeys table's): before it, the worker's state of a
    partition it kept may be older than what another worker wrote meanwhile. A stage publishes nothing then, and
    attributes nothing (an attribution made from such state would replace the right one on `attributions`)."""
    fence = getattr(w, "fence", None)
    if fence is None:
        return True
    journeys = getattr(w, "journeys", None)
    recovered = journeys is None or getattr(journeys, "recovered_in", None) == fence.generation()
    return recovered and fence.is_open()


def instance_name(settings: Settings) -> str:
    """This worker's name in Prometheus groups and watermark reports: WORKER_NAME, else host-pid."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
