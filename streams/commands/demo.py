"""`attribution demo`: the whole engine on one machine with one command, for a newcomer.

1. A broker: the embedded one (`streams.kafka.embedded_broker.resolve_bootstrap`), or the cluster named by
   `KAFKA_BOOTSTRAP` when it is set.
2. As child processes, each in its own process group and logging to `.run/demo/<name>.log`:
   `attribution worker`, `attribution collect` and `attribution simulate --duration 0`, all
   with `KAFKA_BOOTSTRAP` pointing at that broker, free ports for `WEB_PORT` and
   `COLLECTOR_PORT` when the defaults are taken, and short windows so figures come quickly
   (`DEMO_DEFAULTS`, each only where the user has not set the variable).
3. In the foreground, the live `attribution top` table; the time from the command to the
   first KPIs on screen is printed once.

Ctrl-C (SIGINT) or SIGTERM stops everything in order: simulator, collector, worker, broker.
A child that dies on its own ends the demo too, with the tail of its log on screen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from streams.config import Settings

RUN_DIR = Path(".run") / "demo"
#: short settings so a newcomer sees figures and signals within a minute
DEMO_DEFAULTS = {
    "METRICS_WINDOW": "10s",
    "SIGNAL_WINDOW": "2m",
    "SIGNAL_MIN_SPEND": "20",
    "ALLOWED_LATENESS": "30s",
    "KAFKA_SESSION_TIMEOUT": "3s",  # the embedded broker makes a group join wait out the session timeout
    "COLLECTOR_KEYS": "demo",
}
DEFAULT_PORTS = {"WEB_PORT": 6066, "COLLECTOR_PORT": 8080}
# stop order and how long each may take to stop on its own
STOP_ORDER = (("simulator", signal.SIGINT, 10.0), ("collector", signal.SIGTERM, 10.0), ("worker", signal.SIGTERM, 30.0))


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    exit_seen: bool = field(default=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(
    environ: Mapping[str, str], bootstrap: str, is_free: Callable[[int], bool] = port_is_free,
    pick_port: Callable[[], int] = free_port,
) -> dict[str, str]:
    """The children's environment: the user's, the broker, the demo's short settings and free ports."""
    env = dict(environ)
    env["KAFKA_BOOTSTRAP"] = bootstrap
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in DEMO_DEFAULTS.items():
        if not env.get(name, "").strip():
            env[name] = value
    for name, default in DEFAULT_PORTS.items():
        if not env.get(name, "").strip():
            env[name] = str(default if is_free(default) else pick_port())
    return env


def process_age_s() -> float:
    """Seconds since this process started (from /proc), to time the whole command; 0 if unknown."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _preexec() -> Callable[[], None] | None:
    """Ask Linux to SIGTERM a child when the demo dies without cleaning up (even by SIGKILL)."""
    try:
        from streams.kafka.embedded_broker import _pdeathsig_hook
    except ImportError:
        return None
    return _pdeathsig_hook()


def start_child(child: Child, env: Mapping[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log_path, "wb") as log:
        child.process = subprocess.Popen(  # noqa: S603 - our own command
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            process_group=0,  # its own group: a terminal Ctrl-C reaches the demo only, which stops it in order
            preexec_fn=_preexec(),
        )


def stop_child(child: Child, signum: int, timeout: float) -> int | None:
    """Signal the child's process group, wait, then SIGKILL what is left of the group. Returns its status."""
    process = child.process
    if process is None:
        return None
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything the child left behind in its group
    return process.returncode


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`attribution demo`."""
    age_at_start = process_age_s()
    started = time.monotonic() - age_at_start
    console = Console()
    if not console.is_terminal:  # a log or a pipe: room for every column
        console = Console(width=max(console.width, 200))
    from streams.kafka.embedded_broker import EmbeddedBrokerError, resolve_bootstrap

    try:
        bootstrap, owned = resolve_bootstrap(settings)
    except EmbeddedBrokerError as exc:
        console.print(f"[red]attribution demo: {exc}[/red]")
        return 2
    if settings.kafka_bootstrap:
        broker_line = f"Kafka at {bootstrap} (KAFKA_BOOTSTRAP)"
    elif owned is not None:
        broker_line = f"embedded Tansu broker on {bootstrap}, in memory (set KAFKA_BOOTSTRAP to use a cluster)"
    else:
        broker_line = f"the embedded broker already running on {bootstrap}"
    try:
        return asyncio.run(_demo(settings, args, bootstrap, broker_line, console, started))
    finally:
        if owned is not None:
            console.print("stopping the embedded broker")
            owned.stop()


async def _demo(
    settings: Settings, args: argparse.Namespace, bootstrap: str, broker_line: str, console: Console, started: float
) -> int:
    from streams.commands.top import watch
    from streams.kafka.topics import ensure_topics, wait_for_broker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings)
    env = child_env(os.environ, bootstrap)
    python = [sys.executable, "-m", "streams.commands.cli"]
    rate = f"{args.rate:g}"
    children = [
        Child("worker", [*python, "worker"], RUN_DIR / "worker.log"),
        Child("collector", [*python, "collect"], RUN_DIR / "collector.log"),
        Child("simulator", [*python, "simulate", "--rate", rate, "--duration", "0"], RUN_DIR / "simulator.log"),
    ]
    by_name = {child.name: child for child in children}
    failed: list[str] = []
    try:
        for child in children:
            start_child(child, env)
        settings_line = " ".join(f"{name}={env[name]}" for name in DEMO_DEFAULTS if name != "COLLECTOR_KEYS")
        logs = ", ".join(str(child.log_path) for child in children)
        console.print(
            "[bold]attribution demo[/bold]\n"
            f"  broker     {broker_line}\n"
            f"  page       http://127.0.0.1:{env['WEB_PORT']}/  (live table, trends, lifetime value, models, health)\n"
            f"  worker     pid {by_name['worker'].pid}; http://127.0.0.1:{env['WEB_PORT']}/metrics and /api/v1/kpis\n"
            f"  collector  pid {by_name['collector'].pid}; "
            f"http://127.0.0.1:{env['COLLECTOR_PORT']}/px?e=click&tid=me&ch=google_ads, "
            f"POST /v1/events with 'Authorization: Bearer {env['COLLECTOR_KEYS'].split(',')[0]}'\n"
            f"  simulator  pid {by_name['simulator'].pid}; {rate} events/s on the input topics\n"
            f"  settings   {settings_line}\n"
            f"  logs       {logs}\n"
            "Ctrl-C stops everything.",
            highlight=False,
        )

        def first_kpis() -> str:
            return f"[bold]first KPIs after {time.monotonic() - started:.1f} s[/bold]"

        async def supervise() -> None:
            while not stop.is_set():
                for child in children:
                    if child.process is not None and child.process.poll() is not None:
                        failed.append(child.name)
                        stop.set()
                        return
                await asyncio.sleep(0.5)

        supervisor = asyncio.create_task(supervise())
        caption = f"metrics.channel on {bootstrap}, money in {settings.reporting_currency}; Ctrl-C stops the demo"
        try:
            await watch(bootstrap, console=console, stop=stop, on_first=first_kpis, caption=caption)
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
    finally:
        for name, signum, timeout in STOP_ORDER:
            child = by_name[name]
            if child.process is None:
                continue
            alive = child.process.poll() is None
            if alive:
                console.print(f"stopping the {name} (pid {child.pid})")
            status = stop_child(child, signum, timeout)
            if not alive and name not in failed:
                failed.append(name)
            if name in failed:
                console.print(f"[red]the {name} exited with status {status}; the end of {child.log_path}:[/red]")
                console.print(_tail(child.log_path), markup=False, highlight=False)
    return 1 if failed else 0
