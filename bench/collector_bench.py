"""Load benchmark of the HTTP collector's pixel against a real Apache Kafka broker.

    .venv/bin/python bench/collector_bench.py [--duration 20] [--connections 1,16,64] [--bootstrap HOST:PORT]

Starts a broker with `deploy/kafka/kafka.sh start PORT` (unless --bootstrap names one), runs
`attribution collect` as its own process, and drives `GET /px?e=impression&tid=...&ch=...` from a
separate load process on loopback: `wrk` when installed (Debian: `apt-get install wrk`), else an
aiohttp client in a child process. Every request carries a fresh tracking ID. After each run it
checks that Kafka holds one message per successful request (the collector answers only after the
ack), prints a table, and writes it with the machine and date under "## Collector" in
bench/RESULTS.md (replacing that section, leaving the others).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Collector"
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
PATH = "/px?e=impression&ch=google_ads&cmp=bench&tid="

WRK_SCRIPT = r"""
local counter = 0
local prefix = string.format("%x", math.random(0, 0xffffff))
request = function()
  counter = counter + 1
  return wrk.format("GET", "/px?e=impression&ch=google_ads&cmp=bench&tid=w" .. prefix .. "-" .. counter)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


try:
    from streams.commands.collector import PRODUCER_LINGER_MS
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from streams.commands.collector import PRODUCER_LINGER_MS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the load generator without wrk: an aiohttp client in its own process --------------------


async def _aiohttp_load(url: str, duration: float, connections: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = non_2xx = 0
    deadline = time.perf_counter() + duration
    prefix = os.urandom(3).hex()
    counter = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, non_2xx, counter
        while time.perf_counter() < deadline:
            counter += 1
            started = time.perf_counter()
            try:
                async with session.get(f"{url}{PATH}a{prefix}-{counter}") as response:
                    await response.read()
                    if response.status >= 300:
                        non_2xx += 1
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6) if latencies else 0

    return {"requests": len(latencies) + errors, "duration_us": int(elapsed * 1e6), "p50_us": pct(50),
            "p90_us": pct(90), "p99_us": pct(99), "max_us": pct(100), "errors": errors, "non_2xx": non_2xx}


def run_load(url: str, duration: float, connections: int, tool: str) -> dict:
    """One load run in a separate process; its summary (latencies in microseconds)."""
    if tool == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT)
        try:
            threads = max(1, min(connections, (os.cpu_count() or 2) // 2))
            out = subprocess.run(
                ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "10s",
                 "-s", script.name, url],
                capture_output=True, text=True, check=True,
            ).stdout
        finally:
            os.unlink(script.name)
    else:
        out = subprocess.run(
            [sys.executable, __file__, "--load-only", url, "--duration", str(duration),
             "--connections", str(connections)],
            capture_output=True, text=True, check=True,
        ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


# --- broker, collector, Kafka offsets ---------------------------------------------------------


def start_broker(data_dir: str) -> tuple[str, int]:
    port = free_port()
    env = {**os.environ, "KAFKA_DATA_DIR": data_dir, "KAFKA_PARENT_PID": str(os.getpid())}
    out = subprocess.run([str(KAFKA_SH), "start", str(port)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"collector_bench: could not start Kafka:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1], port


def stop_broker(data_dir: str, port: int) -> None:
    env = {**os.environ, "KAFKA_DATA_DIR": data_dir, "KAFKA_STOP_TIMEOUT": "20"}
    subprocess.run([str(KAFKA_SH), "stop", str(port)], env=env, capture_output=True)


def start_collector(bootstrap: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "COLLECTOR_PORT": str(port), "TOPIC_PARTITIONS": "8"}
    command = [sys.executable, "-m", "streams.commands.cli", "collect"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"collector_bench: the collector exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    process.terminate()
    sys.exit(f"collector_bench: the collector did not become healthy:\n{log_path.read_text()}")


def stop_collector(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def _impressions_total(bootstrap: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic("impressions") or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - a fresh client may not know it yet
            partitions = consumer.partitions_for_topic("impressions") or set()
        ends = await consumer.end_offsets([TopicPartition("impressions", p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


def impressions_total(bootstrap: str) -> int:
    return asyncio.run(_impressions_total(bootstrap))


def produced_counter(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^collector_events_produced_total\{type="impression"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


# --- report -------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {platform.system()} " \
           f"{platform.release()}, Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    lines = [
        "| connections | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | non-2xx "
        "| on Kafka |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['connections']} | {row['requests']} | {row['rps']:,.0f} | {row['p50_us'] / 1000:.2f} "
            f"| {row['p90_us'] / 1000:.2f} | {row['p99_us'] / 1000:.2f} | {row['max_us'] / 1000:.1f} "
            f"| {row['errors']} | {row['non_2xx']} | {row['on_kafka']} |"
        )
    return "\n".join(lines)


def write_results(text: str) -> None:
    """Replace the "## Collector" section of bench/RESULTS.md (or append it), keeping every other section."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = current.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        kept_after = "\n".join(lines[end:])
        new = "\n".join(lines[:start]).rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
        if kept_after:
            new += "\n" + kept_after.rstrip("\n") + "\n"
    RESULTS.write_text(new.lstrip("\n"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load run (default 20)")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated concurrency levels")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument("--tool", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--load-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.load_only:  # the child process of the aiohttp load generator
        summary = asyncio.run(_aiohttp_load(args.load_only, args.duration, int(args.connections)))
        print("RESULT " + json.dumps(summary))
        return 0

    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    load_before = os.getloadavg()[0]
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        broker_port = None
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            bootstrap, broker_port = start_broker(str(Path(tmp) / "kafka"))
            print(f"Kafka broker on {bootstrap}", file=sys.stderr)
        collector = None
        try:
            port = free_port()
            collector = start_collector(bootstrap, port, Path(tmp) / "collector.log")
            url = f"http://127.0.0.1:{port}"
            print(f"collector on {url}; load: {tool}; warming up", file=sys.stderr)
            run_load(url, 3, levels[0], tool)
            rows = []
            for connections in levels:
                before_kafka, before_counter = impressions_total(bootstrap), produced_counter(port)
                print(f"{connections} connections for {args.duration:.0f}s ...", file=sys.stderr)
                summary = run_load(url, args.duration, connections, tool)
                on_kafka = impressions_total(bootstrap) - before_kafka
                produced = int(produced_counter(port) - before_counter)
                ok = summary["requests"] - summary["errors"] - summary["non_2xx"]
                rps = summary["requests"] / (summary["duration_us"] / 1e6)
                rows.append({**summary, "connections": connections, "rps": rps, "on_kafka": on_kafka,
                             "produced": produced, "ok": ok})
        finally:
            if collector is not None:
                rc = stop_collector(collector)
                if rc != 0:
                    print(f"collector exited with {rc}:\n{(Path(tmp) / 'collector.log').read_text()}",
                          file=sys.stderr)
            if broker_port is not None:
                stop_broker(str(Path(tmp) / "kafka"), broker_port)

    body = table(rows)
    load = "wrk 4.1, a Lua script giving each request a fresh `tid`" if tool == "wrk" else "an aiohttp client"
    mismatch = [r for r in rows if r["on_kafka"] < r["ok"]]
    text = (
        f"{SECTION}\n\n"
        f"`bench/collector_bench.py`: `attribution collect` (one process, one aiokafka producer, acks=all, "
        f"linger {PRODUCER_LINGER_MS} ms) against Apache Kafka 4.1.1 (single KRaft node, 8 partitions) on the "
        f"same machine; "
        f"load from a separate process ({load}) on loopback: `GET {PATH}<fresh id>` for "
        f"{args.duration:.0f} s per row, answered after the Kafka ack. \"on Kafka\": messages added to "
        f"`impressions` during the run (requests still in flight when the load stops are not in `requests` "
        f"but do reach Kafka, so it can be a few over).\n\n"
        f"Machine: {machine()}; collector, broker and load generator share it; load average "
        f"{load_before:.1f} before the run.  \n"
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        f"{body}\n"
    )
    print(text)
    if mismatch:
        print("WARNING: fewer messages on Kafka than successful requests: "
              + ", ".join(f"{r['connections']} connections: {r['on_kafka']} < {r['ok']}" for r in mismatch),
              file=sys.stderr)
    if not args.no_write:
        write_results(text)
        print(f"written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
