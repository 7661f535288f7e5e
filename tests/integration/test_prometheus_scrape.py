"""Every dashboard panel and alert rule, evaluated by a real Prometheus that scrapes a real worker.

tests/ops checks that the PromQL of deploy/grafana/dashboards and deploy/prometheus parses and
names metrics the engine defines. This module checks what ops will actually see: an Apache
Kafka broker, `attribution worker`, `attribution intake` (sharing the input partitions with the
worker's own intake, one consumer group: each counts the invalid events of the partitions it reads, and
the panels sum over both jobs) and
`attribution collect`, and Debian's `prometheus` binary
run with deploy/prometheus/prometheus.local.yml (its jobs, its rule files; only the targets,
the ports and a 1 s scrape and evaluation interval differ), scraping them while a small
campaign over four channels goes through the collector's batch API in two waves.

Two waves, because `increase()` and `rate()` need a series to exist in one scrape and to have
grown by the next: wave one creates every series, wave two makes them grow. Then every
expression of `tests.ops.promql.all_expressions()` goes to `/api/v1/query`: each must evaluate;
every panel must show data (no NaN, no Inf) unless MAY_BE_EMPTY says why not; a per-channel
panel of "Channel performance" must show every channel of the campaign, and a per-campaign panel
every campaign. The alert and recording rules must be loaded and evaluate with health "ok", and
the marketing alerts must pick out the losing channel. Before that, the counters summed by channel
must equal the campaign's own figures, and the signals the campaign's ROMI.

A missing `prometheus` binary is a failure, not a skip: CI installs it (deploy/system-deps.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.commands.simulator import AFFILIATE_RECORDS
from streams.config import Settings
from streams.kafka.embedded_broker import _pdeathsig_hook
from streams.kafka.topics import AFFILIATES_TOPIC, PUBLIC_TOPICS, ensure_topics, partition_counts
from streams.stages.topology import CHANGELOG_TOPICS, INTERNAL_TOPICS
from tests.integration.services import BROWSER_USER_AGENT, KafkaBroker, WorkerProcess, free_port, produce
from tests.ops.promql import PROMETHEUS_DIR, Expression, all_expressions, rule_expressions

pytestmark = pytest.mark.integration

LOCAL_CONFIG = PROMETHEUS_DIR / "prometheus.local.yml"
PROCESS_JOBS = ("attribution-worker", "attribution-collector", "attribution-intake")
CHANNEL_DASHBOARD = "channel-performance.json"
PARTITIONS = 2
WRITE_KEY = "scrape-test-key"
S = 1_000
WAIT_S = 60.0

# channel -> campaigns, with what one converting visitor brings (revenue, margin) and what a
# click and an impression cost, and the campaign's spend row per wave. google_ads pays a lot
# back (signal `scale`), facebook does not (`pause`), email and affiliate lie in between.
# Only facebook spends 50 or more in one wave: the business alerts' minimum spend (alerts.yml)
# holds for it even when `increase()` sees wave two alone.
CHANNELS: dict[str, dict[str, Any]] = {
    "google_ads": {"campaigns": ("brand", "generic"), "revenue": 200.0, "margin": 0.5, "spend": 10.0,
                   "click_cost": 0.8, "impression_cost": 0.0},
    "facebook": {"campaigns": ("prospecting",), "revenue": 20.0, "margin": 0.5, "spend": 60.0,
                 "click_cost": 0.0, "impression_cost": 0.01},
    "email": {"campaigns": ("newsletter",), "revenue": 60.0, "margin": 0.5, "spend": 20.0,
              "click_cost": 0.0, "impression_cost": 0.0},
    "affiliate": {"campaigns": ("partners",), "revenue": 100.0, "margin": 0.4, "spend": 25.0,
                  "click_cost": 0.0, "impression_cost": 0.0},
}
AFFILIATE = "dealspot"  # the converter on the affiliate channel's clicks (deploy/affiliates.sample.json)
ASSISTING_AFFILIATE = "gearlab_blog"  # clicked first, then a Google ad took the last click: an assist

# Panels that may show nothing after this campaign, and why. Every other expression must return data.
MAY_BE_EMPTY: dict[str, str] = {
    "business-decisions.json: panel 'Firing marketing alerts' A":
        "no alert fires: the shortest `for` of alerts.yml is 1m, longer than the test",
    "pipeline-health.json: panel 'Firing alerts, one per row' A": "no alert fires within the test (see above)",
    "channel-performance.json: panel 'Suspect clicks per $window, by guard' A":
        "sparse by nature, and the campaign's workers run with the fraud guards off (as the other tests); "
        "tests/ops/test_promql_parse.py shows it on data, test_fraud_guards.py counts it on a real worker",
    "channel-performance.json: panel 'Refunded revenue per $window' A":
        "the campaign has no refunds (they would change the figures its other checks compare); "
        "tests/ops/test_promql_parse.py shows the panel on data",
    "channel-performance.json: panel 'Refund rate (refunded / attributed revenue)' A": "no refunds (see above)",
}
# Alert rules are conditions: empty is "not firing". Recording rules (targets.yml) always have data.
ALERT_SOURCE = "alerts.yml: "


# --- the campaign ------------------------------------------------------------------------------------------


@dataclass
class Wave:
    """One wave of the campaign: events for the collector, events straight to Kafka, what they add up to."""

    batch: list[dict[str, Any]] = field(default_factory=list)  # through POST /v1/events
    malformed: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, value) straight to the topic
    pixel: list[dict[str, str]] = field(default_factory=list)  # GET /px query parameters
    # counter -> channel -> expected increase (last click: each journey here has one clicked channel)
    expected: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))


def make_wave(run: str, wave: int, now_ms: int) -> Wave:
    """Per campaign: a visitor who only sees an ad, one who clicks and leaves a lead, one who clicks and orders.

    Plus a journey whose affiliate click is followed by a Google click (an assist commission), a repeated
    event (duplicate), an event older than ALLOWED_LATENESS (late), a malformed click (dead letter) and a
    pixel impression."""
    out = Wave()
    exp = out.expected
    t = now_ms - 40 * S
    prefix = f"{run}-w{wave}"

    def event(kind: str, tid: str, ts: int, **fields: Any) -> dict[str, Any]:
        body = {"event_id": f"{prefix}-{uuid.uuid4().hex[:12]}", "type": kind, "ts": ts, **fields}
        if kind != "spend":
            body["tracking_id"] = tid
        out.batch.append(body)
        return body

    def touch(kind: str, tid: str, ts: int, channel: str, campaign: str, **fields: Any) -> None:
        profile = CHANNELS[channel]
        cost = profile[f"{kind}_cost"]
        if cost:
            fields["cost"] = cost
            exp["attribution_spend_total"][channel] += cost
        exp[f"attribution_{kind}s_total"][channel] += 1
        event(kind, tid, ts, channel=channel, campaign=campaign, **fields)

    def order(tid: str, ts: int, channel: str, revenue: float, margin: float) -> None:
        event("order", tid, ts, order_id=f"{tid}-order", revenue=revenue, margin=margin, customer_id=f"{tid}-c")
        exp["attribution_orders_total"][channel] += 1
        exp["attribution_new_customers_total"][channel] += 1
        exp["attribution_revenue_total"][channel] += revenue
        exp["attribution_gross_profit_total"][channel] += revenue * margin

    for channel, profile in CHANNELS.items():
        aff = {"affiliate_id": AFFILIATE} if channel == "affiliate" else {}
        for campaign in profile["campaigns"]:
            key = f"{prefix}-{channel}-{campaign}"
            touch("impression", f"{key}-look", t, channel, campaign)
            touch("impression", f"{key}-lead", t, channel, campaign)
            touch("click", f"{key}-lead", t + 1 * S, channel, campaign, **aff)
            event("lead", f"{key}-lead", t + 2 * S, customer_id=f"{key}-lead-c")
            exp["attribution_leads_total"][channel] += 1
            touch("impression", f"{key}-buy", t, channel, campaign)
            touch("click", f"{key}-buy", t + 1 * S, channel, campaign, **aff)
            order(f"{key}-buy", t + 3 * S, channel, profile["revenue"], profile["margin"])
            event("spend", "", t, channel=channel, campaign=campaign, amount=profile["spend"])
            exp["attribution_spend_total"][channel] += profile["spend"]
            t += 2 * S
    assist = f"{prefix}-assist"
    touch("click", assist, t, "affiliate", "partners", affiliate_id=ASSISTING_AFFILIATE)
    touch("click", assist, t + 1 * S, "google_ads", "generic")
    order(assist, t + 2 * S, "google_ads", 50.0, 0.5)
    out.batch.append(dict(out.batch[0]))  # the first impression again: a duplicate
    late = f"{prefix}-late"
    out.batch.append({"event_id": f"{late}-i", "type": "impression", "ts": now_ms - 3 * 86_400 * S,
                      "tracking_id": f"{prefix}-google_ads-brand-look", "channel": "google_ads", "campaign": "brand"})
    out.malformed.append(("clicks", orjson.dumps({"event_id": f"{prefix}-bad", "type": "click", "ts": now_ms,
                                                  "channel": "google_ads"})))  # no tracking_id
    out.pixel.append({"e": "impression", "tid": f"{prefix}-pixel", "ch": "email", "cmp": "newsletter"})
    exp["attribution_impressions_total"]["email"] += 1
    return out


def add_expected(total: dict[str, dict[str, float]], wave: Wave) -> None:
    for metric, by_channel in wave.expected.items():
        for channel, value in by_channel.items():
            total.setdefault(metric, {}).setdefault(channel, 0.0)
            total[metric][channel] += value


# --- Prometheus --------------------------------------------------------------------------------------------


class PrometheusServer:
    """Debian's `prometheus` on a free port, with a config and TSDB of its own under `directory`."""

    def __init__(self, binary: str, directory: Path, targets: dict[str, str]) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(scrape_config(targets)))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the prometheus binary found on PATH
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig_hook(),  # gone with this process, even on a SIGKILL
            )
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; Prometheus's JSON answer also for a 4xx/5xx (status "error")."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local test URL
                return json.load(response)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:300]!r}"}

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(  # noqa: S310 - local test URL
                f"{self.url}/-/ready", timeout=2
            ) as response:
                if response.status == 200:
                    return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready on {self.url} within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)


def scrape_config(targets: dict[str, str]) -> dict[str, Any]:
    """prometheus.local.yml with these targets (job -> host:port), absolute rule file paths, 1 s intervals."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"prometheus.local.yml has jobs {sorted(jobs)}, the test runs {sorted(targets)}"
    for name, target in targets.items():
        jobs[name]["static_configs"] = [{"targets": [target]}]
    return config


def series_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples of an instant query's answer; a scalar or string counts as one sample."""
    data = answer.get("data", {})
    if data.get("resultType") in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return list(data.get("result", []))


def sums_by_channel(prom: PrometheusServer, metric: str) -> dict[str, float]:
    answer = prom.query(f"sum by (channel) ({metric})")
    return {s["metric"].get("channel", ""): float(s["value"][1]) for s in series_of(answer)}


def differences(prom: PrometheusServer, expected: dict[str, dict[str, float]]) -> list[str]:
    problems = []
    for metric, by_channel in sorted(expected.items()):
        got = sums_by_channel(prom, metric)
        for channel, value in sorted(by_channel.items()):
            if not math.isclose(got.get(channel, math.nan), value, rel_tol=1e-9, abs_tol=1e-6):
                problems.append(f"{metric}{{channel={channel!r}}}: Prometheus has {got.get(channel)}, expected {value}")
    return problems


def expected_signals(expected: dict[str, dict[str, float]]) -> dict[str, str]:
    """Channel -> its action by CONTRACT.md section 7 with the defaults ROMI_FLOOR 0 and ROMI_SCALE 1."""
    out = {}
    for channel in CHANNELS:
        spend = expected["attribution_spend_total"][channel]
        romi = (expected["attribution_gross_profit_total"][channel] - spend) / spend
        out[channel] = "pause" if romi < 0 else "scale" if romi >= 1 else "keep"
    return out


def signal_differences(prom: PrometheusServer, expected: dict[str, dict[str, float]]) -> list[str]:
    """Every key (channel, and channel/campaign) with the action of its channel: in this campaign each of
    a channel's campaigns is on the same side of the ROMI thresholds as the channel."""
    answer = prom.query("max by (channel, campaign, action) (attribution_signal) == 1")
    got = {(s["metric"]["channel"], s["metric"].get("campaign", "")): s["metric"]["action"] for s in series_of(answer)}
    by_channel = expected_signals(expected)
    want = {(c, k): by_channel[c] for c, profile in CHANNELS.items() for k in ("", *profile["campaigns"])}
    return [] if got == want else [f"signals in Prometheus {sorted(got.items())}, expected {sorted(want.items())}"]


def wait_for(what: str, check: Callable[[], list[str]], timeout: float = WAIT_S) -> None:
    """Poll `check` (a list of problems) until it returns none; fail with the last problems after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s:\n" + "\n".join(problems[:30]), pytrace=False)
        time.sleep(0.5)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """No skip: CI installs Prometheus (make test runs deploy/system-deps.sh); a missing one must fail loudly."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: run deploy/system-deps.sh (Debian package prometheus)",
                    pytrace=False)
    return binary


@dataclass
class Stack:
    prometheus: PrometheusServer
    worker: WorkerProcess
    collector: WorkerProcess
    expected: dict[str, dict[str, float]]


async def create_engine_topics(bootstrap: str) -> None:
    """The engine's topics as the worker makes them (a fresh broker may show 0 partitions for a moment),
    and the simulator's affiliates on the compacted `affiliates` topic."""
    await ensure_topics(bootstrap, Settings(topic_partitions=PARTITIONS), PUBLIC_TOPICS + INTERNAL_TOPICS,
                        CHANGELOG_TOPICS)
    deadline = time.monotonic() + 30
    while set((await partition_counts(bootstrap, INTERNAL_TOPICS + CHANGELOG_TOPICS)).values()) != {PARTITIONS}:
        assert time.monotonic() < deadline, "the engine's topics did not show their partitions"
        await asyncio.sleep(0.1)
    for record in AFFILIATE_RECORDS:
        await produce(bootstrap, AFFILIATES_TOPIC, [orjson.dumps(record)], key=record["affiliate_id"].encode())


def send_wave(bootstrap: str, collector: WorkerProcess, wave: Wave) -> None:
    request = urllib.request.Request(  # noqa: S310 - local test URL
        f"http://127.0.0.1:{collector.web_port}/v1/events", data=orjson.dumps(wave.batch), method="POST",
        headers={"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer = json.load(response)
    assert answer == {"accepted": len(wave.batch), "rejected": []}, answer
    for params in wave.pixel:
        url = f"http://127.0.0.1:{collector.web_port}/px?{urllib.parse.urlencode(params)}"
        pixel = urllib.request.Request(url, headers={"User-Agent": BROWSER_USER_AGENT})  # noqa: S310 - local test URL
        with urllib.request.urlopen(pixel, timeout=10) as response:  # noqa: S310
            assert response.status == 200
    for topic, value in wave.malformed:
        asyncio.run(produce(bootstrap, topic, [value]))


@pytest.fixture(scope="module")
def stack(
    prometheus_binary: str, kafka_broker_factory: Callable[[], KafkaBroker], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Broker, worker, collector and Prometheus, and the two waves of the campaign scraped by Prometheus."""
    broker = kafka_broker_factory()  # a broker of its own: the worker reads its input topics from the start
    directory = tmp_path_factory.mktemp("prometheus-scrape")
    processes: list[WorkerProcess] = []
    prometheus: PrometheusServer | None = None
    try:
        asyncio.run(create_engine_topics(broker.bootstrap))
        worker_env = {
            "TOPIC_PARTITIONS": str(PARTITIONS),
            "ATTRIBUTION_GRACE": "500ms",
            "KAFKA_SESSION_TIMEOUT": "6s",
            "SIGNAL_MIN_SPEND": "5",
        }
        worker = WorkerProcess(worker_env, bootstrap=broker.bootstrap, log_dir=directory, name="scrape-worker")
        collector_port = free_port()
        collector = WorkerProcess(
            {"COLLECTOR_PORT": str(collector_port), "COLLECTOR_KEYS": WRITE_KEY, "TOPIC_PARTITIONS": str(PARTITIONS)},
            bootstrap=broker.bootstrap, log_dir=directory, name="scrape-collector", args=("collect",),
            web_port=collector_port,  # so that wait_http asks the collector
        )
        intake = WorkerProcess(worker_env, bootstrap=broker.bootstrap, log_dir=directory, name="scrape-intake",
                               args=("intake",))
        processes += [worker.start(), collector.start(), intake.start()]
        prometheus = PrometheusServer(prometheus_binary, directory, {
            "attribution-worker": f"127.0.0.1:{worker.web_port}",
            "attribution-collector": f"127.0.0.1:{collector_port}",
            "attribution-intake": f"127.0.0.1:{intake.web_port}",
        }).start()
        prometheus.wait_ready()
        worker.wait_http("/metrics", timeout=90)
        intake.wait_http("/metrics", timeout=90)
        collector.wait_http("/healthz", timeout=60)
        prom = prometheus

        def targets_down() -> list[str]:
            active = prom.get("/api/v1/targets").get("data", {}).get("activeTargets", [])
            up = {t["labels"]["job"] for t in active if t["health"] == "up"}
            return [f"target {job} is not up: {active}" for job in PROCESS_JOBS if job not in up]

        wait_for("Prometheus did not scrape the worker, the collector and the intake", targets_down)

        run = uuid.uuid4().hex[:8]
        expected: dict[str, dict[str, float]] = {}
        for number in (1, 2):
            wave = make_wave(run, number, int(time.time() * 1000))
            send_wave(broker.bootstrap, collector, wave)
            add_expected(expected, wave)
            wait_for(f"Prometheus did not show the campaign's figures after wave {number}",
                     lambda: differences(prom, expected))
        # the gauges and recording rules the panels read, the signals settled (a wave's spend may be judged
        # before its orders: a passing `pause`), and then one rule evaluation
        wait_for("the gauges and recorded series did not appear", lambda: [
            f"no {metric} for {channel}" for metric in (
                "attribution_ltv_clv", "attribution_ltv_cac", "attribution_ltv_ltv_cac", "attribution_cpl_target")
            for channel in CHANNELS if channel not in sums_by_channel(prom, metric)])
        wait_for("the channels' signals did not settle", lambda: signal_differences(prom, expected))
        since = _iso(time.time() + 1)  # the next whole second: an evaluation that saw all of the above
        wait_for("the rules were not evaluated", lambda: [
            f"{group['name']}/{rule['name']}: last evaluated {rule.get('lastEvaluation')}, not after {since}"
            for group in prom.get("/api/v1/rules").get("data", {}).get("groups", [])
            for rule in group["rules"] if rule.get("lastEvaluation", "0001") < since])
        yield Stack(prometheus, worker, collector, expected)
    finally:
        if prometheus is not None:
            prometheus.stop()
            print(f"--- prometheus log ({prometheus.log_path}) ---\n{prometheus.tail()}")
        for process in processes:
            process.stop(timeout=15)
            print(f"--- {process.name} log ({process.log_path}) ---\n{process.tail(40)}")
        broker.stop()


def _iso(epoch: float) -> str:
    """Prometheus's RFC 3339 UTC form, comparable as a string with its `lastEvaluation` values."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


# --- the tests ----------------------------------------------------------------------------------------------

EXPRESSIONS = all_expressions()


def _id(expression: Expression) -> str:
    return expression.source


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=_id)
def test_expression_evaluates_and_shows_the_campaign(stack: Stack, expression: Expression) -> None:
    answer = stack.prometheus.query(expression.expr)
    assert answer.get("status") == "success", (
        f"{expression.source}: Prometheus could not evaluate\n  {expression.expr}\n"
        f"  {answer.get('errorType')}: {answer.get('error')}"
    )
    samples = series_of(answer)
    if expression.source.startswith(ALERT_SOURCE) or expression.source in MAY_BE_EMPTY:
        return
    assert samples, f"{expression.source}: no data after the campaign\n  {expression.expr}"
    values = {s["value"][1] for s in samples}
    assert not values & {"NaN", "+Inf", "-Inf"}, f"{expression.source}: {samples}\n  {expression.expr}"
    channels = {s["metric"].get("channel") for s in samples}
    if expression.source.startswith(CHANNEL_DASHBOARD) and ("by (channel)" in expression.expr or channels != {None}):
        # a per-channel panel (not a blended one): every channel of the campaign is on it
        missing = set(CHANNELS) - channels
        assert not missing, f"{expression.source}: no data for {sorted(missing)}\n  {expression.expr}\n  {samples}"
    campaigns = {(s["metric"].get("channel"), s["metric"]["campaign"]) for s in samples if "campaign" in s["metric"]}
    if campaigns:  # a per-campaign panel: every campaign is on it
        missing_campaigns = {(c, k) for c, profile in CHANNELS.items() for k in profile["campaigns"]} - campaigns
        assert not missing_campaigns, f"{expression.source}: no data for {sorted(missing_campaigns)}\n  {samples}"


def test_the_rule_groups_are_loaded_and_healthy(stack: Stack) -> None:
    answer = stack.prometheus.get("/api/v1/rules")
    assert answer["status"] == "success", answer
    groups = {group["name"]: group for group in answer["data"]["groups"]}
    wanted: dict[str, set[str]] = defaultdict(set)
    for path in (PROMETHEUS_DIR / "targets.yml", PROMETHEUS_DIR / "alerts.yml"):
        for expression in rule_expressions(path):
            group, name = expression.source.split(": ", 1)[1].split("/", 1)
            wanted[group].add(name)
    assert set(groups) == set(wanted)
    problems = []
    for name, group in groups.items():
        assert {rule["name"] for rule in group["rules"]} == wanted[name], name
        for rule in group["rules"]:
            if rule["health"] != "ok" or rule.get("lastError"):
                problems.append(f"{name}/{rule['name']}: health {rule['health']} {rule.get('lastError', '')}")
    assert not problems, "\n".join(problems)


def test_the_scrape_sees_the_campaigns_counters_exactly(stack: Stack) -> None:
    """The counters summed by channel in Prometheus equal the campaign's figures (last click; the
    duplicate and the late impression counted nowhere)."""
    problems = differences(stack.prometheus, stack.expected)
    assert not problems, "\n".join(problems)


def test_the_business_alerts_hold_for_the_losing_channel(stack: Stack) -> None:
    """On the worker's real series (names and labels), the marketing alerts pick out facebook: it loses
    money, its cost per lead is over its target and its signal is `pause`. None fires yet (`for`).

    A wave's spend is counted before the orders it paid for (they wait ATTRIBUTION_GRACE), so a
    profitable channel's figures call for `pause` for a second or two; signals settle before they
    are announced, so no other channel is paused."""
    answer = stack.prometheus.get("/api/v1/alerts")
    assert answer["status"] == "success", answer
    marketing = [a for a in answer["data"]["alerts"] if a["labels"].get("team") == "marketing"]
    pending: dict[str, set[tuple[str | None, str | None]]] = defaultdict(set)
    for alert in marketing:
        pending[alert["labels"]["alertname"]].add((alert["labels"].get("channel"), alert["labels"].get("campaign")))
    assert pending["ChannelUnprofitable"] == {("facebook", None)}, marketing
    assert pending["CplAboveTarget"] == {("facebook", None)}, marketing
    assert pending["ChannelPaused"] == {("facebook", None), ("facebook", "prospecting")}, marketing
    assert set(pending) == {"ChannelUnprofitable", "CplAboveTarget", "ChannelPaused"}, marketing
    assert {a["state"] for a in marketing} == {"pending"}, marketing
