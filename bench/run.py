"""End-to-end benchmark of the engine on a real Apache Kafka broker (`make bench`).

    python -m bench.run [--quick] [--profile] [--only single,batched,lag,scale,memory,ltv-cost] [--wait-load SECONDS]

Everything runs on this machine, each scenario on its own broker (free port, temp data dir):

1. throughput, one event per message: N pre-produced events (bench/data.py: mostly impressions, some
   clicks, few conversions, spend rows), read by
   - raw: an aiokafka getmany loop with orjson decode (bench/raw_consumer.py), the Python ceiling;
   - naive: a per-event Faust agent, Record values, one table update per event (bench/naive_app.py);
   - engine: `attribution worker` (TOPIC_PARTITIONS=4, LOG_LEVEL=WARNING), timed from its intake's first
     output until the metric topic reflects every event: the sum of impressions + clicks over the latest
     `metrics.channel` message per (channel, window) equals what was produced, and so does the sum of
     leads + orders (attributed credit) for the conversions.
   Each also as events per CPU second of its process, which the other load on a shared machine disturbs less.
2. the same with batched input (JSON arrays of 100 events per message);
3. lag, on that worker: events with ts = now at a steady rate (bench/live_producer.py), 1,000/s batched
   (where one worker keeps up), then 5,000/s batched and one event per message: per event, the time from
   producing it to the first metrics.channel message whose counts include it, touchpoints and conversions
   apart (conversions wait ATTRIBUTION_GRACE by design), next to the engine's own
   `attribution_event_lag_seconds` histogram over the same span.
4. scaling: batched data on 8 partitions, one worker, then two workers, then one worker with WORKER_INTAKE=off
   fed by one `attribution intake` process (fresh broker each), with the CPU each process (broker included) used.
5. memory: bytes per tracking ID and per remembered event id, and per remembered customer of the
   lifetime-value stage (bench/memory.py).
6. ltv-cost: the throughput measure of 1./2. (batched), with the lifetime-value stage and with LTV_STAGE=off, on
   the same data, for the realistic mix and an order-heavy one (bench/ltv_cost.py).
7. with --profile, after the rest: py-spy samples a worker through a throughput run of each shape and a
   5,000/s lag phase (bench/profile.py says where its time goes).

Compare figures only within one run (ratios): the machine is shared. Before measuring it waits (up to
--wait-load seconds) for the 1-minute load average to fall below --max-load, and notes the load.
A full run writes its tables to bench/RESULTS.md (sections "Engine end to end", "Memory", "Engine profile";
the others are kept); --quick, --only, --scale and experiments only print theirs unless --write. Every
process it starts is stopped in `finally`, brokers included; it gives up with a message naming what it saw
when a phase times out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import data
from bench.profile import summarize as summarize_profile
from streams.kafka.embedded_broker import _pdeathsig_hook
from streams.kafka.topics import METRICS_CHANNEL_TOPIC, make_producer
from streams.stages.app import JOURNEY_TOPIC
from streams.stages.intake import INTAKE_GROUP
from tests.integration.services import KafkaBroker, WorkerProcess, create_topics, fetch_kafka, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTIONS = ("## Engine end to end", "## Lifetime-value stage cost", "## Memory", "## Engine profile")
WINDOW_MS = 60_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()
DEFAULT_SCALE_RUNS = "1:0,2:0,1:1"  # workers:intake processes, in order (0: each worker reads the inputs itself)


class BenchError(RuntimeError):
    """A scenario failed or timed out; the message says which and what it saw."""


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", flush=True)


@dataclass(frozen=True)
class Sizes:
    single: int
    batched: int
    scale: int
    live_s: float
    naive_cap_s: float
    memory_ids: int
    memory_typical: int

    @classmethod
    def of(cls, quick: bool, scale: float = 1.0) -> Sizes:
        sizes = cls(20_000, 100_000, 100_000, 8.0, 20.0, 100_000, 10_000) if quick else \
            cls(60_000, 200_000, 150_000, 20.0, 40.0, 1_000_000, 100_000)
        if scale == 1.0:
            return sizes
        return cls(int(sizes.single * scale), int(sizes.batched * scale), int(sizes.scale * scale), sizes.live_s,
                   sizes.naive_cap_s, int(sizes.memory_ids * scale), int(sizes.memory_typical * scale))


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
    def take(cls, workers: Iterable[int | None], broker: int | None) -> CpuMark:
        return cls(time.monotonic(), sum(cpu_seconds(pid) for pid in workers), cpu_seconds(broker),
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

    def stop_all(self) -> None:
        for process in self.popens:
            self.end(process, timeout=5)
        for worker in self.workers:
            self.stop_worker(worker)
        for broker in self.brokers:
            self.stop_broker(broker)


# --- the metric topic, watched ----------------------------------------------------------------------


async def read_from_start(bootstrap: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    """A started consumer (no group) of every partition of `topic`, from the beginning; creates the topic."""
    await create_topics(bootstrap, [topic], partitions)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=200,  # min bytes 1: data still comes at once
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


class MetricsWatcher:
    """Reads metrics.channel from the start and keeps the latest figures per (channel, window)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.latest: dict[tuple[str, int], tuple[int, float]] = {}
        self.log: list[tuple[float, str, int, int, float]] = []  # (received, channel, window, touches, conv)
        self.touches = 0
        self.conversions = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None
        self.reached: dict[str, float] = {}
        self.admin: AIOKafkaAdminClient | None = None

    async def start(self, partitions: int) -> None:
        self.consumer = await read_from_start(self.bootstrap, METRICS_CHANNEL_TOPIC, partitions)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            received = time.time()
            for records in batches.values():
                for record in records:
                    self.absorb(received, orjson.loads(record.value))

    def absorb(self, received: float, message: dict[str, Any]) -> None:
        key = (message["channel"], message["window_start"])
        touches = int(message["impressions"]) + int(message["clicks"])
        conversions = float(message["leads"]) + float(message["orders"])
        old_touches, old_conversions = self.latest.get(key, (0, 0.0))
        self.latest[key] = (touches, conversions)
        self.touches += touches - old_touches
        self.conversions += conversions - old_conversions
        self.log.append((received, key[0], key[1], touches, conversions))

    def check(self, expected: data.Expected) -> bool:
        """Notes when the touchpoints, then everything, were first all reflected; True when both are."""
        if self.task is not None and self.task.done():
            self.task.result()  # raises what stopped the reader
            raise BenchError("the metrics.channel reader stopped")
        last = self.log[-1][0] if self.log else time.time()
        if "touches" not in self.reached and self.touches >= expected.touches:
            self.reached["touches"] = last
        if "conversions" not in self.reached and self.conversions >= expected.conversions - 1e-6 * expected.events:
            self.reached["conversions"] = last
        return len(self.reached) == 2

    async def pipeline(self, partitions: int) -> tuple[int, int]:
        """(input messages the engine's group has committed, messages its intake has sent to the journeys
        topic): where a backlog sits between the stages."""
        assert self.consumer is not None
        if self.admin is None:
            self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self.admin.start()
        try:
            if JOURNEY_TOPIC not in await self.admin.list_topics():
                return 0, 0  # not created by the worker yet: asking for its offsets would auto-create it
            committed = await self.admin.list_consumer_group_offsets(INTAKE_GROUP)
            journey = [TopicPartition(JOURNEY_TOPIC, p) for p in range(partitions)]
            ends = await self.consumer.end_offsets(journey)
        except Exception:  # noqa: BLE001 - a diagnostic: not there yet
            return 0, 0
        read = sum(o.offset for tp, o in committed.items() if tp.topic in data.INPUT_TOPICS and o.offset > 0)
        return read, sum(ends.values())

    async def records_written(self) -> dict[str, int]:
        """Records on every topic the engine writes (all but the inputs): what it cost the broker."""
        assert self.consumer is not None
        if self.admin is None:
            self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await self.admin.start()
        topics = [t for t in await self.admin.list_topics()
                  if t not in data.INPUT_TOPICS and not t.startswith(("__", "bench-"))]  # bench-: the naive app
        described = await self.admin.describe_topics(topics)
        tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
        ends = await self.consumer.end_offsets(tps)
        out: dict[str, int] = defaultdict(int)
        for tp, end in ends.items():
            out[tp.topic] += end
        return dict(out)

    async def stop(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.consumer is not None:
            await self.consumer.stop()


# --- the worker's /metrics ----------------------------------------------------------------------------


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:  # noqa: S310
            return response.read().decode()
    except OSError:
        return ""


def events_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("attribution_events_total{"))


def lag_buckets(text: str) -> dict[float, float]:
    """Cumulative bucket counts of attribution_event_lag_seconds, by upper bound."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("attribution_event_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the quantile."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1]


async def journeys_owned(workers: list[WorkerProcess], partitions: int, timeout: float) -> None:
    """Wait until the workers own every journey partition between them (`/api/v1/state`)."""
    deadline = time.monotonic() + timeout

    def owned(worker: WorkerProcess) -> list[int]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/api/v1/state", timeout=2) as answer:  # noqa: S310
                return list(orjson.loads(answer.read())["journey_partitions"])
        except OSError:
            return []

    while len({p for owns in await asyncio.gather(*(asyncio.to_thread(owned, w) for w in workers)) for p in owns}
              ) < partitions:
        if time.monotonic() > deadline:
            raise BenchError(f"the workers did not own all {partitions} journey partitions within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def scrape_all(workers: list[WorkerProcess]) -> list[str]:
    return list(await asyncio.gather(*(asyncio.to_thread(scrape, w.web_port) for w in workers)))


# --- producing ---------------------------------------------------------------------------------------


async def produce(bootstrap: str, dataset: data.Dataset) -> float:
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    try:
        futures = []
        for topic, key, value, partition in dataset.messages:
            futures.append(await producer.send(topic, value, key=key, partition=partition))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


def weighted_percentiles(samples: list[tuple[float, int]], qs: Iterable[float]) -> list[float | None]:
    total = sum(weight for _, weight in samples)
    if not total:
        return [None for _ in qs]
    ordered = sorted(samples)
    out: list[float | None] = []
    for q in qs:
        rank, seen = q * total, 0
        for value, weight in ordered:
            seen += weight
            if seen >= rank:
                out.append(value)
                break
    return out


# --- the scenarios -----------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    sizes: Sizes
    tmp: Path
    procs: Processes = field(default_factory=Processes)
    results: dict[str, Any] = field(default_factory=dict)

    async def broker(self, name: str, partitions: int) -> KafkaBroker:
        broker = KafkaBroker(self.tmp / f"kafka-{name}")
        self.procs.brokers.append(broker)
        say(f"{name}: starting Apache Kafka on port {broker.port} ...")
        await asyncio.to_thread(broker.start)
        await create_topics(broker.bootstrap, list(data.INPUT_TOPICS), partitions)
        return broker

    def retire(self, broker: KafkaBroker) -> None:
        """Stop the broker and delete its data: the killed broker's files left in the page cache made every
        later run slower (broker ~0.95 of a core instead of ~0.7, 0.6-0.7x the events/s; gone when the
        cache was dropped between runs). With --keep-logs they stay, and so does that bias."""
        self.procs.stop_broker(broker)
        if not self.args.keep_logs:
            shutil.rmtree(broker.data_dir, ignore_errors=True)

    async def preproduce(self, broker: KafkaBroker, dataset: data.Dataset) -> None:
        e = dataset.expected
        say(f"producing {e.events:,} events ({dataset.shape}: {len(dataset.messages):,} messages; "
            f"{dict(e.by_topic)}, {e.tracking_ids:,} tracking IDs) ...")
        seconds = await produce(broker.bootstrap, dataset)
        say(f"produced in {seconds:.1f}s")

    # baselines ----------------------------------------------------------------------------------------
    async def raw(self, broker: KafkaBroker, dataset: data.Dataset) -> dict[str, Any]:
        say(f"raw aiokafka + orjson loop over {dataset.shape} input ...")
        timeout = 120.0
        process = self.procs.popen(
            [sys.executable, "-m", "bench.raw_consumer", broker.bootstrap, str(dataset.expected.events),
             str(timeout)], self.tmp / f"raw-{dataset.shape}.log")
        await self.wait_exit(process, timeout + 30, f"raw consumer ({dataset.shape})")
        lines = (self.tmp / f"raw-{dataset.shape}.log").read_text().strip().splitlines()
        result = orjson.loads(lines[-1])
        if not result["done"]:
            raise BenchError(f"the raw consumer read only {result['events']:,} of {dataset.expected.events:,} "
                             f"events within {timeout:.0f}s")
        result["rate"] = result["events"] / max(result["seconds"], 1e-9)
        result["per_cpu_s"] = result["events"] / max(result["cpu_seconds"], 1e-9)
        say(f"raw: {result['rate']:,.0f} events/s ({result['events']:,} in {result['seconds']:.2f}s; "
            f"{result['per_cpu_s']:,.0f} events per CPU second)")
        return result

    async def naive(self, broker: KafkaBroker, dataset: data.Dataset, partitions: int) -> dict[str, Any]:
        shape, expected = dataset.shape, dataset.expected.events
        cap = self.sizes.naive_cap_s
        say(f"naive Faust agent over {shape} input (stops at {cap:.0f}s of processing) ...")
        progress_file = self.tmp / f"naive-{shape}.json"
        process = self.procs.popen(
            [sys.executable, "-m", "bench.naive_app", broker.bootstrap, shape, str(partitions), str(free_port()),
             str(progress_file)], self.tmp / f"naive-{shape}.log")
        deadline = time.monotonic() + cap + 90
        progress = {"events": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
        last_print = 0.0
        try:
            while True:
                await asyncio.sleep(0.25)
                with contextlib.suppress(OSError, orjson.JSONDecodeError):
                    progress = orjson.loads(progress_file.read_bytes())
                if progress["events"] >= expected:
                    break
                if progress["first"] and time.time() - progress["first"] >= cap:
                    break
                if process.poll() is not None:
                    raise BenchError(f"the naive Faust app exited with status {process.returncode}:\n"
                                     f"{tail(self.tmp / f'naive-{shape}.log')}")
                if time.monotonic() > deadline:
                    raise BenchError(f"the naive Faust app processed {progress['events']:,} of {expected:,} events "
                                     f"before the benchmark's deadline:\n{tail(self.tmp / f'naive-{shape}.log')}")
                if time.monotonic() - last_print >= 5:
                    last_print = time.monotonic()
                    say(f"  naive: {progress['events']:,}/{expected:,}")
        finally:
            self.procs.end(process)
        seconds = progress["last"] - progress["first"]
        cpu_seconds = progress["cpu_last"] - progress["cpu_first"]
        result = {"events": progress["events"], "seconds": seconds, "capped": progress["events"] < expected,
                  "rate": progress["events"] / max(seconds, 1e-9), "cpu_seconds": cpu_seconds,
                  "per_cpu_s": progress["events"] / max(cpu_seconds, 1e-9)}
        capped = " (stopped at the cap: rate over the events it did)" if result["capped"] else ""
        say(f"naive: {result['rate']:,.0f} events/s ({result['events']:,} in {seconds:.1f}s; "
            f"{result['per_cpu_s']:,.0f} events per CPU second){capped}")
        return result

    async def wait_exit(self, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                self.procs.end(process)
                raise BenchError(f"{what} did not finish within {timeout:.0f}s")
            await asyncio.sleep(0.1)
        if process.returncode != 0:
            raise BenchError(f"{what} exited with status {process.returncode}")

    # the engine ---------------------------------------------------------------------------------------
    def workers(self, label: str, bootstrap: str, partitions: int, count: int,
                extra_env: dict[str, str] | None = None, intakes: int = 0) -> list[WorkerProcess]:
        """`count` workers, then `intakes` `attribution intake` processes (the workers then WORKER_INTAKE=off)."""
        env = {"TOPIC_PARTITIONS": str(partitions), "LOG_LEVEL": self.args.worker_log_level, "REDIS_URL": "",
               "STATE_STORE": "memory", **({"WORKER_INTAKE": "off"} if intakes else {}), **(extra_env or {})}
        argv = None
        if self.args.worker_fetch_wait_ms is not None:  # an experiment: the engine's constant, patched at start
            argv = [sys.executable, "-c", f"import sys, streams.stages.app as app; app.FETCH_MAX_WAIT_MS = "
                    f"{self.args.worker_fetch_wait_ms}; from streams.commands.cli import main; "
                    "sys.exit(main(['worker']))"]
        workers = [
            WorkerProcess(env, bootstrap=bootstrap, log_dir=self.tmp / f"{label}-logs", name=f"{label}-w{i + 1}",
                          argv=argv)
            for i in range(count)
        ]
        workers += [
            WorkerProcess(env, bootstrap=bootstrap, log_dir=self.tmp / f"{label}-logs", name=f"{label}-i{i + 1}",
                          args=("intake",))
            for i in range(intakes)
        ]
        self.procs.workers.extend(workers)
        return workers

    async def engine(
        self, label: str, broker: KafkaBroker, dataset: data.Dataset, partitions: int, count: int = 1,
        keep: bool = False, profile: Path | None = None, extra_env: dict[str, str] | None = None, intakes: int = 0,
    ) -> tuple[dict[str, Any], list[WorkerProcess], MetricsWatcher]:
        """`intakes` > 0: the workers without their intake, and that many intake processes (counted with the
        workers: their CPU, their /metrics)."""
        expected = dataset.expected
        watcher = MetricsWatcher(broker.bootstrap)
        await watcher.start(partitions)
        workers = self.workers(label, broker.bootstrap, partitions, count, extra_env, intakes)
        say(f"engine ({label}): {count} worker(s) and {intakes or 'their own'} intake process(es) on {partitions} "
            f"partitions, {expected.events:,} events, {dataset.shape} input ...")
        launched = time.monotonic()
        timeout = 90.0 + expected.events / 1_000
        for worker in workers[:count]:
            worker.start()
        if intakes:  # the clock starts at the intake's first output: not before the worker can absorb it
            await journeys_owned(workers[:count], partitions, timeout)
            for intake in workers[count:]:
                intake.start()
        series: list[tuple[float, float]] = []  # (time, events absorbed by the journeys stage)
        stages: dict[str, float] = {}  # start (the intake's first output), intake (all input committed), absorbed
        first_wall = 0.0
        cpu_first: CpuMark | None = None
        spy: subprocess.Popen[bytes] | None = None
        last_print = next_scrape = next_pipeline = 0.0
        processed, read, routed = 0.0, 0, 0
        try:
            while not watcher.check(expected):
                now = time.monotonic()
                if now >= next_pipeline:  # broker requests only: no cost to the worker
                    read, routed = await watcher.pipeline(partitions)
                    now = time.monotonic()
                    if "start" not in stages and routed > 0:
                        stages["start"], first_wall = now, time.time()
                        cpu_first = CpuMark.take((w.pid for w in workers), broker.pid)
                        if profile is not None:
                            spy = self.start_profile(workers[0], profile)
                    if "intake" not in stages and read >= len(dataset.messages):
                        stages["intake"] = now
                    next_pipeline = now + (0.1 if "start" not in stages else 0.5)
                if "start" in stages and now >= next_scrape:  # /metrics costs the worker CPU: once a second
                    processed = sum(events_total(text) for text in await scrape_all(workers))
                    now = time.monotonic()
                    series.append((now, processed))
                    if "absorbed" not in stages and processed >= expected.events:
                        stages["absorbed"] = now
                    next_scrape = now + 1.0
                for worker in workers:
                    if not worker.alive:
                        raise BenchError(f"{worker.name} exited with status {worker.returncode}:\n{worker.tail()}")
                if now - launched > timeout:
                    raise BenchError(
                        f"engine ({label}) timed out after {timeout:.0f}s: the intake committed {read:,} of "
                        f"{len(dataset.messages):,} input messages, {processed:,.0f} of {expected.events:,} events "
                        f"were absorbed; the metric topic shows {watcher.touches:,}/{expected.touches:,} "
                        f"touchpoints and {watcher.conversions:,.1f}/{expected.conversions:,} conversions.\n"
                        f"{workers[0].name} log:\n{workers[0].tail()}")
                if now - last_print >= 3:
                    last_print = now
                    say(f"  engine: intake committed {read:,}/{len(dataset.messages):,} input messages, sent "
                        f"{routed:,} to journeys; {processed:,.0f}/{expected.events:,} absorbed; metrics show "
                        f"{watcher.touches:,}/{expected.touches:,} touchpoints, "
                        f"{watcher.conversions:,.0f}/{expected.conversions:,} conversions")
                await asyncio.sleep(0.05)
            cpu_done = CpuMark.take((w.pid for w in workers), broker.pid)
            processed = sum(events_total(text) for text in await scrape_all(workers))
            series.append((time.monotonic(), processed))
            try:
                written = await watcher.records_written()
            except Exception as exc:  # noqa: BLE001 - a diagnostic only
                say(f"  (could not count the records the engine wrote: {exc})")
                written = {}
        finally:
            if spy is not None:
                self.procs.end(spy, timeout=20, signum=signal.SIGINT)
        if "start" not in stages or cpu_first is None:
            raise BenchError(f"engine ({label}): the metrics showed everything before the intake was seen to start")
        start = stages["start"]
        seconds = max(watcher.reached.values()) - first_wall
        result = {
            "events": expected.events,
            "messages": len(dataset.messages),
            "workers": count,
            "intakes": intakes,
            "partitions": partitions,
            "startup_s": start - launched,
            "intake_s": stages["intake"] - start if "intake" in stages else None,
            "absorbed_s": stages.get("absorbed", series[-1][0]) - start,
            "touch_seconds": watcher.reached["touches"] - first_wall,
            "seconds": seconds,
            "rate": expected.events / max(seconds, 1e-9),
            "absorb_rate": mid_rate(series, expected.events),
            "cpu": cpu_done.cores_since(cpu_first),
            "per_cpu_s": expected.events / max(cpu_done.workers - cpu_first.workers, 1e-9),
            "metric_messages": len(watcher.log),
            "records_written": written,
            "started_wall": first_wall,  # the intake's first output, for measures that go on (bench/ltv_cost.py)
            "started_cpu_workers": cpu_first.workers,
        }
        if written:
            total = sum(written.values())
            top = sorted(written.items(), key=lambda item: -item[1])[:3]
            say(f"  the engine wrote {total:,} records ({total / expected.events:.2f} per input event): "
                + ", ".join(f"{topic} {n:,}" for topic, n in top))
        say(f"engine ({label}): {result['rate']:,.0f} events/s end to end: {seconds:.1f}s from the intake's first "
            f"output until the metrics show every event (intake read all input after {fmt_s(result['intake_s'])}, "
            f"journeys absorbed all after {fmt_s(result['absorbed_s'])}, metrics showed all touchpoints after "
            f"{fmt_s(result['touch_seconds'])}); start-up {result['startup_s']:.1f}s; CPU cores: workers "
            f"{result['cpu']['workers']:.2f} ({result['per_cpu_s']:,.0f} events per worker CPU second), broker "
            f"{result['cpu']['broker']:.2f}, others {result['cpu']['others']:.2f}")
        if not keep:
            for worker in workers:
                self.procs.stop_worker(worker)
            await watcher.stop()
        return result, workers, watcher

    async def settle(self, watcher: MetricsWatcher, lag: dict[str, Any]) -> None:
        """After a phase the worker fell behind in: wait (at most --settle s) until it has caught up, so that
        the next phase does not measure this one's backlog."""
        started = time.monotonic()
        while time.monotonic() - started < self.args.settle and not (
            watcher.touches >= lag["want_touches"] and watcher.conversions >= lag["want_conversions"]
        ):
            await asyncio.sleep(0.5)
        lag["settled_s"] = time.monotonic() - started
        caught_up = watcher.touches >= lag["want_touches"]
        if lag["settled_s"] > 1:
            say(f"  {'caught up' if caught_up else 'still behind'} {lag['settled_s']:.0f}s after the phase's drain")

    def start_profile(self, worker: WorkerProcess, out: Path) -> subprocess.Popen[bytes] | None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(binary).exists():
            say("py-spy not found (pip install py-spy): no profile")
            return None
        return self.procs.popen(
            [binary, "record", "--pid", str(worker.pid), "--rate", "200", "--format", "raw", "--threads",
             "--gil", "--nonblocking", "--output", str(out)], out.with_suffix(".log"))

    async def latency(
        self, shape: str, broker: KafkaBroker, workers: list[WorkerProcess], watcher: MetricsWatcher, seed: int,
        profile: Path | None = None, rate: float | None = None,
    ) -> dict[str, Any]:
        rate, duration = rate or self.args.rate, self.sizes.live_s
        say(f"lag: {rate:,.0f} events/s for {duration:.0f}s, ts = now, {shape} input ...")
        before = [lag_buckets(text) for text in await scrape_all(workers)]
        base = dict(watcher.latest)
        log_start = len(watcher.log)
        out_file = self.tmp / f"live-{shape}.json"
        cpu_before = CpuMark.take((w.pid for w in workers), broker.pid)
        process = self.procs.popen(
            [sys.executable, "-m", "bench.live_producer", broker.bootstrap, str(rate), str(duration), shape,
             str(seed), str(WINDOW_MS), str(out_file)], self.tmp / f"live-{shape}.log")
        spy = self.start_profile(workers[0], profile) if profile is not None else None
        try:
            await self.wait_exit(process, duration + 60, f"the live producer ({shape})")
        finally:
            if spy is not None:
                self.procs.end(spy, timeout=20, signum=signal.SIGINT)
        cpu_after = CpuMark.take((w.pid for w in workers), broker.pid)
        live = orjson.loads(out_file.read_bytes())
        touches_sent = sum(n for _, touches, _ in live["ticks"] for n in touches.values())
        conversions_sent = sum(n for _, _, conversions in live["ticks"] for n in conversions.values())
        want_touches = sum(t for t, _ in base.values()) + touches_sent
        want_conversions = sum(c for _, c in base.values()) + conversions_sent - 1e-6 * live["sent"]
        say(f"  produced {live['sent']:,} events in {live['seconds']:.1f}s; waiting (at least {self.args.drain:.0f}s, "
            f"at most {self.args.drain_max:.0f}s) for the metrics to show them all")
        drained = time.monotonic()
        await asyncio.sleep(self.args.drain)
        while time.monotonic() - drained < self.args.drain_max and not (
            watcher.touches >= want_touches and watcher.conversions >= want_conversions
        ):
            await asyncio.sleep(0.5)
        drain = time.monotonic() - drained
        after = [lag_buckets(text) for text in await scrape_all(workers)]
        histogram: dict[float, float] = defaultdict(float)
        for b, a in zip(before, after, strict=True):
            for bound, count in a.items():
                histogram[bound] += count - b.get(bound, 0.0)
        touch, conversion, missing = lag_samples(live["ticks"], watcher.log[log_start:], base)
        touch.append((float("inf"), missing[0]))  # not shown within the drain: slower than anything measured
        conversion.append((float("inf"), missing[1]))
        (t50, t99), (c50, c99) = weighted_percentiles(touch, (0.5, 0.99)), weighted_percentiles(conversion, (0.5, 0.99))
        result = {
            "shape": shape,
            "target_rate": rate,
            "drain_max_s": self.args.drain_max,
            "rate": live["sent"] / live["seconds"],
            "sent": live["sent"],
            "touch_p50": t50, "touch_p99": t99, "touch_n": sum(w for _, w in touch),
            "conversion_p50": c50, "conversion_p99": c99, "conversion_n": sum(w for _, w in conversion),
            "waited_s": live["seconds"] + drain,
            "want_touches": want_touches,
            "want_conversions": want_conversions,
            "missing_touches": missing[0], "missing_conversions": missing[1],
            "engine_p50": histogram_quantile(0.5, histogram), "engine_p99": histogram_quantile(0.99, histogram),
            "engine_observations": histogram.get(float("inf"), 0.0),
            "cpu": cpu_after.cores_since(cpu_before),
        }
        say(f"lag ({shape}): touchpoints p50 {fmt_s(t50)} p99 {fmt_s(t99)}; conversions p50 {fmt_s(c50)} "
            f"p99 {fmt_s(c99)}; engine histogram p50 {fmt_s(result['engine_p50'])} p99 {fmt_s(result['engine_p99'])}"
            f"; not reflected: {missing[0]} touchpoints, {missing[1]} conversions")
        return result


def mid_rate(series: list[tuple[float, float]], total: int) -> float | None:
    """Events/s absorbed between 10% and 90% of the total (interpolated from the /metrics samples)."""
    def crossing(level: float) -> float | None:
        for (t0, v0), (t1, v1) in zip(series, series[1:], strict=False):
            if v0 < level <= v1:
                return t0 + (t1 - t0) * (level - v0) / (v1 - v0)
        return None
    low, high = crossing(0.1 * total), crossing(0.9 * total)
    if low is None or high is None or high <= low:
        return None
    return 0.8 * total / (high - low)


def lag_samples(
    ticks: list[list[Any]],
    log: list[tuple[float, str, int, int, float]],
    base: dict[tuple[str, int], tuple[int, float]],
) -> tuple[list[tuple[float, int]], list[tuple[float, int]], tuple[int, int]]:
    """Per produced tick, the seconds until the first metrics.channel message whose count includes it.

    Touchpoints per (channel, window): a message includes the tick's events once its impressions +
    clicks reach what was there before the run plus everything produced up to that tick. Conversions
    per window: the sum of leads + orders over the latest message of every channel of that window."""
    touch_messages: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    conversion_messages: dict[int, list[tuple[float, float]]] = defaultdict(list)
    latest_conversions = {key: value[1] for key, value in base.items()}
    window_total: dict[int, float] = defaultdict(float)
    for (_, window), (_, conversions) in base.items():
        window_total[window] += conversions
    base_window_total = dict(window_total)
    for received, channel, window, touches, conversions in log:
        touch_messages[(channel, window)].append((received, touches))
        window_total[window] += conversions - latest_conversions.get((channel, window), 0.0)
        latest_conversions[(channel, window)] = conversions
        conversion_messages[window].append((received, window_total[window]))
    touch: list[tuple[float, int]] = []
    conversion: list[tuple[float, int]] = []
    missing_touch = missing_conversion = 0
    produced_touch: dict[tuple[str, int], int] = defaultdict(int)
    produced_conversion: dict[int, int] = defaultdict(int)
    cursor: dict[Any, int] = defaultdict(int)
    for sent, touches, conversions in ticks:
        for name, n in touches.items():
            channel, window = name.rsplit("|", 1)
            key = (channel, int(window))
            produced_touch[key] += n
            target = base.get(key, (0, 0.0))[0] + produced_touch[key]
            messages = touch_messages[key]
            i = cursor[key]
            while i < len(messages) and messages[i][1] < target:
                i += 1
            cursor[key] = i
            if i < len(messages):
                touch.append((messages[i][0] - sent, n))
            else:
                missing_touch += n
        for window_text, n in conversions.items():
            window = int(window_text)
            produced_conversion[window] += n
            target_c = base_window_total.get(window, 0.0) + produced_conversion[window] - 1e-6
            messages_c = conversion_messages[window]
            i = cursor[window]
            while i < len(messages_c) and messages_c[i][1] < target_c:
                i += 1
            cursor[window] = i
            if i < len(messages_c):
                conversion.append((messages_c[i][0] - sent, n))
            else:
                missing_conversion += n
    return touch, conversion, (missing_touch, missing_conversion)


def fmt_s(value: float | None) -> str:
    if value == float("inf"):
        return "not shown in time"
    return "-" if value is None else f"{value:.2f}s"


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the whole run ---------------------------------------------------------------------------------------


async def run_all(run: Run) -> None:
    sizes, results, now_ms = run.sizes, run.results, int(time.time() * 1000)
    start_ms, span_ms = now_ms - 70 * 60_000, 60 * 60_000  # an hour of event time ending 10 min ago
    wanted = set(run.args.only.split(",")) if run.args.only else {"single", "batched", "lag", "scale", "memory",
                                                                  "ltv-cost"}

    if "single" in wanted:
        broker = await run.broker("single", 4)
        dataset = data.build(sizes.single, "single", start_ms, span_ms, seed=7, partitions=4)
        await run.preproduce(broker, dataset)
        results["single"] = {
            "expected": dataset.expected.__dict__ | {"touches": dataset.expected.touches},
            "raw": await run.raw(broker, dataset),
            "naive": await run.naive(broker, dataset, 4),
        }
        results["single"]["engine"], _, _ = await run.engine("single", broker, dataset, 4)
        run.retire(broker)

    if "batched" in wanted or "lag" in wanted:
        broker = await run.broker("batched", 4)
        if "batched" in wanted:
            dataset = data.build(sizes.batched, "batched", start_ms, span_ms, seed=8, partitions=4)
        else:  # the lag phases alone: a worker with some state first
            dataset = data.build(min(sizes.batched, 20_000), "batched", start_ms, span_ms, seed=8, partitions=4)
        await run.preproduce(broker, dataset)
        if "batched" in wanted:
            results["batched"] = {"raw": await run.raw(broker, dataset), "naive": await run.naive(broker, dataset, 4)}
        engine, workers, watcher = await run.engine("batched", broker, dataset, 4, keep=True)
        if "batched" in wanted:
            results["batched"]["engine"] = engine
        try:
            if "lag" in wanted:
                # the low rate first, on a worker that keeps up; then the target rate in both shapes
                phases = [(24, "batched", run.args.low_rate)] if run.args.low_rate and not run.args.quick else []
                phases += [(21, "batched", run.args.rate), (22, "single", run.args.rate)]
                results["lag"] = []
                for seed, shape, rate in phases:
                    results["lag"].append(await run.latency(shape, broker, workers, watcher, seed, rate=rate))
                    await run.settle(watcher, results["lag"][-1])
        finally:
            for worker in workers:
                run.procs.stop_worker(worker)
            await watcher.stop()
        run.retire(broker)

    if "scale" in wanted:
        dataset = data.build(sizes.scale, run.args.scale_shape, start_ms, span_ms, seed=9, partitions=8)
        results["scale"] = []
        for index, (count, intakes) in enumerate(run.args.scale_runs):
            broker = await run.broker(f"scale{index}-{count}w{intakes}i", 8)  # a data dir of its own
            await run.preproduce(broker, dataset)
            engine, _, _ = await run.engine(f"scale-{count}w{intakes}i", broker, dataset, 8, count=count,
                                            intakes=intakes)
            results["scale"].append(engine | {"shape": dataset.shape})
            run.retire(broker)

    if "ltv-cost" in wanted:
        from bench.ltv_cost import measure as measure_ltv_cost

        results["ltv_cost"] = await measure_ltv_cost(run, sizes.batched, start_ms, span_ms, run.args.ltv_rounds,
                                                     not run.args.ltv_sequential)

    if "memory" in wanted:
        from bench.memory import run as measure_memory

        results["memory"] = await asyncio.to_thread(measure_memory, sizes.memory_ids, sizes.memory_typical, say)

    if run.args.profile:
        results["profile"] = {}

        def keep(name: str, out: Path, rate: float) -> None:
            if out.exists():
                results["profile"][name] = summarize_profile(out.read_text()) | {"rate": rate}
                kept = ROOT / ".run" / f"bench-profile-{name}.txt"
                kept.parent.mkdir(exist_ok=True)
                shutil.copyfile(out, kept)
                say(f"profile ({name}) kept in {kept.relative_to(ROOT)}")

        for shape, n in (("single", sizes.single), ("batched", sizes.batched)):
            broker = await run.broker(f"profile-{shape}", 4)
            dataset = data.build(n, shape, start_ms, span_ms, seed=10, partitions=4)
            await run.preproduce(broker, dataset)
            out = run.tmp / f"profile-{shape}.txt"
            engine, workers, watcher = await run.engine(f"profile-{shape}", broker, dataset, 4, profile=out,
                                                        keep=shape == "batched")
            keep(shape, out, engine["rate"])
            if shape == "batched":  # and the steady rate of the lag phase, on that worker
                try:
                    live_out = run.tmp / "profile-live.txt"
                    lag = await run.latency("batched", broker, workers, watcher, 23, profile=live_out)
                    keep("live", live_out, lag["rate"])
                finally:
                    for worker in workers:
                        run.procs.stop_worker(worker)
                    await watcher.stop()
            run.retire(broker)


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


def scale_runs(text: str) -> list[tuple[int, int]]:
    """`1:0,2:0,1:1` -> [(1, 0), (2, 0), (1, 1)]: (workers, intake processes) per scaling run."""
    try:
        runs = [(int(workers), int(intakes)) for workers, intakes in (run.split(":") for run in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WORKERS:INTAKES[,...], e.g. 1:0,2:0,1:1") from None
    if not runs or any(workers < 1 or intakes < 0 for workers, intakes in runs):
        raise argparse.ArgumentTypeError(f"{text!r}: at least one worker per run, no negative counts")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="End-to-end engine benchmark.")
    parser.add_argument("--quick", action="store_true", help="smaller N and shorter phases (~3 minutes)")
    parser.add_argument("--profile", action="store_true", help="also profile the worker with py-spy")
    parser.add_argument("--only", default="", help="comma-separated subset of: single,batched,lag,scale,memory,"
                        "ltv-cost (another name, e.g. 'profile' with --profile, runs none of them)")
    parser.add_argument("--ltv-rounds", type=int, default=1,
                        help="ltv-cost: rounds per mix of a run with and one without the LTV stage (default 1)")
    parser.add_argument("--ltv-sequential", action="store_true",
                        help="ltv-cost: the two runs of a round one after the other, not at the same time")
    parser.add_argument("--rate", type=float, default=5_000.0, help="events/s of the lag phase (default 5000)")
    parser.add_argument("--low-rate", type=float, default=1_000.0,
                        help="a first lag phase at this rate, where one worker keeps up (0: none; not with --quick)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds to wait at most, after a lag phase, for the worker to catch up (default 60)")
    parser.add_argument("--drain", type=float, default=4.0,
                        help="seconds to wait at least for the last metrics of a lag phase (default 4)")
    parser.add_argument("--drain-max", type=float, default=30.0,
                        help="seconds to wait at most for them; later ones count as not shown (default 30)")
    parser.add_argument("--scale-runs", type=scale_runs, default=scale_runs(DEFAULT_SCALE_RUNS),
                        help="scaling runs, in order, as WORKERS:INTAKE_PROCESSES (0: each worker reads the inputs "
                        "itself); default 1:0,2:0,1:1")
    parser.add_argument("--scale-shape", choices=("single", "batched"), default="batched",
                        help="input shape of the 1-vs-2-worker comparison (default batched)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load is below this")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="seconds to wait for that (default 600, with --quick 60; 0: do not wait)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this (for trying it out)")
    parser.add_argument("--worker-log-level", default="WARNING", help="LOG_LEVEL of the workers (default WARNING)")
    parser.add_argument("--worker-fetch-wait-ms", type=int, default=None,
                        help="experiment: run the workers with streams.stages.app.FETCH_MAX_WAIT_MS set to this")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with every log, and each retired "
                        "broker's data (which slows the later runs: see Run.retire)")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave bench/RESULTS.md alone")
    parser.add_argument("--write", action="store_true",
                        help="write bench/RESULTS.md even for --quick, --only, --scale or experiment runs")
    args = parser.parse_args(argv)
    sizes = Sizes.of(args.quick, args.scale)
    wait_s = args.wait_load if args.wait_load is not None else (60.0 if args.quick else 600.0)

    def terminate(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up in `finally` must not be cut short
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminate)
    say("fetching Apache Kafka (deploy/kafka/kafka.sh fetch) ...")
    fetch_kafka()
    load_before, waited = wait_for_quiet(args.max_load, wait_s)
    info = machine() | {"load_before": load_before, "waited_s": waited, "quick": args.quick}
    say(f"machine: {info['nproc']} CPUs ({info['cpu']}), load average {load_before:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="attribution-bench-"))
    run = Run(args, sizes, tmp)
    failed: BaseException | None = None
    try:
        asyncio.run(run_all(run))
    except (BenchError, Exception, KeyboardInterrupt, SystemExit) as exc:
        failed = exc
    finally:
        say("stopping every process the benchmark started ...")
        run.procs.stop_all()
        if (failed is None or not isinstance(failed, BenchError)) and not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"logs kept in {tmp}")
    info["load_after"] = os.getloadavg()[0]
    info["seconds"] = time.monotonic() - STARTED
    from bench.report import render, write_sections

    sections = render(run.results, info, args)
    print()
    for text in sections.values():
        print(text)
    if failed is not None:
        print(f"bench: FAILED: {failed}", file=sys.stderr)
        if not isinstance(failed, (BenchError, KeyboardInterrupt, SystemExit)):
            raise failed
        return 1
    partial = (args.quick or args.only or args.scale != 1.0 or args.worker_fetch_wait_ms is not None
               or args.scale_runs != scale_runs(DEFAULT_SCALE_RUNS))
    if args.no_write or (partial and not args.write):
        if not args.no_write:
            say(f"not writing {RESULTS.relative_to(ROOT)} for a partial or experimental run (--write to force)")
    else:
        write_sections(RESULTS, sections)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
