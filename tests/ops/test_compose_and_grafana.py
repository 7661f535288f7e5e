"""docker-compose.yml, the Dockerfile and the Grafana provisioning agree with the engine.

No Docker and no Grafana here: these read the files and hold them to the engine's own
settings (streams.config), commands (streams.commands.cli) and metric names.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from streams.commands.cli import COMMANDS, build_parser
from streams.config import Settings
from tests.ops import promql

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
ENGINE_SERVICES = ("worker-1", "worker-2", "collector", "simulator")
WORKERS = ("worker-1", "worker-2")
GRAFANA = ROOT / "deploy" / "grafana"

# Metric names from CONTRACT.md sections 6 and 7.
CONTRACT_METRICS = {
    "attribution_impressions_total",
    "attribution_clicks_total",
    "attribution_leads_total",
    "attribution_orders_total",
    "attribution_revenue_total",
    "attribution_spend_total",
    "attribution_events_total",
    "attribution_event_lag_seconds",  # histogram
    "attribution_gross_profit_total",
    "attribution_signal",
    "attribution_suspect_total",  # {channel,reason}: section 9's fraud guards
    "attribution_collector_bots_total",  # the collector's bot filter
    "attribution_refunds_total",  # section 9, {channel,campaign}
    "attribution_refunded_revenue_total",
}
# Named by the ops issue, to be added to the contract: what the dashboards need beyond it.
OPS_METRICS = {
    "attribution_new_customers_total",  # {channel,campaign}: CAC = spend / new customers
    "attribution_commission_total",  # {affiliate_id,role}
    "attribution_commission_reversed_total",  # {affiliate_id,role}: taken back by refunds
    "attribution_consumer_lag",  # {topic,partition} gauge
    "attribution_ltv_clv",  # {channel} gauges from metrics.ltv
    "attribution_ltv_cac",
    "attribution_ltv_ltv_cac",
    "collector_events_produced_total",  # {type}
    "collector_requests_total",  # {route,status}
    "attribution_fenced_changelog_records_total",  # {table}: the zombie fence (docs/reliability.md)
    "attribution_stale_changelog_records_total",  # {table}
    "attribution_stale_snapshots_total",
}
HISTOGRAMS = {"attribution_event_lag_seconds"}
PROMETHEUS_BUILTIN = {"up", "ALERTS"}


def recorded_metrics() -> set[str]:
    names = set()
    for path in promql.RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def known_metrics() -> set[str]:
    known = CONTRACT_METRICS | OPS_METRICS | PROMETHEUS_BUILTIN | recorded_metrics()
    return known | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}


def settings_env_names() -> set[str]:
    """The names Settings.from_env reads: string literals passed to reader.get(NAME, ...)."""
    tree = ast.parse((ROOT / "streams" / "config.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "reader"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    assert {"KAFKA_BOOTSTRAP", "WEB_PORT", "COLLECTOR_PORT"} <= names, "could not read streams/config.py"
    return names


def env(service: str) -> dict[str, str]:
    environment = SERVICES[service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def container_ports(service: str) -> dict[int, int]:
    """container port -> host port."""
    ports = {}
    for spec in SERVICES[service].get("ports", []):
        host, _, inside = str(spec).rpartition(":")
        ports[int(inside.split("/")[0])] = int(host.rpartition(":")[2]) if host else int(inside)
    return ports


def bind_mounts(service: str) -> dict[str, Path]:
    """container path -> host path, for the ./relative bind mounts."""
    mounts = {}
    for spec in SERVICES[service].get("volumes", []):
        parts = str(spec).split(":")
        if parts[0].startswith((".", "/")):
            mounts[parts[1]] = (ROOT / parts[0]).resolve()
    return mounts


def host_path(service: str, container_path: str) -> Path:
    """Where a path inside a container is on this machine, through its bind mounts."""
    target = PurePosixPath(container_path)
    for inside, outside in sorted(bind_mounts(service).items(), key=lambda item: -len(item[0])):
        if target == PurePosixPath(inside) or PurePosixPath(inside) in target.parents:
            return outside / target.relative_to(inside)
    raise AssertionError(f"{container_path} is not mounted into {service}")


# ------------------------------------------------------------------------- compose


def test_services_and_images() -> None:
    assert set(SERVICES) >= {"kafka", "redis", "prometheus", "grafana", *ENGINE_SERVICES}
    assert SERVICES["kafka"]["image"] == "apache/kafka:4.1.1"
    assert SERVICES["redis"]["image"].split(":")[0] == "redis"
    assert SERVICES["redis"]["image"].split(":")[1].startswith("7")
    assert SERVICES["prometheus"]["image"].startswith("prom/prometheus")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana")


@pytest.mark.parametrize("service", ENGINE_SERVICES)
def test_engine_services_run_this_repository(service: str) -> None:
    assert SERVICES[service]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    installed = re.search(r"^RUN pip install '\.\[([a-z,]+)\]'\s*$", dockerfile, re.M)
    assert installed, "the image installs this repository"
    extras = set(installed.group(1).split(","))
    offered = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(offered)
    assert "rocksdb" in extras  # STATE_STORE=rocksdb (CONTRACT.md) works in the image
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which is not in the repository"


@pytest.mark.parametrize("service", ENGINE_SERVICES)
def test_engine_services_use_only_the_engines_environment_variables(service: str) -> None:
    unknown = set(env(service)) - settings_env_names()
    assert not unknown, f"{service}: {sorted(unknown)} are not read by streams.config.Settings.from_env"


@pytest.mark.parametrize("service", ENGINE_SERVICES)
def test_engine_services_settings_are_valid(service: str) -> None:
    settings = Settings.from_env(env(service))  # raises ConfigError naming a bad value
    assert settings.kafka_bootstrap, f"{service} would start the embedded broker instead of using kafka"


@pytest.mark.parametrize("service", ENGINE_SERVICES)
def test_engine_services_run_an_attribution_command(service: str) -> None:
    cmd = command(service)
    assert cmd[0] == "attribution" and cmd[1] in COMMANDS, cmd
    build_parser().parse_args(cmd[1:])  # exits on an unknown flag


def test_engine_commands() -> None:
    assert {s: command(s)[1] for s in ENGINE_SERVICES} == {
        "worker-1": "worker",
        "worker-2": "worker",
        "collector": "collect",
        "simulator": "simulate",
    }
    args = build_parser().parse_args(command("simulator")[1:])
    assert (args.rate, args.duration) == (200.0, "0")


def test_ports_agree_with_the_contract_defaults() -> None:
    defaults = Settings()
    for worker in WORKERS:
        settings = Settings.from_env(env(worker))
        assert settings.web_port == defaults.web_port == 6066
        assert settings.topic_partitions == 8
        assert defaults.web_port in container_ports(worker)
    assert container_ports("worker-1")[6066] == 6066
    assert len({container_ports(w)[6066] for w in WORKERS}) == len(WORKERS), "host ports must differ"
    assert Settings.from_env(env("collector")).collector_port == defaults.collector_port == 8080
    assert container_ports("collector") == {8080: 8080}
    assert container_ports("kafka") == {9092: 9092}
    assert container_ports("redis") == {6379: 6379}
    assert container_ports("prometheus") == {9090: 9090}
    assert container_ports("grafana") == {3000: 3000}


def test_engine_reaches_kafka_and_redis_by_service_name() -> None:
    kafka_env = SERVICES["kafka"]["environment"]
    advertised = {listener.split("://")[1] for listener in str(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).split(",")}
    assert "localhost:9092" in advertised, "clients on the host use localhost:9092"
    for service in ENGINE_SERVICES:
        for server in env(service)["KAFKA_BOOTSTRAP"].split(","):
            assert server in advertised, f"{service}: {server} is not a listener kafka advertises"
            assert server.split(":")[0] == "kafka"
    for worker in WORKERS:
        assert env(worker)["REDIS_URL"].startswith("redis://redis:6379/")
        assert env(worker)["TOPIC_PARTITIONS"] == str(kafka_env["KAFKA_NUM_PARTITIONS"])


def test_engine_services_wait_for_their_dependencies() -> None:
    for service in ENGINE_SERVICES:
        depends = SERVICES[service]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["kafka"] and "healthcheck" in SERVICES["redis"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_bind_mounts_exist(service: str) -> None:
    for inside, outside in bind_mounts(service).items():
        assert outside.exists(), f"{service}: {outside} (mounted at {inside}) does not exist"


def test_prometheus_container_reads_this_repositorys_config_and_rules() -> None:
    flags = dict(arg.split("=", 1) for arg in SERVICES["prometheus"]["command"] if "=" in arg)
    config_path = host_path("prometheus", flags["--config.file"])
    assert config_path == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).exists()


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    def targets(job: str) -> set[str]:
        return {t for static in jobs[job].get("static_configs", []) for t in static["targets"]}

    web_ports = {w: Settings.from_env(env(w)).web_port for w in WORKERS}
    assert targets("attribution-worker") == {f"{w}:{port}" for w, port in web_ports.items()}
    assert targets("attribution-collector") == {f"collector:{Settings.from_env(env('collector')).collector_port}"}
    for job in ("attribution-worker", "attribution-collector"):
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"


# ------------------------------------------------------------------------- grafana


def grafana_provisioning(kind: str) -> dict:
    (path,) = (GRAFANA / "provisioning" / kind).glob("*.yml")
    return yaml.safe_load(path.read_text())


def test_grafana_mounts_the_provisioning() -> None:
    assert host_path("grafana", "/etc/grafana/provisioning") == (GRAFANA / "provisioning").resolve()


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    (source,) = grafana_provisioning("datasources")["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    host, port = re.match(r"^http://([\w.-]+):(\d+)/?$", source["url"]).groups()
    assert host == "prometheus" and host in SERVICES
    assert int(port) in container_ports("prometheus")


def test_grafana_provisions_the_dashboards_in_this_repository() -> None:
    (provider,) = grafana_provisioning("dashboards")["providers"]
    folder = host_path("grafana", provider["options"]["path"])
    assert folder == promql.DASHBOARD_DIR.resolve()
    titles = {promql.load_dashboard(p)["title"] for p in folder.glob("*.json")}
    assert titles >= {"Channel performance", "Campaigns and affiliates", "Pipeline health", "Business decisions"}
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home).exists()


DASHBOARDS = promql.dashboard_files()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = list(promql.iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for source in [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "prometheus"}, f"panel {panel['title']!r}: {source}"
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "prometheus"


def test_dashboard_uids_are_unique() -> None:
    uids = [promql.load_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_only_defined_variables(path: Path) -> None:
    expressions = list(promql.dashboard_expressions(path))  # raises UndefinedVariable
    assert expressions
    for expression in expressions:
        assert "$" not in expression.expr, expression


@pytest.mark.parametrize("expression", promql.all_expressions(), ids=lambda e: e.source)
def test_queries_read_only_metrics_the_engine_exposes(expression: promql.Expression) -> None:
    unknown = promql.metric_names(expression.expr) - known_metrics()
    assert not unknown, f"{expression.source}: unknown metric(s) {sorted(unknown)} in {expression.raw}"


def panel_titles(title: str) -> set[str]:
    (dashboard,) = [d for d in map(promql.load_dashboard, DASHBOARDS) if d["title"] == title]
    return {p["title"] for p in promql.iter_panels(dashboard["panels"])}


def test_channel_performance_shows_every_kpi() -> None:
    titles = " | ".join(panel_titles("Channel performance"))
    kpis = (
        "Impressions",
        "Clicks",
        "CTR",
        "CPC",
        "CPM",
        "CPL",
        "CPA",
        "CAC",
        "ROAS",
        "ROI",
        "ROMI",
        "Spend vs revenue",
        "Suspect clicks",
    )
    for kpi in kpis:
        assert kpi in titles, f"no panel for {kpi}"


def test_dashboards_use_the_channel_variable_where_it_filters() -> None:
    for title in ("Channel performance", "Campaigns and affiliates", "Business decisions"):
        (dashboard,) = [d for d in map(promql.load_dashboard, DASHBOARDS) if d["title"] == title]
        names = {v["name"] for v in dashboard["templating"]["list"]}
        assert "channel" in names
        raw = json.dumps(dashboard["panels"])
        assert 'channel=~\\"$channel\\"' in raw


def test_metric_names_reads_metrics_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{type!~"spend"}[5m]))) > 30 '
        "and on (channel) sum by (channel) (increase(b_total[1h] offset 1h)) / (c > 0) "
        'or label_replace(vector(1), "channel", "x", "", "") unless d{__name__="e"}'
    )
    assert promql.metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
