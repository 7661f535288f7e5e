"""The engine measures of `python -m bench.run` (`Run`): the raw and naive baselines, the engine end to end on
pre-produced input (single, batched, scale) and its lag at a steady live rate, with what they compute."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import data
from bench.metrics_topic import MetricsWatcher
from bench.processes import BenchError, CpuMark, Processes, say, tail
from bench.worker_http import events_total, histogram_quantile, journeys_owned, lag_buckets, scrape_all
from streams.kafka.topics import make_producer
from tests.integration.services import KafkaBroker, KafkaCluster, RedisServer, WorkerProcess, create_topics, free_port

WINDOW_MS = 60_000


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


def broker_pids(broker: KafkaBroker | KafkaCluster) -> list[int | None]:
    """The broker's process, or every node's of a cluster (their CPU is summed)."""
    return [node.pid for node in broker.nodes] if isinstance(broker, KafkaCluster) else [broker.pid]


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

    def redis_url(self) -> str:
        if not self.procs.redis:
            server = RedisServer(self.tmp / "redis")
            server.start()
            self.procs.redis.append(server)
        return self.procs.redis[0].url

    def retire(self, broker: KafkaBroker) -> None:
        """Stop the broker and delete its data: the killed broker's files left in the page cache made every
        later run slower (broker ~0.95 of a core instead of ~0.7, 0.6-0.7x the events/s; gone when the
        cache was dropped between runs). With --keep-logs they stay, and so does that bias."""
        self.procs.stop_broker(broker)
        if not self.args.keep_logs:
            shutil.rmtree(broker.data_dir, ignore_errors=True)

    async def preproduce(self, broker: KafkaBroker | KafkaCluster, dataset: data.Dataset) -> None:
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
        """`count` workers, then `intakes` `attribution intake` processes (the workers then WORKER_INTAKE=off).
        Several workers share customers and order ids through Redis (one in-memory redis-server per run)."""
        redis_url = self.redis_url() if count > 1 else ""
        env = {"TOPIC_PARTITIONS": str(partitions), "LOG_LEVEL": self.args.worker_log_level, "REDIS_URL": redis_url,
               "STATE_STORE": "memory", **({"WORKER_INTAKE": "off"} if intakes else {}), **(extra_env or {})}
        argv = None
        if self.args.worker_fetch_wait_ms is not None:  # an experiment: the engine's constant, patched at start
            argv = [sys.executable, "-c", "import sys, streams.stages.topology as topology; "
                    f"topology.FETCH_MAX_WAIT_MS = {self.args.worker_fetch_wait_ms}; "
                    "from streams.commands.cli import main; sys.exit(main(['worker']))"]
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
        self, label: str, broker: KafkaBroker | KafkaCluster, dataset: data.Dataset, partitions: int, count: int = 1,
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
                        cpu_first = CpuMark.take((w.pid for w in workers), broker_pids(broker))
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
            cpu_done = CpuMark.take((w.pid for w in workers), broker_pids(broker))
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
            "cpu_seconds": {"workers": cpu_done.workers - cpu_first.workers,
                            "broker": cpu_done.broker - cpu_first.broker,
                            "workers_since_launch": cpu_done.workers, "span": cpu_done.at - cpu_first.at},
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
        self, shape: str, broker: KafkaBroker | KafkaCluster, workers: list[WorkerProcess], watcher: MetricsWatcher,
        seed: int, profile: Path | None = None, rate: float | None = None,
    ) -> dict[str, Any]:
        rate, duration = rate or self.args.rate, self.sizes.live_s
        say(f"lag: {rate:,.0f} events/s for {duration:.0f}s, ts = now, {shape} input ...")
        before = [lag_buckets(text) for text in await scrape_all(workers)]
        base = dict(watcher.latest)
        log_start = len(watcher.log)
        out_file = self.tmp / f"live-{shape}.json"
        cpu_before = CpuMark.take((w.pid for w in workers), broker_pids(broker))
        process = self.procs.popen(
            [sys.executable, "-m", "bench.live_producer", broker.bootstrap, str(rate), str(duration), shape,
             str(seed), str(WINDOW_MS), str(out_file)], self.tmp / f"live-{shape}.log")
        spy = self.start_profile(workers[0], profile) if profile is not None else None
        try:
            await self.wait_exit(process, duration + 60, f"the live producer ({shape})")
        finally:
            if spy is not None:
                self.procs.end(spy, timeout=20, signum=signal.SIGINT)
        cpu_after = CpuMark.take((w.pid for w in workers), broker_pids(broker))
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


def first_reaching(messages: list[tuple[float, float]], start: int, target: float) -> int:
    """The index of the first (time, figure) from `start` on whose figure reaches `target`; len: none yet."""
    i = start
    while i < len(messages) and messages[i][1] < target:
        i += 1
    return i


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
            i = cursor[key] = first_reaching(messages, cursor[key], target)
            if i < len(messages):
                touch.append((messages[i][0] - sent, n))
            else:
                missing_touch += n
        for window_text, n in conversions.items():
            window = int(window_text)
            produced_conversion[window] += n
            target_c = base_window_total.get(window, 0.0) + produced_conversion[window] - 1e-6
            messages_c = conversion_messages[window]
            i = cursor[window] = first_reaching(messages_c, cursor[window], target_c)
            if i < len(messages_c):
                conversion.append((messages_c[i][0] - sent, n))
            else:
                missing_conversion += n
    return touch, conversion, (missing_touch, missing_conversion)


def fmt_s(value: float | None) -> str:
    if value == float("inf"):
        return "not shown in time"
    return "-" if value is None else f"{value:.2f}s"

