"""The benchmark's own plumbing: its errors and console, the processes it starts (stopped in `finally`), and
the CPU they and the rest of the machine use."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.kafka.embedded_broker import _pdeathsig_hook
from tests.integration.services import KafkaBroker, KafkaCluster, RedisServer, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


class BenchError(RuntimeError):
    """A scenario failed or timed out; the message says which and what it saw."""


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", flush=True)


def group_rss(leader: int) -> int:
    """Resident memory of a process group (a worker is a session leader: its pid is the group's), from /proc."""
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == leader:
                total += int((stat.parent / "statm").read_text().split()[1]) * page
    return total


# --- processes and CPU accounting -----------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds all processes of the machine have used since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuMark:
    at: float
    workers: float
    broker: float
    bench: float
    machine: float

    @classmethod
    def take(cls, workers: Iterable[int | None], brokers: Iterable[int | None]) -> CpuMark:
        """The CPU seconds so far of the workers, of the broker(s) (every node of a cluster, summed), of this
        process and of the whole machine."""
        return cls(time.monotonic(), sum(cpu_seconds(pid) for pid in workers), sum(cpu_seconds(pid) for pid in brokers),
                   cpu_seconds(os.getpid()), machine_busy())

    def cores_since(self, earlier: CpuMark) -> dict[str, float]:
        span = max(self.at - earlier.at, 1e-9)
        workers = (self.workers - earlier.workers) / span
        broker = (self.broker - earlier.broker) / span
        bench = (self.bench - earlier.bench) / span
        machine = (self.machine - earlier.machine) / span
        return {"workers": workers, "broker": broker, "bench": bench, "machine": machine,
                "others": max(0.0, machine - workers - broker - bench)}


class Processes:
    """Every process the benchmark starts, stopped (process group by process group) in `finally`."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.workers: list[WorkerProcess] = []
        self.brokers: list[KafkaBroker] = []
        self.clusters: list[KafkaCluster] = []
        self.redis: list[RedisServer] = []

    def popen(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_pdeathsig_hook(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.popens.append(process)
        return process

    @staticmethod
    def end(process: subprocess.Popen[bytes], timeout: float = 10.0, signum: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)

    def stop_worker(self, worker: WorkerProcess) -> None:
        with contextlib.suppress(Exception):
            worker.stop(timeout=15)
        with contextlib.suppress(Exception):
            worker.kill()

    def stop_broker(self, broker: KafkaBroker) -> None:
        """A benchmark broker's data is thrown away: SIGKILL, then let kafka.sh tidy its pid files."""
        with contextlib.suppress(Exception):
            broker.kill()
        with contextlib.suppress(Exception):
            broker.stop(timeout=30)

    def stop_cluster(self, cluster: KafkaCluster) -> None:
        """The same for every node of a cluster, then `kafka.sh cluster stop` for its pid files."""
        for node in cluster.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        with contextlib.suppress(Exception):
            cluster.stop(timeout=60)

    def stop_all(self) -> None:
        for process in self.popens:
            self.end(process, timeout=5)
        for worker in self.workers:
            self.stop_worker(worker)
        for broker in self.brokers:
            self.stop_broker(broker)
        for cluster in self.clusters:
            self.stop_cluster(cluster)
        for server in self.redis:
            with contextlib.suppress(Exception):
                server.stop()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, float]:
    """Wait until the 1-minute load average is under max_load (at most wait_s); (load, seconds waited)."""
    started = time.monotonic()
    last_print = 0.0
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load < max_load or waited >= wait_s:
            if load >= max_load and wait_s > 0:
                say(f"load average still {load:.2f} after {waited:.0f}s: measuring anyway (noted in the results)")
            return load, waited
        if time.monotonic() - last_print >= 30:
            last_print = time.monotonic()
            say(f"waiting for the machine to calm down: load average {load:.2f} >= {max_load} "
                f"({waited:.0f}/{wait_s:.0f}s)")
        time.sleep(5)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}

