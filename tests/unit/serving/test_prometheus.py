"""`BatchHistogram` and `BatchCounts` must expose exactly what prometheus_client's own Histogram and
Counter would for the same observations: dashboards and alerts read these series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.serving.prometheus import LAG_BUCKETS, BatchCounts, BatchHistogram, WorkerMetrics

# Values on, below, between and above the bucket bounds, and zero.
VALUES = [0.0, 0.01, 0.0100001, 0.3, 1.0, 1.5, 2.49, 86400.0, 90000.0, 0.004, 5.0, 5.0]


def exposed(registry: CollectorRegistry) -> set[str]:
    lines = generate_latest(registry).decode().splitlines()
    return {line for line in lines if line and "_created" not in line}


def test_a_batch_histogram_exposes_what_a_prometheus_histogram_does() -> None:
    batch_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("lag_seconds", "Lag", LAG_BUCKETS, batch_registry)
    reference = Histogram("lag_seconds", "Lag", buckets=LAG_BUCKETS, registry=reference_registry)
    batched.observe_many(VALUES[:5])
    batched.observe_many([])
    batched.observe_many(VALUES[5:-1])
    batched.observe(VALUES[-1])
    for value in VALUES:
        reference.observe(value)
    assert exposed(batch_registry) == exposed(reference_registry)
    assert 'lag_seconds_bucket{le="+Inf"} 12.0' in exposed(batch_registry)
    assert 'lag_seconds_bucket{le="0.01"} 3.0' in exposed(batch_registry)


def test_batch_counts_apply_the_sum_once_and_nothing_for_zero() -> None:
    registry = CollectorRegistry()
    counter = Counter("hits_total", "Hits", ("channel",), registry=registry)
    counts = BatchCounts()
    counts.add(counter.labels("a"))
    counts.add(counter.labels("a"), 2.5)
    counts.add(counter.labels("b"), 0.0)
    assert registry.get_sample_value("hits_total", {"channel": "a"}) == 0.0  # nothing before `apply`
    counts.apply()
    counts.apply()  # applied once: the batch is cleared
    assert registry.get_sample_value("hits_total", {"channel": "a"}) == 3.5
    assert registry.get_sample_value("hits_total", {"channel": "b"}) == 0.0


def test_worker_counts_go_to_the_capped_campaign_label_and_skip_zero_amounts() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, campaign_cap=1)
    counts = BatchCounts()
    metrics.count(counts, metrics.impressions, "google_ads", "brand")
    metrics.count(counts, metrics.impressions, "google_ads", "generic", 2)
    metrics.count(counts, metrics.spend, "google_ads", "brand", 0.0)
    counts.apply()
    assert registry.get_sample_value("attribution_impressions_total",
                                     {"channel": "google_ads", "campaign": "brand"}) == 1.0
    assert registry.get_sample_value("attribution_impressions_total",
                                     {"channel": "google_ads", "campaign": "(other)"}) == 2.0
    assert registry.get_sample_value("attribution_spend_total", {"channel": "google_ads", "campaign": "brand"}) is None
