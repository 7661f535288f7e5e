"""Every dashboard and rule expression works in a real Prometheus.

Starts Debian's `prometheus` on a free port (storage in a temporary folder, no scrape
targets) with the repository's rule files, and sends each expression through
/api/v1/query, template variables filled in by tests/ops/promql.py:

- on an empty TSDB, every expression must parse and type-check;
- on a TSDB backfilled (`promtool tsdb create-blocks-from openmetrics`) with three hours of
  synthetic engine metrics shaped like two workers' and a collector's /metrics, every
  dashboard query must return data: no label-matching mistake, no metric or label name
  that the other queries do not produce.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops import promql

pytestmark = [
    pytest.mark.integration,
]

EXPRESSIONS = promql.all_expressions()
DASHBOARD_EXPRESSIONS = [e for e in EXPRESSIONS if e.source.split(":")[0].endswith(".json")]
# Queries that are empty on a healthy stack by design.
EMPTY_WHEN_HEALTHY = {'ALERTS{alertstate="firing"}', 'ALERTS{alertstate="firing",team="marketing"}'}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:  # 400/422 carry Prometheus's JSON error
        return error.code, json.load(error)


def _query(url: str, expr: str, at: float) -> tuple[int, dict]:
    return _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}))


def _start(workdir: Path, storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / "prometheus.yml"
    rule_files = "\n".join(f"  - {path}" for path in promql.RULE_FILES)
    config.write_text(f"global:\n  evaluation_interval: 1s\nrule_files:\n{rule_files}\nscrape_configs: []\n")
    port = _free_port()
    log_path = workdir / f"prometheus-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"prometheus did not become ready: {log_path.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _running_prometheus(workdir: Path, storage: Path) -> Iterator[str]:
    last_error: Exception | None = None
    for _ in range(3):  # the free port may be taken between choosing and binding
        try:
            proc, url = _start(workdir, storage)
        except RuntimeError as error:
            last_error = error
            continue
        try:
            yield url
        finally:
            _stop(proc)
        return
    raise AssertionError(str(last_error))


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus-empty")
    yield from _running_prometheus(workdir, workdir / "data")


# ------------------------------------------------------------------------- empty TSDB


def test_there_are_expressions_from_every_source() -> None:
    sources = {e.source.split(":")[0] for e in EXPRESSIONS}
    assert sources >= {p.name for p in promql.dashboard_files()} | {p.name for p in promql.RULE_FILES}


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.source)
def test_expression_parses(prometheus: str, expression: promql.Expression) -> None:
    status, body = _query(prometheus, expression.expr, time.time())
    assert body.get("status") == "success", (
        f"{expression.source}: {body.get('errorType')}: {body.get('error')}\n{expression.expr}"
    )
    assert status == 200


def test_rules_load_and_evaluate(prometheus: str) -> None:
    expected = {e.source.split("/", 1)[1] for e in EXPRESSIONS if e.source.startswith(("alerts.yml", "targets.yml"))}
    deadline = time.monotonic() + 20
    while True:
        _, body = _get(f"{prometheus}/api/v1/rules")
        rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        if {r["name"] for r in rules} >= expected and all(r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not evaluated yet: {[(r['name'], r['health']) for r in rules]}"
        time.sleep(0.5)
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken


# ------------------------------------------------------------------------- with data

STEP_S = 30
HISTORY_S = 3 * 3600
WORKERS = ("worker-1:6066", "worker-2:6066")
CHANNELS = {  # channel -> (impressions/s, ctr, leads per click, orders per click, cpc, aov)
    "google_ads": (20.0, 0.05, 0.10, 0.04, 0.8, 60.0),
    "facebook": (30.0, 0.02, 0.05, 0.01, 0.5, 40.0),
    "email": (5.0, 0.10, 0.20, 0.08, 0.05, 50.0),
}
CAMPAIGNS = ("brand", "prospecting")


def _synthetic_metrics(end: float) -> str:
    """OpenMetrics text: what two workers and a collector would have exposed, every STEP_S."""
    series: dict[str, list[tuple[float, float]]] = {}
    times = [end - HISTORY_S + i * STEP_S for i in range(HISTORY_S // STEP_S + 1)]

    def add(name: str, labels: dict[str, str], value_at) -> None:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        series[f"{name}{{{text}}}"] = [(t, float(value_at(t - times[0]))) for t in times]

    for w, instance in enumerate(WORKERS):
        share = 0.6 if w == 0 else 0.4
        job = {"instance": instance, "job": "attribution-worker"}
        add("up", job, lambda _: 1)
        for channel, (impressions, ctr, lead_rate, order_rate, cpc, aov) in CHANNELS.items():
            for c, campaign in enumerate(CAMPAIGNS):
                part = share * (0.7 if c == 0 else 0.3)
                labels = {**job, "channel": channel, "campaign": campaign}
                clicks = impressions * ctr
                for metric, per_s in (
                    ("attribution_impressions_total", impressions),
                    ("attribution_clicks_total", clicks),
                    ("attribution_leads_total", clicks * lead_rate),
                    ("attribution_orders_total", clicks * order_rate),
                    ("attribution_new_customers_total", clicks * order_rate * 0.6),
                    ("attribution_revenue_total", clicks * order_rate * aov),
                    ("attribution_gross_profit_total", clicks * order_rate * aov * 0.4),
                    ("attribution_spend_total", clicks * cpc),
                    ("attribution_refunds_total", clicks * order_rate * 0.05),
                    ("attribution_refunded_revenue_total", clicks * order_rate * aov * 0.05),
                ):
                    add(metric, labels, lambda s, r=per_s * part: r * s)
            add("attribution_ltv_clv", {**job, "channel": channel}, lambda _, a=CHANNELS[channel][5]: 1.8 * a)
            add("attribution_ltv_cac", {**job, "channel": channel}, lambda _, c=CHANNELS[channel][4]: 25 * c)
            add("attribution_ltv_ltv_cac", {**job, "channel": channel}, lambda _, a=aov, c=cpc: 1.8 * a / (25 * c))
        add(
            "attribution_revenue_total",
            {**job, "channel": "(direct)", "campaign": "(none)"},
            lambda s, r=share: 2 * r * s,
        )
        for event_type in ("impression", "click", "lead", "order", "spend"):
            for outcome, per_s in (("ok", 50.0), ("invalid", 0.2), ("duplicate", 0.5), ("late", 0.1)):
                labels = {**job, "type": event_type, "outcome": outcome}
                add("attribution_events_total", labels, lambda s, r=per_s * share: r * s)
            for le, below in (("0.1", 0.5), ("1.0", 0.9), ("10.0", 0.99), ("30.0", 1.0), ("60.0", 1.0), ("+Inf", 1.0)):
                labels = {**job, "type": event_type, "le": le}
                add("attribution_event_lag_seconds_bucket", labels, lambda s, r=50 * share * below: r * s)
            add("attribution_event_lag_seconds_count", {**job, "type": event_type}, lambda s, r=50 * share: r * s)
            add("attribution_event_lag_seconds_sum", {**job, "type": event_type}, lambda s, r=10 * share: r * s)
        for partition in range(w * 4, w * 4 + 4):
            for topic in ("impressions", "clicks", "orders"):
                labels = {**job, "topic": topic, "partition": str(partition)}
                add("attribution_consumer_lag", labels, lambda s, p=partition: 100 + 20 * p + 10 * math.sin(s / 300))
        for affiliate in ("anna_fit", "deals_hub"):
            for role, per_s in (("converter", 0.05), ("assist", 0.01)):
                labels = {**job, "affiliate_id": affiliate, "role": role}
                add("attribution_commission_total", labels, lambda s, r=per_s * share: r * s)
    signals = {  # key -> action; the worker that owns a key exposes all three actions
        ("facebook", "prospecting"): "pause",
        ("google_ads", "brand"): "scale",
        ("email", None): "keep",
        ("facebook", None): "keep",
    }
    for (channel, campaign), current in signals.items():
        for action in ("pause", "keep", "scale"):
            labels = {"instance": WORKERS[0], "job": "attribution-worker", "channel": channel, "action": action}
            if campaign:
                labels["campaign"] = campaign
            add("attribution_signal", labels, lambda _, on=action == current: int(on))
    for channel, reason, per_s in (("affiliate", "flood", 0.5), ("affiliate", "click_gap", 0.02),
                                   ("google_ads", "click_gap", 0.01)):
        labels = {"instance": WORKERS[0], "job": "attribution-worker", "channel": channel, "reason": reason}
        add("attribution_suspect_total", labels, lambda s, r=per_s: r * s)
    zombie = {"instance": WORKERS[1], "job": "attribution-worker"}
    for table, per_s in (("journeys", 0.2), ("partials", 0.05)):
        add("attribution_fenced_changelog_records_total", {**zombie, "table": table}, lambda s, r=per_s: r * s)
        add("attribution_stale_changelog_records_total", {**zombie, "table": table}, lambda s, r=per_s / 4: r * s)
    add("attribution_stale_snapshots_total", zombie, lambda s: 0.01 * s)
    collector = {"instance": "collector:8080", "job": "attribution-collector"}
    add("up", collector, lambda _: 1)
    add("attribution_collector_bots_total", collector, lambda s: 0.3 * s)
    for event_type, per_s in (("impression", 50.0), ("click", 2.0), ("lead", 0.2), ("order", 0.05)):
        add("collector_events_produced_total", {**collector, "type": event_type}, lambda s, r=per_s: r * s)
    for route, status, per_s in (("/px", "200", 50.0), ("/v1/events", "202", 0.1), ("/v1/events", "401", 0.01)):
        add("collector_requests_total", {**collector, "route": route, "status": status}, lambda s, r=per_s: r * s)

    lines = []
    for key in sorted(series):  # one series' samples together, families contiguous
        lines.extend(f"{key} {value:.6g} {t:.3f}" for t, value in series[key])
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus_with_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise AssertionError("promtool missing: run `make system-deps`")
    workdir = tmp_path_factory.mktemp("prometheus-data")
    end = float(int(time.time()) - 60)
    source = workdir / "metrics.om"
    source.write_text(_synthetic_metrics(end))
    storage = workdir / "data"
    created = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(storage)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    for url in _running_prometheus(workdir, storage):
        # the recording rules (targets.yml) run from now on: wait for their first result
        deadline = time.monotonic() + 20
        while not _query(url, "attribution_cpl_target", time.time())[1]["data"]["result"]:
            assert time.monotonic() < deadline, "recording rules did not run"
            time.sleep(0.5)
        yield url, end


@pytest.mark.parametrize("expression", DASHBOARD_EXPRESSIONS, ids=lambda e: e.source)
def test_dashboard_query_returns_data(prometheus_with_data: tuple[str, float], expression: promql.Expression) -> None:
    url, end = prometheus_with_data
    # the recording rules (targets.yml) have results only from the start of this Prometheus
    at = time.time() if "attribution_cpl_target" in expression.expr else end
    status, body = _query(url, expression.expr, at)
    assert body.get("status") == "success", f"{expression.source}: {body.get('error')}\n{expression.expr}"
    result = body["data"]["result"]
    if expression.expr in EMPTY_WHEN_HEALTHY:
        return
    assert result, f"{expression.source}: no data\n{expression.expr}"
    if body["data"]["resultType"] == "vector":
        values = [float(sample["value"][1]) for sample in result]
        assert all(math.isfinite(v) for v in values), f"{expression.source}: {values}\n{expression.expr}"
