"""What the live page (`GET /`) reads beyond `/api/v1/kpis`: pure boards fed with topic messages, no I/O.

* `Trends` keeps each channel's latest `metrics.channel` message for its last windows (`GET /api/v1/trends`).
* `ModelCredits` sums the `attributions` messages' credits under every model they carry (`models`: the five
  rule models, and any model added later, such as `markov`), per channel over the same recent windows, so
  the page compares models side by side (`GET /api/v1/models`).
* `Signals` keeps the latest switch-off signal per channel and per channel/campaign (`GET /api/v1/signals`).
* `Health` turns samples of the worker's counters into rates: events/s, dead-letter rate, event lag
  (`GET /api/v1/health`).

Messages arrive from a plain consumer in offset order per partition; a repeat (at-least-once delivery) of a
message replaces, never adds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TREND_WINDOWS = 30  # windows per channel kept for the trend charts and the models comparison
HEALTH_SPAN_S = 10.0  # rates are averaged over this many seconds of samples


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def window_of(ts: int, window_ms: int) -> int:
    return ts - ts % window_ms


class Trends:
    """The latest `metrics.channel` message per channel and window, for the last `keep` windows."""

    def __init__(self, keep: int = TREND_WINDOWS) -> None:
        self.keep = keep
        self._windows: dict[int, dict[str, dict[str, Any]]] = {}

    def add(self, message: Any) -> bool:
        if not isinstance(message, dict) or not isinstance(message.get("channel"), str):
            return False
        start = message.get("window_start")
        if not isinstance(start, int) or isinstance(start, bool) or message.get("campaign") not in (None, ""):
            return False
        if len(self._windows) >= self.keep and start < min(self._windows):
            return False  # older than every window kept
        self._windows.setdefault(start, {})[message["channel"]] = message
        while len(self._windows) > self.keep:
            del self._windows[min(self._windows)]
        return True

    def span(self) -> tuple[int, int] | None:
        """The first window's start and the newest window's start, or None before any message."""
        return (min(self._windows), max(self._windows)) if self._windows else None

    def rows(self, last: int | None = None) -> list[dict[str, Any]]:
        """The messages of the last `last` windows (all kept when None), ordered by channel, then window."""
        starts = sorted(self._windows)[-last:] if last else sorted(self._windows)
        rows = [message for start in starts for message in self._windows[start].values()]
        return sorted(rows, key=lambda m: (m["channel"], m["window_start"]))


@dataclass
class _WindowCredits:
    seen: set[str]  # conversion ids already summed: a repeat of the message changes nothing
    sums: dict[tuple[str, str], list[float]]  # (model, channel) -> [leads, orders, revenue]


class ModelCredits:
    """Credits per model and channel of the conversions whose `ts` falls in the last `keep` windows."""

    def __init__(self, window_ms: int, keep: int = TREND_WINDOWS) -> None:
        self.window_ms = window_ms
        self.keep = keep
        self._windows: dict[int, _WindowCredits] = {}

    def add(self, message: Any) -> bool:
        if not isinstance(message, dict) or message.get("type") not in ("lead", "order") or message.get("erased"):
            return False
        ts, conversion_id = message.get("ts"), message.get("conversion_id")
        if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(conversion_id, str):
            return False
        by_model = message.get("models")
        if not isinstance(by_model, dict):  # a message from before `models`: its own model only
            by_model = {message.get("model"): message.get("credits")}
        start = window_of(ts, self.window_ms)
        if len(self._windows) >= self.keep and start < min(self._windows):
            return False
        window = self._windows.setdefault(start, _WindowCredits(set(), {}))
        if conversion_id in window.seen:
            return False
        window.seen.add(conversion_id)
        is_order = message["type"] == "order"
        for model, credits in by_model.items():
            if not isinstance(model, str) or not isinstance(credits, list):
                continue
            for credit in credits:
                if not isinstance(credit, dict) or not isinstance(credit.get("channel"), str):
                    continue
                sums = window.sums.setdefault((model, credit["channel"]), [0.0, 0.0, 0.0])
                sums[1 if is_order else 0] += _number(credit.get("weight"))
                sums[2] += _number(credit.get("revenue"))
        while len(self._windows) > self.keep:
            del self._windows[min(self._windows)]
        return True

    def view(self, last: int | None = None) -> dict[str, Any]:
        """`{"span_start", "span_end", "models", "rows": [{"channel", "model", "leads", "orders", "conversions",
        "revenue"}]}` summed over the last `last` windows (all kept when None); rows by channel, then model."""
        starts = sorted(self._windows)[-last:] if last else sorted(self._windows)
        totals: dict[tuple[str, str], list[float]] = {}
        for start in starts:
            for key, (leads, orders, revenue) in self._windows[start].sums.items():
                held = totals.setdefault(key, [0.0, 0.0, 0.0])
                held[0] += leads
                held[1] += orders
                held[2] += revenue
        rows = [
            {"channel": channel, "model": model, "leads": round(leads, 6), "orders": round(orders, 6),
             "conversions": round(leads + orders, 6), "revenue": round(revenue, 6)}
            for (model, channel), (leads, orders, revenue) in sorted(totals.items(), key=lambda kv: kv[0][::-1])
        ]
        return {
            "span_start": starts[0] if starts else None,
            "span_end": starts[-1] + self.window_ms if starts else None,
            "models": sorted({model for model, _ in totals}),
            "rows": rows,
        }


class Signals:
    """The latest `signals` message per key (`channel` or `channel/campaign`); a tombstone forgets the key."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}

    def add(self, key: bytes | str | None, message: Any) -> bool:
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if message is None:
            return self._latest.pop(key, None) is not None if key else False
        if not isinstance(message, dict) or not isinstance(message.get("channel"), str):
            return False
        if not isinstance(message.get("action"), str):
            return False
        campaign = message.get("campaign")
        self._latest[key or (f"{message['channel']}/{campaign}" if campaign else message["channel"])] = message
        return True

    def rows(self) -> list[dict[str, Any]]:
        """Latest signals, channel-level first within a channel, ordered by channel then campaign."""
        return sorted(self._latest.values(), key=lambda m: (m["channel"], m.get("campaign") or ""))


# --- pipeline health -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSample:
    at: float  # monotonic seconds
    events: float  # input events read, every outcome
    invalid: float  # of those, sent to the dead-letter topic
    lag_sum: float  # event lag histogram: sum of seconds and count of observations
    lag_count: float
    consumer_lag: float  # input messages not read yet, over the partitions this worker owns


def health_sample(at: float, families: Iterable[Any]) -> HealthSample:
    """A sample from Prometheus metric families (`registry.collect()`): the counters the page rates."""
    events = invalid = lag_sum = lag_count = consumer_lag = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == "attribution_events_total":
                events += sample.value
                invalid += sample.value if sample.labels.get("outcome") == "invalid" else 0.0
            elif sample.name == "attribution_event_lag_seconds_sum":
                lag_sum += sample.value
            elif sample.name == "attribution_event_lag_seconds_count":
                lag_count += sample.value
            elif sample.name == "attribution_consumer_lag":
                consumer_lag += sample.value
    return HealthSample(at, events, invalid, lag_sum, lag_count, consumer_lag)


class Health:
    """Rates over the last `span_s` seconds of samples."""

    def __init__(self, span_s: float = HEALTH_SPAN_S) -> None:
        self.span_s = span_s
        self._samples: deque[HealthSample] = deque()

    def add(self, sample: HealthSample) -> None:
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at - self._samples[1].at >= self.span_s:
            self._samples.popleft()

    def view(self) -> dict[str, Any]:
        """`events_per_s`, `dead_letter_per_s`, `dead_letter_share` (of events, over the span), `event_lag_s`
        (mean over the span), `consumer_lag` (messages), and the totals; rates are null before two samples."""
        if not self._samples:
            return {"span_s": 0.0, "events_per_s": None, "dead_letter_per_s": None, "dead_letter_share": None,
                    "event_lag_s": None, "consumer_lag": None, "events_total": 0.0, "dead_letter_total": 0.0}
        first, last = self._samples[0], self._samples[-1]
        seconds = last.at - first.at
        events = last.events - first.events
        lag_count = last.lag_count - first.lag_count
        return {
            "span_s": round(seconds, 3),
            "events_per_s": events / seconds if seconds > 0 else None,
            "dead_letter_per_s": (last.invalid - first.invalid) / seconds if seconds > 0 else None,
            "dead_letter_share": (last.invalid - first.invalid) / events if events > 0 else None,
            "event_lag_s": (last.lag_sum - first.lag_sum) / lag_count if lag_count > 0 else None,
            "consumer_lag": last.consumer_lag,
            "events_total": last.events,
            "dead_letter_total": last.invalid,
        }


def parse_last(query: Mapping[str, str], keep: int = TREND_WINDOWS) -> int:
    """`?windows=N` of the trend and model endpoints: 1..keep, all kept when absent. ValueError otherwise."""
    raw = query.get("windows")
    if raw is None or raw == "":
        return keep
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= keep:
        raise ValueError(f"windows must be a whole number from 1 to {keep}, got {raw!r}")
    return int(raw)
