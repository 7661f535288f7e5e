"""The memory bound of a real worker fed 1,000,000 distinct tracking IDs inside a lookback, and after expiry.

    python -m bench.memory_bound [--ids 1000000] [--restart] [--json PATH]

Not part of `make test` (a few minutes on two cores); docs/reliability.md records its figures. One
Apache Kafka broker and one `attribution worker` (TOPIC_PARTITIONS=4, lookbacks and DEDUP_WINDOW of
10 minutes, ALLOWED_LATENESS 1 minute, in-memory store), both started here and stopped at the end:

1. baseline: the worker's resident memory (RSS) once it is up and idle;
2. load: `--ids` impressions, each with a tracking ID of its own (a one-off visitor), event times within
   five minutes half an hour ago (inside the lookback), in JSON arrays of 1,000 on `impressions`; when the
   worker's `/api/v1/state` shows them all in its journeys table: RSS, and RSS per tracking ID;
3. expiry: one impression with ts = now moves event time past every journey's horizon (lookback +
   lateness); the sweep (every 30 s) forgets them: RSS once the table holds no more than that one;
4. with --restart: SIGTERM, start again, wait for the changelog to be read back (its records for the
   forgotten journeys are tombstones) until the table holds no more than the one again: RSS of the
   restarted worker.

RSS is what the operating system gives the process; after a sweep, CPython keeps part of the freed memory
in its allocator's arenas for reuse, so "after expiry" is the figure to plan with for a worker that has
seen that peak, and the restarted figure is what the state itself costs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.state import rss, say, state
from tests.integration.services import KafkaBroker, WorkerProcess, fetch_kafka

PARTITIONS = 4
BATCH = 1_000
ENV = {
    "TOPIC_PARTITIONS": str(PARTITIONS), "CLICK_LOOKBACK": "10m", "VIEW_LOOKBACK": "10m", "DEDUP_WINDOW": "10m",
    "ALLOWED_LATENESS": "1m", "METRICS_WINDOW": "60s", "LOG_LEVEL": "WARNING",
}
MiB = 2**20




async def wait_state(worker: WorkerProcess, done: Any, what: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        try:
            current = await asyncio.to_thread(state, worker)
        except OSError:
            current = None
        if current is not None and done(current):
            return current
        if current is not None and current["journeys"] != last:
            last = current["journeys"]
            say(f"  {what}: {last:,} journeys, RSS {rss(worker) / MiB:,.0f} MiB")
        if not worker.alive:
            raise RuntimeError(f"the worker exited while waiting for {what}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f}s, state {current}")
        await asyncio.sleep(5.0)


async def produce_visitors(bootstrap: str, ids: int, start_ts: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024,
                                max_request_size=8 * 1024 * 1024, compression_type=None)
    await producer.start()
    began = time.monotonic()
    run = uuid.uuid4().hex[:8]
    try:
        pending = []
        for first in range(0, ids, BATCH):
            events = [{"event_id": f"{run}-e{n}", "type": "impression", "ts": start_ts + n * 300_000 // ids,
                       "tracking_id": f"{run}-v{n}", "channel": "google_ads", "campaign": "brand"}
                      for n in range(first, min(ids, first + BATCH))]
            pending.append(await producer.send("impressions", orjson.dumps(events)))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - began


async def run(ids: int, restart: bool) -> dict[str, Any]:
    fetch_kafka()
    tmp = Path(tempfile.mkdtemp(prefix="attribution-memory-bound-"))
    broker = KafkaBroker(tmp / "kafka")
    broker.start()
    worker = WorkerProcess(ENV, bootstrap=broker.bootstrap, log_dir=tmp, name="memory-bound")
    out: dict[str, Any] = {"tracking_ids": ids, "partitions": PARTITIONS, "env": ENV}
    try:
        worker.start()
        worker.wait_http("/api/v1/state", timeout=120)
        await asyncio.sleep(10.0)  # the group settles, the first timers run
        out["rss_baseline_mib"] = rss(worker) / MiB
        say(f"baseline RSS {out['rss_baseline_mib']:.0f} MiB; producing {ids:,} one-off visitors ...")

        now = int(time.time() * 1000)
        began = time.monotonic()
        out["produce_s"] = await produce_visitors(broker.bootstrap, ids, now - 30 * 60_000)
        full = await wait_state(worker, lambda s: s["journeys"] >= ids, "absorbing", timeout=3600)
        out["load_s"] = time.monotonic() - began
        out["journeys_full"] = full["journeys"]
        out["rss_full_mib"] = rss(worker) / MiB
        out["rss_bytes_per_id"] = (out["rss_full_mib"] - out["rss_baseline_mib"]) * MiB / ids
        say(f"full: {full['journeys']:,} journeys, RSS {out['rss_full_mib']:,.0f} MiB "
            f"({out['rss_bytes_per_id']:.0f} B per tracking ID) after {out['load_s']:.0f}s")

        clock = [{"event_id": f"clock-{uuid.uuid4().hex}", "type": "impression", "ts": int(time.time() * 1000),
                  "tracking_id": "clock", "channel": "google_ads"}]
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("impressions", orjson.dumps(clock))
        finally:
            await producer.stop()
        began = time.monotonic()
        expired = await wait_state(worker, lambda s: s["journeys"] <= 1, "expiring", timeout=900)
        out["expiry_s"] = time.monotonic() - began
        await asyncio.sleep(5.0)
        out["journeys_after_expiry"] = expired["journeys"]
        out["rss_after_expiry_mib"] = rss(worker) / MiB
        say(f"after expiry: {expired['journeys']} journeys, RSS {out['rss_after_expiry_mib']:,.0f} MiB")

        if restart:
            assert worker.stop(timeout=120) == 0, worker.tail()
            began = time.monotonic()
            worker.start()
            worker.wait_http("/api/v1/state", timeout=1800)
            await wait_state(worker, lambda s: s["journey_partitions"], "recovering", timeout=1800)
            recovered = await wait_state(worker, lambda s: s["journeys"] <= 1, "recovering", timeout=1800)
            await asyncio.sleep(10.0)
            out["restart_s"] = time.monotonic() - began
            out["journeys_after_restart"] = recovered["journeys"]
            out["rss_after_restart_mib"] = rss(worker) / MiB
            say(f"restarted: {recovered['journeys']} journeys, RSS {out['rss_after_restart_mib']:,.0f} MiB")
    finally:
        worker.stop(timeout=60)
        broker.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000, help="distinct tracking IDs (one impression each)")
    parser.add_argument("--restart", action="store_true", help="also restart the worker after expiry")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args.ids, args.restart))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        args.json.write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
