"""Prometheus config, alert rules and their unit tests, checked with Prometheus's own promtool."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
CONFIG = PROM / "prometheus.yml"
LOCAL_CONFIG = PROM / "prometheus.local.yml"
ALERTS = PROM / "alerts.yml"
TARGETS = PROM / "targets.yml"
ALERT_TESTS = PROM / "alerts.test.yml"
SCRIPT = PROM / "prometheus.sh"

PROMTOOL = shutil.which("promtool")
# No skip: CI installs promtool (make test runs deploy/system-deps.sh); a missing one must fail loudly.
needs_promtool = pytest.mark.usefixtures("promtool_installed")


@pytest.fixture
def promtool_installed() -> None:
    assert PROMTOOL is not None, "promtool missing: run `make system-deps`"

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def seconds(duration: str | None) -> float:
    """A Prometheus duration ("1h30m", "90m", "5m") in seconds; None or "" is 0."""
    if not duration:
        return 0.0
    parts = _DURATION_PART.findall(str(duration))
    assert "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration!r}"
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@cache
def alert_rules() -> dict[str, dict]:
    rules = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in rules, f"alert {rule['alert']} defined twice"
                rules[rule["alert"]] = rule
    return rules


@cache
def alert_cases() -> list[dict]:
    """Every alert_rule_test entry of alerts.test.yml."""
    suite = yaml.safe_load(ALERT_TESTS.read_text())
    return [case for test in suite["tests"] for case in test.get("alert_rule_test", [])]


# ------------------------------------------------------------------------- promtool


@needs_promtool
@pytest.mark.parametrize("config", [CONFIG, LOCAL_CONFIG], ids=lambda p: p.name)
def test_prometheus_config_is_valid(config: Path) -> None:
    result = promtool("check", "config", str(config.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_and_recording_rules_are_valid() -> None:
    result = promtool("check", "rules", str(ALERTS.relative_to(ROOT)), str(TARGETS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------- coverage


def test_the_alerts_ops_asked_for_exist() -> None:
    assert {
        "ChannelUnprofitable",
        "CplAboveTarget",
        "DeadLetterSpike",
        "EventLagHigh",
        "PixelSilent",
        "ConsumerLagGrowing",
        "ChannelPaused",
    } <= set(alert_rules())


@pytest.mark.parametrize("alertname", sorted(alert_rules()))
def test_every_alert_has_a_firing_and_a_quiet_case(alertname: str) -> None:
    cases = [case for case in alert_cases() if case["alertname"] == alertname]
    assert any(case.get("exp_alerts") for case in cases), f"no test in which {alertname} fires"
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert quiet, f"no test in which {alertname} stays quiet"
    # A quiet case only during `for` proves little: one must be past it.
    hold = seconds(alert_rules()[alertname].get("for"))
    assert any(seconds(case["eval_time"]) > hold for case in quiet), (
        f"{alertname}: every quiet case is within its `for: {alert_rules()[alertname].get('for')}`"
    )


@pytest.mark.parametrize("alertname", sorted(alert_rules()))
def test_every_alert_has_a_summary_and_routing_labels(alertname: str) -> None:
    rule = alert_rules()[alertname]
    summary = rule.get("annotations", {}).get("summary", "")
    assert len(summary.split()) >= 8, f"{alertname}: summary should say what happened and what to do"
    assert rule.get("labels", {}).get("severity") in ("info", "warning", "critical")
    assert rule.get("labels", {}).get("team") in ("marketing", "ops")


def test_unit_tests_load_the_rule_files_prometheus_loads() -> None:
    suite = yaml.safe_load(ALERT_TESTS.read_text())
    for config in (CONFIG, LOCAL_CONFIG):
        assert sorted(yaml.safe_load(config.read_text())["rule_files"]) == sorted(suite["rule_files"])


def test_local_config_scrapes_the_same_jobs_on_this_machine() -> None:
    compose_jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    local = yaml.safe_load(LOCAL_CONFIG.read_text())
    local_jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    assert {"attribution-worker", "attribution-collector"} <= set(local_jobs) <= set(compose_jobs)

    def targets(job: dict) -> set[str]:
        return {t for static in job.get("static_configs", []) for t in static["targets"]}

    assert targets(local_jobs["attribution-worker"]) == {"127.0.0.1:6066"}
    assert targets(local_jobs["attribution-collector"]) == {"127.0.0.1:8080"}
    for name in ("attribution-worker", "attribution-collector"):
        assert local_jobs[name].get("metrics_path", "/metrics") == "/metrics"
        assert compose_jobs[name].get("metrics_path", "/metrics") == "/metrics"


def test_more_workers_can_be_added_with_file_sd() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    files = [f for sd in jobs["attribution-worker"]["file_sd_configs"] for f in sd["files"]]
    assert files == ["targets/*.json"]
    example = json.loads((PROM / "targets" / "example.json.sample").read_text())
    assert example and all(":" in target for group in example for target in group["targets"])
    # the example must not be read as it is (its hosts do not exist)
    assert not list((PROM / "targets").glob("*.json"))


def test_intake_processes_are_a_job_of_their_own_in_both_configs_with_file_sd() -> None:
    """`attribution intake` (workers with WORKER_INTAKE=off): scraped apart, so `up` of the workers counts
    workers only, and alerted on when down like a worker."""
    for config in (CONFIG, CONFIG.with_name("prometheus.local.yml")):
        jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
        intake = jobs["attribution-intake"]
        assert intake.get("metrics_path", "/metrics") == "/metrics"
        assert [f for sd in intake["file_sd_configs"] for f in sd["files"]] == ["targets/intakes/*.json"]
    example = json.loads((PROM / "targets" / "intakes" / "example.json.sample").read_text())
    assert example and all(":" in target for group in example for target in group["targets"])
    assert not list((PROM / "targets" / "intakes").glob("*.json"))
    assert "attribution-intake" in (PROM / "alerts.yml").read_text().split("alert: AttributionTargetDown", 1)[1]


# ------------------------------------------------------------------------- prometheus.sh


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_prometheus_sh_starts_with_the_rules_and_stops() -> None:
    port = _free_port()
    state = ROOT / ".run" / f"prometheus-{port}"
    try:
        started = subprocess.run([str(SCRIPT), "start", str(port)], capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        pid = int((state / "prometheus.pid").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
        assert loaded == set(alert_rules())
        again = subprocess.run([str(SCRIPT), "start", str(port)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped = subprocess.run([str(SCRIPT), "stop", str(port)], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    shutil.rmtree(state, ignore_errors=True)
