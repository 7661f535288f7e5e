"""`attribution demo`: one command, figures on screen, and nothing left behind after Ctrl-C.

The end-to-end test runs the real thing (embedded broker, worker, collector, simulator and
the live table) as a newcomer would; the small tests check the demo's own parts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.commands.demo import DEMO_DEFAULTS, Child, child_env, process_age_s, start_child, stop_child
from streams.commands.simulator import CHANNELS
from tests.integration.services import free_port

ROOT = Path(__file__).resolve().parents[2]
RUN_FOR_S = 40.0


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found - {pid}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kpi_rows(text: str) -> dict[str, list[str]]:
    """The latest printed row of each channel whose impressions are a number."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) > 4 and cells[0] in (*CHANNELS, "(direct)") and re.fullmatch(r"[\d,]+", cells[2]):
            rows[cells[0]] = cells
    return rows


@pytest.mark.integration
def test_demo_shows_kpis_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # the newcomer has no Kafka
    env.update(PYTHONPATH=str(ROOT), WEB_PORT=str(free_port()), COLLECTOR_PORT=str(free_port()))
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        demo = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "streams.commands.cli", "demo"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    family: set[int] = set()
    try:
        deadline = time.monotonic() + RUN_FOR_S
        while time.monotonic() < deadline and demo.poll() is None:
            family |= descendants(demo.pid)
            time.sleep(0.5)
        family |= descendants(demo.pid)
        assert demo.poll() is None, f"the demo ended by itself:\n{out_path.read_text()}"
        assert len(family) >= 4, family  # broker, worker, collector, simulator
        page = re.search(r"page +(http://\S+)", out_path.read_text())
        assert page and page.group(1) == f"http://127.0.0.1:{env['WEB_PORT']}/", out_path.read_text()
        with urllib.request.urlopen(page.group(1), timeout=5) as response:  # noqa: S310 - the demo's local page
            assert response.status == 200 and b"<title>Attribution" in response.read()

        demo.send_signal(signal.SIGINT)
        demo.wait(90)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    text = out_path.read_text()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp_path / ".run" / "demo").glob("*.log"))
    assert demo.returncode == 0, text + logs
    time.sleep(0.5)
    assert [pid for pid in family if alive(pid)] == [], "processes left behind"

    assert ".run/demo/worker.log" in text  # the logs are named on screen
    first = re.search(r"first KPIs after (\d+\.\d) s", text)
    assert first, text + logs
    print(f"demo: first KPIs after {first.group(1)} s")
    assert float(first.group(1)) < RUN_FOR_S
    assert text.count("first KPIs after") == 1
    rows = kpi_rows(text)
    assert len(rows) >= 3, text + logs
    assert any(int(cells[2].replace(",", "")) > 0 for cells in rows.values()), text
    assert "stopping the simulator" in text and text.index("stopping the simulator") < text.index(
        "stopping the worker")


def test_child_env_sets_the_broker_and_short_settings_but_keeps_the_users() -> None:
    env = child_env({"METRICS_WINDOW": "30s", "PATH": "/bin"}, "127.0.0.1:9", is_free=lambda port: True)
    assert env["KAFKA_BOOTSTRAP"] == "127.0.0.1:9"
    assert env["METRICS_WINDOW"] == "30s"  # the user's
    assert env["SIGNAL_WINDOW"] == DEMO_DEFAULTS["SIGNAL_WINDOW"] and env["SIGNAL_MIN_SPEND"] == "20"
    assert (env["WEB_PORT"], env["COLLECTOR_PORT"]) == ("6066", "8080")
    assert env["PATH"] == "/bin"


def test_child_env_picks_free_ports_when_the_defaults_are_taken() -> None:
    env = child_env({}, "b:1", is_free=lambda port: False, pick_port=iter([40001, 40002]).__next__)
    assert {env["WEB_PORT"], env["COLLECTOR_PORT"]} == {"40001", "40002"}
    env = child_env({"WEB_PORT": "7000"}, "b:1", is_free=lambda port: False, pick_port=lambda: 40003)
    assert env["WEB_PORT"] == "7000" and env["COLLECTOR_PORT"] == "40003"


def test_stopping_a_child_ends_its_whole_process_group(tmp_path: Path) -> None:
    child = Child("sleeper", ["sh", "-c", "trap '' INT; sleep 300 & sleep 300"], tmp_path / "sleeper.log")
    start_child(child, os.environ)
    time.sleep(0.3)
    family = descendants(child.pid)
    assert family  # the background sleep
    started = time.monotonic()
    stop_child(child, signal.SIGINT, timeout=1.0)  # ignored: SIGKILL after the timeout
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    assert not alive(child.pid) and not any(alive(pid) for pid in family)


def test_the_command_is_timed_from_its_process_start() -> None:
    assert 0.0 < process_age_s() < 24 * 3600
