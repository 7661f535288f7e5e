"""Configuration by environment variable (CONTRACT.md section 1): streams/config.py and the CLI's exit 2."""

from __future__ import annotations

import dataclasses

import pytest

from streams.commands import cli
from streams.config import METRIC_MODELS, ClickFlood, ConfigError, Settings, parse_duration_ms, parse_fx_rates

DAY = 86_400_000


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_every_contract_variable_has_its_documented_default() -> None:
    s = settings()
    assert s.kafka_bootstrap is None  # unset: start the embedded broker
    assert s.redis_url is None  # unset: in-process store
    assert s.topic_partitions == 8
    assert s.attribution_model == "last_click"
    assert s.click_lookback_ms == 30 * DAY
    assert s.view_lookback_ms == 1 * DAY
    assert s.time_decay_half_life_ms == 7 * DAY
    assert s.metrics_window_ms == 60_000
    assert s.allowed_lateness_ms == 1 * DAY
    assert s.dedup_window_ms == 7 * DAY
    assert s.state_store == "memory"
    assert s.reporting_currency == "USD"
    assert s.collector_keys == ()  # unset: batch API closed
    assert s.collector_port == 8080
    assert s.web_port == 6066
    assert s.web_token is None  # unset: the page and the read API are open
    assert s.prometheus_pushgateway is None
    assert s.default_margin == 1.0
    assert s.signal_window_ms == 3_600_000
    assert s.signal_min_spend == 50.0
    assert s.romi_floor == 0.0
    assert s.romi_scale == 1.0
    assert s.customer_retention_ms == 400 * DAY
    assert dict(s.fx_rates) == {"USD": 1.0}  # empty: only the reporting currency itself
    assert s.path_timeout_ms == 1 * DAY
    assert s.markov_window_ms == 30 * DAY
    assert s.min_click_gap_ms == 10_000
    assert s.click_flood == ClickFlood(30, 3_600_000)


def test_from_env_without_a_mapping_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "3")
    assert Settings.from_env().topic_partitions == 3


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().topic_partitions = 2  # type: ignore[misc]


def test_an_empty_variable_means_its_default() -> None:
    assert settings(TOPIC_PARTITIONS="", CLICK_LOOKBACK="  ") == settings()


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("2m", 120_000), ("1h", 3_600_000), ("30d", 30 * DAY),
     ("1.5h", 5_400_000), (" 7d ", 7 * DAY), ("0s", 0)],
)
def test_durations_are_a_number_and_a_unit(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["30", "d", "30x", "-1s", "1 hour", "", "1e3s", "30D"])
def test_a_duration_without_a_known_unit_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number and a unit"):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("variable", "field", "text", "value"),
    [
        ("KAFKA_BOOTSTRAP", "kafka_bootstrap", "k1:9092,k2:9093", "k1:9092,k2:9093"),
        ("REDIS_URL", "redis_url", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("TOPIC_PARTITIONS", "topic_partitions", "12", 12),
        ("ATTRIBUTION_MODEL", "attribution_model", "time_decay", "time_decay"),
        ("CLICK_LOOKBACK", "click_lookback_ms", "7d", 7 * DAY),
        ("VIEW_LOOKBACK", "view_lookback_ms", "2h", 2 * 3_600_000),
        ("TIME_DECAY_HALF_LIFE", "time_decay_half_life_ms", "1d", DAY),
        ("METRICS_WINDOW", "metrics_window_ms", "500ms", 500),
        ("ALLOWED_LATENESS", "allowed_lateness_ms", "0s", 0),
        ("DEDUP_WINDOW", "dedup_window_ms", "2d", 2 * DAY),
        ("STATE_STORE", "state_store", "rocksdb", "rocksdb"),
        ("REPORTING_CURRENCY", "reporting_currency", "EUR", "EUR"),
        ("COLLECTOR_KEYS", "collector_keys", "k1, k2,,", ("k1", "k2")),
        ("COLLECTOR_PORT", "collector_port", "9000", 9000),
        ("WEB_PORT", "web_port", "6067", 6067),
        ("WEB_TOKEN", "web_token", "s3cret-Token_1", "s3cret-Token_1"),
        ("PROMETHEUS_PUSHGATEWAY", "prometheus_pushgateway", "pgw:9091", "pgw:9091"),
        ("DEFAULT_MARGIN", "default_margin", "0.4", 0.4),
        ("SIGNAL_WINDOW", "signal_window_ms", "30m", 1_800_000),
        ("SIGNAL_MIN_SPEND", "signal_min_spend", "0", 0.0),
        ("ROMI_FLOOR", "romi_floor", "-0.5", -0.5),
        ("ROMI_SCALE", "romi_scale", "2", 2.0),
        ("CUSTOMER_RETENTION", "customer_retention_ms", "90d", 90 * DAY),
        ("PATH_TIMEOUT", "path_timeout_ms", "30m", 1_800_000),
        ("MARKOV_WINDOW", "markov_window_ms", "7d", 7 * DAY),
        ("ATTRIBUTION_MODEL", "attribution_model", "markov", "markov"),
        ("MIN_CLICK_GAP", "min_click_gap_ms", "30s", 30_000),
        ("MIN_CLICK_GAP", "min_click_gap_ms", "0", 0),
        ("MIN_CLICK_GAP", "min_click_gap_ms", "off", 0),
        ("CLICK_FLOOD", "click_flood", "100/1d", ClickFlood(100, DAY)),
        ("CLICK_FLOOD", "click_flood", " 5 / 90s ", ClickFlood(5, 90_000)),
        ("CLICK_FLOOD", "click_flood", "0", None),
        ("CLICK_FLOOD", "click_flood", "off", None),
    ],
)
def test_every_contract_variable_is_read(variable: str, field: str, text: str, value: object) -> None:
    assert getattr(settings(**{variable: text}), field) == value


@pytest.mark.parametrize("model", METRIC_MODELS)
def test_every_attribution_model_is_accepted(model: str) -> None:
    assert settings(ATTRIBUTION_MODEL=model).attribution_model == model


def test_fx_rates_are_the_value_of_one_unit_in_the_reporting_currency() -> None:
    assert dict(settings(FX_RATES="EUR=1.08,GBP=1.27").fx_rates) == {"EUR": 1.08, "GBP": 1.27, "USD": 1.0}


def test_the_reporting_currency_always_converts_at_one() -> None:
    assert settings(REPORTING_CURRENCY="EUR", FX_RATES="EUR=2,USD=0.9").fx_rates["EUR"] == 1.0


def test_fx_rates_tolerate_spaces_and_a_trailing_comma() -> None:
    assert parse_fx_rates(" eur = 1.08 , ") == {"EUR": 1.08}


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("KAFKA_BOOTSTRAP", "localhost"),
        ("KAFKA_BOOTSTRAP", "localhost:ninety"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("TOPIC_PARTITIONS", "0"),
        ("TOPIC_PARTITIONS", "eight"),
        ("ATTRIBUTION_MODEL", "last_touch"),
        ("CLICK_LOOKBACK", "30"),
        ("PATH_TIMEOUT", "0s"),
        ("MARKOV_WINDOW", "30"),
        ("CLICK_LOOKBACK", "0d"),
        ("VIEW_LOOKBACK", "1 day"),
        ("TIME_DECAY_HALF_LIFE", "0s"),
        ("METRICS_WINDOW", "60"),
        ("ALLOWED_LATENESS", "-1d"),
        ("DEDUP_WINDOW", "week"),
        ("STATE_STORE", "redis"),
        ("REPORTING_CURRENCY", "usd"),
        ("REPORTING_CURRENCY", "EURO"),
        ("COLLECTOR_PORT", "65536"),
        ("COLLECTOR_PORT", "http"),
        ("WEB_PORT", "-1"),
        ("WEB_TOKEN", "two words"),
        ("WEB_TOKEN", "caf\u00e9"),
        ("PROMETHEUS_PUSHGATEWAY", "pushgateway"),
        ("DEFAULT_MARGIN", "1.5"),
        ("DEFAULT_MARGIN", "-0.1"),
        ("DEFAULT_MARGIN", "nan"),
        ("SIGNAL_WINDOW", "1"),
        ("SIGNAL_MIN_SPEND", "-5"),
        ("SIGNAL_MIN_SPEND", "inf"),
        ("ROMI_FLOOR", "low"),
        ("ROMI_FLOOR", "nan"),
        ("ROMI_SCALE", "inf"),
        ("CUSTOMER_RETENTION", "400"),
        ("FX_RATES", "EUR"),
        ("FX_RATES", "EUR=abc"),
        ("FX_RATES", "EUR=0"),
        ("FX_RATES", "EUR=-1.08"),
        ("FX_RATES", "EUR=inf"),
        ("FX_RATES", "EURO=1.08"),
        ("MIN_CLICK_GAP", "10"),
        ("MIN_CLICK_GAP", "-1s"),
        ("CLICK_FLOOD", "30"),
        ("CLICK_FLOOD", "30/"),
        ("CLICK_FLOOD", "0/1h"),
        ("CLICK_FLOOD", "30/0s"),
        ("CLICK_FLOOD", "many/1h"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable_and_the_value(variable: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{variable: text})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert repr(text) in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_the_cli_prints_a_bad_value_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLICK_LOOKBACK", "thirty days")
    assert cli.main(["top", "--once"]) == 2
    err = capsys.readouterr().err
    assert "CLICK_LOOKBACK" in err and "thirty days" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_the_cli_stops_on_a_bad_value_before_running_any_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "many")
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: pytest.fail(f"{name} was imported"))
    assert cli.main(["worker"]) == 2


# --- not in the contract: LTV_STAGE (issue #10: the lifetime-value stage can be switched off) ------------


@pytest.mark.parametrize(("text", "on"), [("on", True), ("off", False), (" off ", False), ("", True)])
def test_ltv_stage_is_on_or_off_and_on_by_default(text: str, on: bool) -> None:
    assert settings().ltv_stage is True
    assert settings(LTV_STAGE=text).ltv_stage is on


@pytest.mark.parametrize("text", ["no", "false", "0", "ON", "disabled"])
def test_a_bad_ltv_stage_raises_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=f"^LTV_STAGE={text!r} is not valid: must be on or off"):
        settings(LTV_STAGE=text)


def test_the_cli_exits_2_on_a_bad_ltv_stage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LTV_STAGE", "maybe")
    assert cli.main(["top", "--once"]) == 2
    assert "LTV_STAGE='maybe'" in capsys.readouterr().err


# --- not in the contract: WORKER_INTAKE (the intake in processes of its own, `attribution intake`) -------


@pytest.mark.parametrize(("text", "on"), [("on", True), ("off", False), ("", True)])
def test_worker_intake_is_on_or_off_and_on_by_default(text: str, on: bool) -> None:
    assert settings().worker_intake is True
    assert settings(WORKER_INTAKE=text).worker_intake is on


def test_a_bad_worker_intake_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="^WORKER_INTAKE='separate' is not valid: must be on or off"):
        settings(WORKER_INTAKE="separate")


# --- not in the contract: EVENT_LOOP (uvloop or asyncio's own) ------------------------------------


@pytest.mark.parametrize(("text", "loop"), [("uvloop", "uvloop"), ("asyncio", "asyncio"), ("", "uvloop")])
def test_event_loop_is_uvloop_by_default_or_asyncio(text: str, loop: str) -> None:
    assert settings(EVENT_LOOP=text).event_loop == loop


def test_a_bad_event_loop_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="^EVENT_LOOP='trio' is not valid: must be one of uvloop, asyncio"):
        settings(EVENT_LOOP="trio")


# --- TOPIC_REPLICATION: copies of each partition of the topics the engine creates ----------------------


def test_topic_replication_is_unset_by_default_or_a_positive_number() -> None:
    assert settings().topic_replication is None
    assert settings(TOPIC_REPLICATION="3").topic_replication == 3


@pytest.mark.parametrize("text", ["0", "-1", "three"])
def test_a_bad_topic_replication_raises_config_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=f"^TOPIC_REPLICATION='{text}' is not valid"):
        settings(TOPIC_REPLICATION=text)


def test_dlq_retention_is_seven_days_by_default_or_a_positive_duration() -> None:
    assert settings().dlq_retention_ms == 7 * 86_400_000
    assert settings(DLQ_RETENTION="36h").dlq_retention_ms == 36 * 3_600_000
    with pytest.raises(ConfigError, match="^DLQ_RETENTION='0s' is not valid"):
        settings(DLQ_RETENTION="0s")


# --- not in the contract: MARKOV_STAGE and MARKOV_INTERVAL (section 8's model, its cost and its pace) -----


@pytest.mark.parametrize(("text", "on"), [("on", True), ("off", False), ("", True)])
def test_markov_stage_is_on_or_off_and_on_by_default(text: str, on: bool) -> None:
    assert settings().markov_stage is True
    assert settings(MARKOV_STAGE=text).markov_stage is on


def test_the_markov_model_is_recomputed_at_most_every_10s_by_default() -> None:
    assert settings().markov_interval_ms == 10_000
    assert settings(MARKOV_INTERVAL="1s").markov_interval_ms == 1_000
    with pytest.raises(ConfigError, match="^MARKOV_INTERVAL='0s' is not valid"):
        settings(MARKOV_INTERVAL="0s")
