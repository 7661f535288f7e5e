"""Settings from the environment, parsed and checked once (CONTRACT.md section 1).

`Settings.from_env()` raises `ConfigError` naming the variable and the bad value; the CLI
turns that into a one-line message and exit status 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Model = Literal["last_click", "first_click", "linear", "time_decay", "position_based"]
MODELS: tuple[Model, ...] = ("last_click", "first_click", "linear", "time_decay", "position_based")
# The models ATTRIBUTION_MODEL may name: the five rules of position, and the data-driven one (section 8).
MetricModel = Literal["last_click", "first_click", "linear", "time_decay", "position_based", "markov"]
METRIC_MODELS: tuple[MetricModel, ...] = (*MODELS, "markov")

EVENT_LOOPS = ("uvloop", "asyncio")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def parse_duration_ms(text: str) -> int:
    """`500ms`, `30s`, `2m`, `1h`, `30d` -> milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a number and a unit (ms, s, m, h, d), got {text!r}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def parse_fx_rates(text: str) -> dict[str, float]:
    """`EUR=1.08,GBP=1.27` -> {"EUR": 1.08, "GBP": 1.27}."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        code, sep, value = item.partition("=")
        code = code.strip().upper()
        if not sep or not _CURRENCY.match(code):
            raise ValueError(f"expected CODE=rate items like EUR=1.08, got {item!r}")
        rate = float(value)
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate of {code} must be a finite number > 0, got {value.strip()!r}")
        rates[code] = rate
    return rates


class ClickFlood(NamedTuple):
    """CLICK_FLOOD: a tracking ID's clicks beyond `clicks` within any `span_ms` of event time are suspect."""

    clicks: int
    span_ms: int


def parse_click_flood(text: str) -> ClickFlood | None:
    """`30/1h` -> ClickFlood(30, 3600000); `0` or `off` -> None (the rule is off)."""
    if text in ("0", "off"):
        return None
    count, sep, span = text.partition("/")
    if not sep or not count.strip().isdigit():
        raise ValueError(f"expected clicks/span like 30/1h, or 0 or off, got {text!r}")
    clicks, span_ms = int(count), parse_duration_ms(span)
    if clicks < 1 or span_ms <= 0:
        raise ValueError(f"clicks and span must be > 0, got {text!r}")
    return ClickFlood(clicks, span_ms)


def parse_bootstrap(text: str) -> str:
    for server in text.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port[,host:port], got {text!r}")
    return text.strip()


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None = None
    redis_url: str | None = None
    topic_partitions: int = 8
    topic_replication: int | None = None  # TOPIC_REPLICATION unset: min(3, brokers) (streams.kafka.topics)
    dlq_retention_ms: int = 7 * 86_400_000  # DLQ_RETENTION: rejected inputs carry raw identifiers
    erasure_deadline_ms: int = 3_600_000  # ERASURE_DEADLINE: request to confirmation on erasure-log
    attribution_model: MetricModel = "last_click"
    click_lookback_ms: int = 30 * 86_400_000
    view_lookback_ms: int = 86_400_000
    time_decay_half_life_ms: int = 7 * 86_400_000
    metrics_window_ms: int = 60_000
    allowed_lateness_ms: int = 86_400_000
    dedup_window_ms: int = 7 * 86_400_000
    state_store: Literal["memory", "rocksdb"] = "memory"
    reporting_currency: str = "USD"
    collector_keys: tuple[str, ...] = ()
    collector_port: int = 8080
    web_port: int = 6066
    web_token: str | None = None  # unset: the page and the read API are open
    prometheus_pushgateway: str | None = None
    default_margin: float = 1.0
    signal_window_ms: int = 3_600_000
    signal_min_spend: float = 50.0
    romi_floor: float = 0.0
    romi_scale: float = 1.0
    customer_retention_ms: int = 400 * 86_400_000
    refund_window_ms: int = 90 * 86_400_000
    fx_rates: Mapping[str, float] = field(default_factory=dict)
    path_timeout_ms: int = 86_400_000
    markov_window_ms: int = 30 * 86_400_000
    min_click_gap_ms: int = 10_000  # MIN_CLICK_GAP (0: off)
    click_flood: ClickFlood | None = ClickFlood(30, 3_600_000)  # CLICK_FLOOD (None: off)
    # Not in the contract: engine tuning with safe defaults.
    attribution_grace_ms: int = 2_000
    kafka_session_timeout_ms: int = 10_000
    campaign_label_cap: int = 200
    log_level: str = "WARNING"
    worker_name: str = ""
    state_dir: str = ".run/state"
    rocksdb_cache_mb: int = 128  # one block cache for every RocksDB database of the worker
    ltv_stage: bool = True  # LTV_STAGE=off: no lifetime-value stage (its cost measured in bench/)
    worker_intake: bool = True  # WORKER_INTAKE=off: the worker reads no input topic; `attribution intake` does
    event_loop: str = "uvloop"  # EVENT_LOOP=asyncio: the standard library's loop instead of uvloop
    markov_interval_ms: int = 10_000  # the Markov model is recomputed at most this often (when paths changed)
    markov_stage: bool = True  # MARKOV_STAGE=off: no paths, no chain (its cost measured in bench/)
    erasure_delay_ms: int = 0  # ERASURE_DELAY: fault injection for tests: a part waits this long before erasing

    @property
    def longest_lookback_ms(self) -> int:
        return max(self.click_lookback_ms, self.view_lookback_ms)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        currency = reader.get("REPORTING_CURRENCY", "USD", _currency)
        return cls(
            kafka_bootstrap=reader.get("KAFKA_BOOTSTRAP", None, parse_bootstrap),
            redis_url=reader.get("REDIS_URL", None, _redis_url),
            topic_partitions=reader.get("TOPIC_PARTITIONS", 8, _positive_int),
            topic_replication=reader.get("TOPIC_REPLICATION", None, _positive_int),
            dlq_retention_ms=reader.get("DLQ_RETENTION", "7d", _positive_duration),
            erasure_deadline_ms=reader.get("ERASURE_DEADLINE", "1h", _positive_duration),
            attribution_model=reader.get("ATTRIBUTION_MODEL", "last_click", _model),
            click_lookback_ms=reader.get("CLICK_LOOKBACK", "30d", _positive_duration),
            view_lookback_ms=reader.get("VIEW_LOOKBACK", "1d", _positive_duration),
            time_decay_half_life_ms=reader.get("TIME_DECAY_HALF_LIFE", "7d", _positive_duration),
            metrics_window_ms=reader.get("METRICS_WINDOW", "60s", _positive_duration),
            allowed_lateness_ms=reader.get("ALLOWED_LATENESS", "1d", parse_duration_ms),
            dedup_window_ms=reader.get("DEDUP_WINDOW", "7d", _positive_duration),
            state_store=reader.get("STATE_STORE", "memory", _state_store),
            reporting_currency=currency,
            collector_keys=reader.get("COLLECTOR_KEYS", (), _keys),
            collector_port=reader.get("COLLECTOR_PORT", 8080, _port),
            web_port=reader.get("WEB_PORT", 6066, _port),
            web_token=reader.get("WEB_TOKEN", None, _token),
            prometheus_pushgateway=reader.get("PROMETHEUS_PUSHGATEWAY", None, parse_bootstrap),
            default_margin=reader.get("DEFAULT_MARGIN", 1.0, _unit_interval),
            signal_window_ms=reader.get("SIGNAL_WINDOW", "1h", _positive_duration),
            signal_min_spend=reader.get("SIGNAL_MIN_SPEND", 50.0, _non_negative),
            romi_floor=reader.get("ROMI_FLOOR", 0.0, _finite),
            romi_scale=reader.get("ROMI_SCALE", 1.0, _finite),
            customer_retention_ms=reader.get("CUSTOMER_RETENTION", "400d", _positive_duration),
            refund_window_ms=reader.get("REFUND_WINDOW", "90d", _positive_duration),
            fx_rates={**reader.get("FX_RATES", {}, parse_fx_rates), currency: 1.0},
            path_timeout_ms=reader.get("PATH_TIMEOUT", "1d", _positive_duration),
            markov_window_ms=reader.get("MARKOV_WINDOW", "30d", _positive_duration),
            min_click_gap_ms=reader.get("MIN_CLICK_GAP", "10s", _duration_or_off),
            click_flood=reader.get("CLICK_FLOOD", "30/1h", parse_click_flood),
            attribution_grace_ms=reader.get("ATTRIBUTION_GRACE", "2s", parse_duration_ms),
            kafka_session_timeout_ms=reader.get("KAFKA_SESSION_TIMEOUT", "10s", _positive_duration),
            campaign_label_cap=reader.get("CAMPAIGN_LABEL_CAP", 200, _positive_int),
            log_level=reader.get("LOG_LEVEL", "WARNING", _log_level),
            worker_name=reader.get("WORKER_NAME", "", str),
            state_dir=reader.get("STATE_DIR", ".run/state", str),
            rocksdb_cache_mb=reader.get("ROCKSDB_CACHE_MB", 128, _positive_int),
            ltv_stage=reader.get("LTV_STAGE", "on", _on_off),
            worker_intake=reader.get("WORKER_INTAKE", "on", _on_off),
            event_loop=reader.get("EVENT_LOOP", "uvloop", _event_loop),
            markov_interval_ms=reader.get("MARKOV_INTERVAL", "10s", _positive_duration),
            markov_stage=reader.get("MARKOV_STAGE", "on", _on_off),
            erasure_delay_ms=reader.get("ERASURE_DELAY", "0ms", parse_duration_ms),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name, default, parse):
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            if isinstance(default, str) and parse is not str:
                return parse(default)
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port 0-65535, got {value}")
    return value


def _positive_duration(text: str) -> int:
    value = parse_duration_ms(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def _duration_or_off(text: str) -> int:
    """A duration; `0` or `off` turn the rule off (0 ms)."""
    return 0 if text in ("0", "off") else parse_duration_ms(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if not value >= 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {text!r}")
    return value


def _event_loop(text: str) -> str:
    if text not in EVENT_LOOPS:
        raise ValueError(f"must be one of {', '.join(EVENT_LOOPS)}, got {text!r}")
    return text


def _model(text: str) -> MetricModel:
    if text not in METRIC_MODELS:
        raise ValueError(f"must be one of {', '.join(METRIC_MODELS)}, got {text!r}")
    return text  # type: ignore[return-value]


def _state_store(text: str) -> Literal["memory", "rocksdb"]:
    if text not in ("memory", "rocksdb"):
        raise ValueError(f"must be memory or rocksdb, got {text!r}")
    return text  # type: ignore[return-value]


def _currency(text: str) -> str:
    if not _CURRENCY.match(text):
        raise ValueError(f"must be an ISO 4217 code like USD, got {text!r}")
    return text


def _keys(text: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in text.split(",") if key.strip())


def _token(text: str) -> str:
    if not all(33 <= ord(char) <= 126 for char in text):
        raise ValueError("must be printable ASCII without spaces (it travels in an Authorization header)")
    return text


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {text!r}")
    return text


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"must be on or off, got {text!r}")
    return text == "on"


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}")
    return level
