"""The page's boards (streams/serving/dashboard.py): trends, credits per model, signals, pipeline health."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from streams.serving.dashboard import (
    Health,
    HealthSample,
    ModelCredits,
    Signals,
    Trends,
    health_sample,
    parse_last,
)
from streams.serving.prometheus import WorkerMetrics

W = 10_000


def metric(channel: str, start: int, spend: float = 1.0, campaign: str | None = None) -> dict:
    return {"channel": channel, "campaign": campaign, "window_start": start, "window_end": start + W, "spend": spend}


def conversion(cid: str, ts: int, models: dict[str, list[tuple[str, float]]], kind: str = "order",
               revenue: float = 100.0) -> dict:
    return {"conversion_id": cid, "type": kind, "ts": ts, "revenue": revenue, "model": "last_click",
            "credits": [], "models": {m: [{"channel": c, "weight": w, "revenue": w * revenue} for c, w in credits]
                                      for m, credits in models.items()}}


# --- trends ---------------------------------------------------------------------------------------------


def test_trends_keep_the_latest_message_per_channel_and_window_ordered_by_channel_then_window() -> None:
    trends = Trends(keep=5)
    for message in (metric("b", 2 * W), metric("a", W, 1.0), metric("a", 2 * W), metric("a", W, 7.0)):
        assert trends.add(message)
    assert [(m["channel"], m["window_start"], m["spend"]) for m in trends.rows()] == [
        ("a", W, 7.0), ("a", 2 * W, 1.0), ("b", 2 * W, 1.0)]
    assert trends.span() == (W, 2 * W)


def test_trends_keep_only_the_last_windows_and_refuse_older_ones() -> None:
    trends = Trends(keep=3)
    for start in range(6):
        trends.add(metric("a", start * W))
    assert [m["window_start"] for m in trends.rows()] == [3 * W, 4 * W, 5 * W]
    assert not trends.add(metric("a", 0))
    assert [m["window_start"] for m in trends.rows(last=2)] == [4 * W, 5 * W]


@pytest.mark.parametrize("message", [None, [], {"channel": 3, "window_start": 0}, {"channel": "a"},
                                     {"channel": "a", "window_start": "0"}, {"channel": "a", "window_start": True},
                                     metric("a", 0, campaign="brand")])
def test_trends_ignore_what_is_no_channel_message(message: object) -> None:
    trends = Trends()
    assert not trends.add(message)
    assert trends.rows() == [] and trends.span() is None


# --- credits per model ----------------------------------------------------------------------------------


def test_credits_are_summed_per_model_and_channel_with_leads_and_orders_apart() -> None:
    credits = ModelCredits(W)
    credits.add(conversion("o1", 5, {"last_click": [("google", 1.0)], "linear": [("google", 0.5), ("email", 0.5)]}))
    credits.add(conversion("l1", W + 1, {"last_click": [("email", 1.0)], "linear": [("email", 1.0)]}, kind="lead",
                           revenue=0.0))
    view = credits.view()
    assert view["models"] == ["last_click", "linear"]
    assert (view["span_start"], view["span_end"]) == (0, 2 * W)
    rows = {(r["model"], r["channel"]): r for r in view["rows"]}
    assert rows["last_click", "google"] == {"channel": "google", "model": "last_click", "leads": 0.0, "orders": 1.0,
                                            "conversions": 1.0, "revenue": 100.0}
    assert rows["linear", "email"]["conversions"] == 1.5 and rows["linear", "email"]["leads"] == 1.0
    assert rows["linear", "google"]["revenue"] == 50.0
    assert [(r["channel"], r["model"]) for r in view["rows"]] == [
        ("email", "last_click"), ("email", "linear"), ("google", "last_click"), ("google", "linear")]


def test_any_model_the_messages_carry_is_shown_markov_included() -> None:
    credits = ModelCredits(W)
    credits.add(conversion("o1", 5, {"last_click": [("a", 1.0)], "markov": [("a", 0.25), ("b", 0.75)]}))
    assert credits.view()["models"] == ["last_click", "markov"]


def test_a_repeated_attribution_message_counts_once_and_erased_or_refund_messages_not_at_all() -> None:
    credits = ModelCredits(W)
    message = conversion("o1", 5, {"last_click": [("a", 1.0)]})
    assert credits.add(message)
    assert not credits.add(dict(message))
    assert not credits.add({**conversion("o2", 6, {"last_click": [("a", 1.0)]}), "erased": True})
    assert not credits.add({**conversion("r1", 7, {"last_click": [("a", 1.0)]}), "type": "refund"})
    assert credits.view()["rows"][0]["orders"] == 1.0


def test_a_message_without_models_counts_under_its_own_model() -> None:
    credits = ModelCredits(W)
    assert credits.add({"conversion_id": "o", "type": "order", "ts": 1, "model": "first_click",
                        "credits": [{"channel": "a", "weight": 1.0, "revenue": 10.0}]})
    assert credits.view()["models"] == ["first_click"]


def test_credits_keep_only_the_last_windows() -> None:
    credits = ModelCredits(W, keep=2)
    for i in range(4):
        credits.add(conversion(f"o{i}", i * W, {"last_click": [("a", 1.0)]}))
    assert credits.view()["rows"][0]["orders"] == 2.0
    assert credits.view(last=1)["rows"][0]["orders"] == 1.0
    assert not credits.add(conversion("old", 0, {"last_click": [("a", 1.0)]}))


@pytest.mark.parametrize("message", [None, "x", {"type": "order", "ts": 1}, {"conversion_id": "c", "type": "order"},
                                     {"conversion_id": "c", "type": "order", "ts": 1, "models": {"m": "junk"}}])
def test_credits_ignore_malformed_messages_without_failing(message: object) -> None:
    credits = ModelCredits(W)
    credits.add(message)
    assert credits.view()["rows"] == []


def test_no_conversion_yet_has_no_span() -> None:
    assert ModelCredits(W).view() == {"span_start": None, "span_end": None, "models": [], "rows": []}


# --- signals --------------------------------------------------------------------------------------------


def test_signals_keep_the_latest_action_per_key_and_forget_a_key_on_a_tombstone() -> None:
    signals = Signals()
    signals.add(b"a", {"channel": "a", "campaign": None, "action": "keep", "reason": "r1"})
    signals.add(b"a", {"channel": "a", "campaign": None, "action": "pause", "reason": "r2"})
    signals.add(b"a/brand", {"channel": "a", "campaign": "brand", "action": "scale", "reason": "r3"})
    signals.add(None, {"channel": "b", "campaign": None, "action": "scale", "reason": "r4"})
    assert [(s["channel"], s["campaign"], s["action"]) for s in signals.rows()] == [
        ("a", None, "pause"), ("a", "brand", "scale"), ("b", None, "scale")]
    assert signals.add(b"a/brand", None)
    assert not signals.add(b"gone", None)
    assert not signals.add(b"x", {"channel": "x"})
    assert [s["action"] for s in signals.rows()] == ["pause", "scale"]


# --- pipeline health ------------------------------------------------------------------------------------


def test_a_health_sample_sums_the_worker_counters() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, 10)
    metrics.events.labels("click", "ok").inc(90)
    metrics.events.labels("order", "invalid").inc(10)
    metrics.lag.observe_many([1.0, 3.0])
    metrics.consumer_lag.labels("clicks", "0").set(5)
    sample = health_sample(12.0, registry.collect())
    assert sample == HealthSample(12.0, events=100.0, invalid=10.0, lag_sum=4.0, lag_count=2.0, consumer_lag=5.0)


def test_health_rates_are_over_the_span_of_the_samples() -> None:
    health = Health(span_s=10.0)
    assert health.view()["events_per_s"] is None
    health.add(HealthSample(0.0, 0, 0, 0.0, 0, 0))
    assert health.view()["events_per_s"] is None  # one sample: no rate yet
    health.add(HealthSample(5.0, 500, 5, 10.0, 100, 3))
    view = health.view()
    assert view["events_per_s"] == 100.0 and view["dead_letter_per_s"] == 1.0
    assert view["dead_letter_share"] == 0.01 and view["event_lag_s"] == 0.1 and view["consumer_lag"] == 3
    for at in range(6, 31):
        health.add(HealthSample(float(at), 100 * at, 0, 0.0, 0, 0))
    assert health.view()["span_s"] <= 11.0 and health.view()["events_per_s"] == 100.0
    assert health.view()["dead_letter_share"] == 0.0 and health.view()["event_lag_s"] is None


@pytest.mark.parametrize(("query", "last"), [({}, 30), ({"windows": ""}, 30), ({"windows": "1"}, 1),
                                             ({"windows": "30"}, 30)])
def test_windows_parameter(query: dict[str, str], last: int) -> None:
    assert parse_last(query) == last


@pytest.mark.parametrize("raw", ["0", "31", "-1", "abc", "1.5", "٣"])
def test_a_bad_windows_parameter_is_refused_with_the_range(raw: str) -> None:
    with pytest.raises(ValueError, match="from 1 to 30"):
        parse_last({"windows": raw})
