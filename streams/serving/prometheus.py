"""Prometheus metrics of the worker (CONTRACT.md sections 6 and 7) and logging set-up.

Counters are per worker and add up across workers: dashboards use `sum by (channel)`.
Campaign labels are capped per channel (`CAMPAIGN_LABEL_CAP`); the rest count as `(other)`
so a campaign-name explosion cannot blow up Prometheus.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import INF, floatToGoString

OTHER_CAMPAIGN = "(other)"
OUTCOMES = ("ok", "invalid", "duplicate", "late")
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)


class CampaignLabels:
    """Maps a campaign to itself for the first `cap` campaigns of a channel, else to `(other)`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.known: dict[str, set[str]] = {}

    def __call__(self, channel: str, campaign: str) -> str:
        known = self.known.setdefault(channel, set())
        if campaign in known:
            return campaign
        if len(known) < self.cap:
            known.add(campaign)
            return campaign
        return OTHER_CAMPAIGN


class BatchHistogram:
    """A Prometheus histogram observed a batch of values at a time: one `bisect` per value into plain
    counts. prometheus_client's `Histogram.observe` takes two locks per value, which cost the journeys
    stage about a tenth of its time. Exposed as any histogram (`_bucket`, `_count`, `_sum`)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [*sorted(buckets), INF]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self.bounds, self.counts
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value: `le`
            total += value
        self.sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


class BatchCounts:
    """Counter increments summed over a batch and applied once per counter child (`apply`): a locked
    `inc` per event and label set was the journeys stage's costliest call after the state itself."""

    def __init__(self) -> None:
        self.amounts: defaultdict[Any, float] = defaultdict(float)

    def add(self, child: Any, amount: float = 1.0) -> None:
        self.amounts[child] += amount

    def apply(self) -> None:
        for child, amount in self.amounts.items():
            if amount:
                child.inc(amount)
        self.amounts.clear()


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, campaign_cap: int) -> None:
        self.registry = registry
        self.campaign = CampaignLabels(campaign_cap)
        self.children: dict[tuple[Counter, str, str], Any] = {}  # bounded like the labels: the campaign cap
        labels = ("channel", "campaign")

        def counter(name: str, text: str) -> Counter:
            return Counter(name, text, labels, registry=registry)

        self.impressions = counter("attribution_impressions_total", "Impressions by the touchpoint's channel")
        self.clicks = counter("attribution_clicks_total", "Clicks by the touchpoint's channel")
        self.leads = counter("attribution_leads_total", "Attributed lead credit")
        self.orders = counter("attribution_orders_total", "Attributed order credit")
        self.new_customers = counter("attribution_new_customers_total", "Attributed first orders of customers")
        self.revenue = counter("attribution_revenue_total", "Attributed revenue, reporting currency")
        self.spend = counter("attribution_spend_total", "Spend (spend reports plus per-event cost)")
        self.gross_profit = counter("attribution_gross_profit_total", "Attributed gross profit (revenue x margin)")
        self.refunds = counter("attribution_refunds_total", "Refunded order credit (credit x refunded share)")
        self.refunded_revenue = counter("attribution_refunded_revenue_total", "Refunded revenue by credit")
        self.commissions = Counter(
            "attribution_commission_total", "Commissions owed", ("affiliate_id", "role"), registry=registry
        )
        self.suspect = Counter(
            "attribution_suspect_total", "Clicks kept from credit by a fraud guard (CLICK_FLOOD, MIN_CLICK_GAP)",
            ("channel", "reason"), registry=registry,
        )
        self.commission_reversals = Counter(
            "attribution_commission_reversed_total", "Commissions reversed by refunds", ("affiliate_id", "role"),
            registry=registry,
        )
        self.events = Counter(
            "attribution_events_total", "Input events by type and outcome", ("type", "outcome"), registry=registry
        )
        self.stale_snapshots = Counter(
            "attribution_stale_snapshots", "Partial snapshots older than the one held (a zombie's, say): ignored",
            registry=registry,
        )
        self.fenced_records = Counter(
            "attribution_fenced_changelog_records",
            "Changelog records dropped, not written: made before the worker lost their partitions (a zombie's)",
            ("table",), registry=registry,
        )
        self.stale_changelog_records = Counter(
            "attribution_stale_changelog_records",
            "Changelog records skipped in recovery: older than the row held (a zombie's late one, or a row read again)",
            ("table",), registry=registry,
        )
        self.lag = BatchHistogram("attribution_event_lag_seconds", "Event time to processed", LAG_BUCKETS, registry)
        self.consumer_lag = Gauge(
            "attribution_consumer_lag", "Input messages not read yet, per owned partition", ("topic", "partition"),
            registry=registry,
        )
        self.signal = Gauge(
            "attribution_signal", "1 for the current action of a key", ("channel", "campaign", "action"),
            registry=registry,
        )
        # Lifetime value by acquisition channel (metrics.ltv), set by the worker that owns the channel.
        self.ltv_clv = Gauge("attribution_ltv_clv", "Revenue per acquired customer, cumulative", ("channel",),
                             registry=registry)
        self.ltv_cac = Gauge("attribution_ltv_cac", "Spend per acquired customer, cumulative", ("channel",),
                             registry=registry)
        self.ltv_ltv_cac = Gauge("attribution_ltv_ltv_cac", "clv / cac, cumulative", ("channel",), registry=registry)
        # The Markov model's shares (metrics.markov), set by the worker that computes the chain.
        self.markov_share = Gauge("attribution_markov_share", "Share of the Markov model's removal effects",
                                  ("channel",), registry=registry)

    def count(self, counts: BatchCounts, counter: Counter, channel: str, campaign: str, amount: float = 1.0) -> None:
        """Add to the counter's (channel, campaign) child in `counts`; nothing for 0, so no series of zeros."""
        if amount:
            label = self.campaign(channel, campaign)
            child = self.children.get((counter, channel, label))
            if child is None:  # `labels()` per event was the stage's costliest call after the state itself
                child = self.children[counter, channel, label] = counter.labels(channel, label)
            counts.add(child, amount)


def configure_logging(level: str) -> None:
    """Set levels explicitly: Faust/mode otherwise leave the root logger at DEBUG (~10% of throughput)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger().setLevel(level)
    for name in ("faust", "mode", "aiokafka", "kafka", "aiohttp", "streams"):
        logging.getLogger(name).setLevel(level)
