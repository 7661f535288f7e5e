"""CONTRACT section 6: with PROMETHEUS_PUSHGATEWAY set, a worker pushes its metrics every 15 s,
grouped by job `attribution` and its instance name, and deletes its group on a clean shutdown."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.services import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def pushgateway(tmp_path) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway")
    assert binary, "prometheus-pushgateway is missing: deploy/system-deps.sh installs it (Debian package)"
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(tmp_path / "pushgateway.log").open("wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: read(f"{url}/-/ready") is not None, 20, "the Pushgateway to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def read(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def pushed_by(gateway: str, instance: str) -> bool:
    text = read(f"{gateway}/metrics") or ""
    labels = ('job="attribution"', f'instance="{instance}"')
    return any(
        line.startswith("attribution_events_total{") and all(label in line for label in labels)
        for line in text.splitlines()
    )


def test_a_worker_pushes_its_metrics_and_deletes_its_group_on_shutdown(kafka_bootstrap, pushgateway, make_worker):
    gateway = pushgateway.removeprefix("http://")
    worker = make_worker(bootstrap=kafka_bootstrap, name="pushing-worker", env={"PROMETHEUS_PUSHGATEWAY": gateway})
    wait_until(lambda: pushed_by(pushgateway, "pushing-worker"), 60, "the worker's first push")
    assert worker.stop(timeout=30) == 0
    assert not pushed_by(pushgateway, "pushing-worker"), "a cleanly stopped worker must delete its group"
