"""The worker's state at real scale: memory, disk and changelog per visitor, and the time a restart takes.

    python -m bench.state [--visitors 100000,1000000] [--stores memory,rocksdb] [--json PATH]

Run by `make bench` (`python -m bench.run --only state`: 100k and 1M visitors, 10k and 100k with --quick);
tens of minutes on two cores at 1M. For each store and each V, a fresh Apache Kafka broker (own data dir)
and one `attribution worker` (TOPIC_PARTITIONS=4, STATE_STORE=memory or rocksdb with a fresh STATE_DIR,
everything else at the contract's defaults: lookbacks 30d/1d, DEDUP_WINDOW 7d, ALLOWED_LATENESS 1d,
LOG_LEVEL=INFO for Faust's "Recovery complete" line), both started here and stopped at the end:

1. baseline: the worker's resident memory (RSS, its process group) once it is up and idle;
2. load: V typical visitors (`bench.data.EventSource.whole_journey`: ~6.9 events each, impressions, clicks,
   and for some a lead and/or an order, which become attributions), event times spread over an hour ending
   five minutes ago, as JSON arrays of 100 events per message on their input topics; then wait until the
   worker's `attribution_events_total` accounts for every event and `/api/v1/state` shows V journeys and no
   pending conversion, and ten seconds more;
3. sizes, per visitor: RSS minus the baseline (with rocksdb this includes the fixed memory of its databases,
   opened at their first write: compare only at large V); bytes on disk under STATE_DIR (rocksdb: its files as `du`
   counts them, the write-ahead log included); the journeys table's changelog: the sizes of the segment
   files (`*.log`) in the broker's `logs/attribution-journeys-changelog-N` directories, what Kafka's
   log-dirs tool reports as a partition's size (the other changelogs too, in the JSON). Not compacted:
   Kafka compacts only closed segments (1 GiB by default), so a visitor's superseded rows count too
   (`changelog_records_per_visitor`: records written per visitor);
4. restart: SIGKILL the worker's process group, start it again on the same STATE_DIR, and at once produce
   one new visitor's click and order (ts = now): `restart_s` is from the kill until that order's message
   (key = its event_id) is read from `attributions`. It includes the wait for the killed member to leave
   the consumer group (the worker refuses to join a group that has one: up to KAFKA_SESSION_TIMEOUT + a
   margin; `started_s`: from the kill to the worker's "worker starting on" line, past that wait), the table
   recovery and the 2 s grace. `assigned_s`: from the kill to the worker's partitions being assigned (Faust's
   "generation id" line); `bulk_read_s`: to the end of the memory store's bulk changelog read
   (`streams/kafka/bulk_recovery.py`; None with RocksDB or nothing to read); `recovered_s`: from the kill to
   Faust's "Recovery complete" in its log
   (`/api/v1/state` has no recovered flag, and its journey count walks every key of a RocksDB table, so it
   is read only once, after the order's attribution: `journeys_after_restart`, V + 1 when all came back).

Prints a table (one row per store x V, and per store the restart time of the largest V over the smallest's)
and one JSON object (to --json PATH instead, if given); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import data
from bench.processes import BenchError, Processes, group_rss, machine
from bench.worker_http import events_total, scrape
from streams.kafka.topics import ATTRIBUTIONS_TOPIC, make_producer, partition_counts
from streams.stages.topology import APP_ID, CHANGELOG_TOPICS
from tests.integration.services import KafkaBroker, WorkerProcess, create_topics, fetch_kafka

PARTITIONS = 4
JOURNEYS_CHANGELOG = f"{APP_ID}-journeys-changelog"
SPAN_MS = 60 * 60_000  # event times spread over an hour ...
END_AGO_MS = 5 * 60_000  # ... that ended five minutes ago
SETTLE_S = 10.0
STALL_S = 300.0  # no progress for this long while absorbing: give up
# Lines of the restarted worker's log, timed from the kill: past the group check (the killed member has left), and
# the end of Faust's table recovery (INFO).
LOG_MARKS = {"started_s": "worker starting on", "assigned_s": "generation id", "bulk_read_s": "read in bulk in",
             "recovered_s": "Recovery complete"}
# Settings that must be at the contract's defaults here, whatever this shell's environment says.
DEFAULTED = ("CLICK_LOOKBACK", "VIEW_LOOKBACK", "DEDUP_WINDOW", "ALLOWED_LATENESS", "METRICS_WINDOW", "REDIS_URL",
             "ATTRIBUTION_MODEL", "ATTRIBUTION_GRACE", "LTV_STAGE", "KAFKA_SESSION_TIMEOUT")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rss(worker: WorkerProcess) -> int:
    assert worker.pid is not None
    return group_rss(worker.pid)


def state(worker: WorkerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/api/v1/state", timeout=30) as answer:  # noqa: S310
        return dict(orjson.loads(answer.read()))


# --- producing ---------------------------------------------------------------------------------------


async def produce_visitors(bootstrap: str, visitors: int, prefix: str) -> int:
    """`visitors` whole journeys, ts spread over SPAN_MS, in arrays of BATCH_SIZE per topic; the events sent."""
    source = data.EventSource(seed=17, prefix=prefix)
    start_ms = int(time.time() * 1000) - END_AGO_MS - SPAN_MS
    pending: dict[str, list[dict[str, Any]]] = {topic: [] for topic in data.INPUT_TOPICS}
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    sent, futures, cursor, last_say = 0, [], 0, time.monotonic()
    try:
        for n in range(visitors):
            # whole_journey adds its running event serial to ts: take it off, so that visitor n starts at its slot
            _, events = source.whole_journey(start_ms + n * SPAN_MS // visitors - source.serial)
            for topic, event in events:
                pending[topic].append(event)
                if len(pending[topic]) >= data.BATCH_SIZE:
                    futures.append(await producer.send(topic, orjson.dumps(pending[topic]), partition=cursor))
                    cursor, sent = (cursor + 1) % PARTITIONS, sent + len(pending[topic])
                    pending[topic] = []
            if len(futures) >= 2_000:
                await asyncio.gather(*futures)
                futures.clear()
            if time.monotonic() - last_say >= 5:
                last_say = time.monotonic()
                say(f"  producing: {n + 1:,}/{visitors:,} visitors, {sent:,} events sent")
        for topic, events_left in pending.items():
            if events_left:
                futures.append(await producer.send(topic, orjson.dumps(events_left), partition=cursor))
                cursor, sent = (cursor + 1) % PARTITIONS, sent + len(events_left)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def produce_one(bootstrap: str, topic: str, event: dict[str, Any]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(event))
    finally:
        await producer.stop()


# --- waiting on the worker ---------------------------------------------------------------------------


def failure(worker: WorkerProcess, what: str) -> BenchError:
    return BenchError(f"{what}\n{worker.name}'s log ({worker.log_path}), last lines:\n{worker.tail()}")


async def wait_absorbed(worker: WorkerProcess, events: int, visitors: int, timeout: float) -> dict[str, Any]:
    """Until /metrics counts every event, then until /api/v1/state shows every journey and nothing pending."""
    began = time.monotonic()
    deadline = began + timeout
    seen, moved, last_say = -1.0, began, 0.0
    while seen < events:
        counted = events_total(await asyncio.to_thread(scrape, worker.web_port))
        now = time.monotonic()
        if counted > seen:
            seen, moved = counted, now
        if now - last_say >= 10:
            last_say = now
            say(f"  absorbing: {seen:,.0f}/{events:,} events counted, RSS {rss(worker) / 2**20:,.0f} MiB")
        check(worker, now > deadline or now - moved > STALL_S,
              f"absorbing: {seen:,.0f} of {events:,} events counted after {now - began:.0f}s "
              f"(the last progress {now - moved:.0f}s ago)")
        await asyncio.sleep(2.0)

    def settled(current: dict[str, Any]) -> bool:
        return current["journeys"] >= visitors and current["pending_conversions"] == 0

    return await wait_state(worker, settled, f"{visitors:,} journeys and no pending conversion", deadline)


async def wait_state(worker: WorkerProcess, done: Callable[[dict[str, Any]], bool], what: str,
                     deadline: float) -> dict[str, Any]:
    while True:
        current = None
        with contextlib.suppress(OSError):
            current = await asyncio.to_thread(state, worker)
        if current is not None and done(current):
            return current
        check(worker, time.monotonic() > deadline, f"waiting for {what}: the worker's state is {current}")
        await asyncio.sleep(5.0)


def check(worker: WorkerProcess, late: bool, what: str) -> None:
    if not worker.alive:
        raise failure(worker, f"the worker exited with status {worker.returncode} ({what})")
    if late:
        raise failure(worker, f"timed out: {what}")


# --- sizes -------------------------------------------------------------------------------------------


def disk_bytes(path: Path) -> int:
    """What `du` counts: allocated blocks of every file under `path`."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def changelog_bytes(broker: KafkaBroker, topic: str) -> int:
    """The topic's size on the broker: its partitions' segment files (`*.log`, not the sparse indexes)."""
    logs = broker.data_dir / "logs"
    return sum(f.stat().st_size for d in logs.glob(f"{topic}-*") if d.name.rsplit("-", 1)[1].isdigit()
               for f in d.glob("*.log"))


async def topic_records(bootstrap: str, topic: str) -> int:
    """Records written to the topic: the sum of its partitions' end offsets."""
    consumer = await consumer_at_end(bootstrap, topic)
    try:
        return sum([await consumer.position(tp) for tp in consumer.assignment()])
    finally:
        await consumer.stop()


async def consumer_at_end(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A consumer of every partition of `topic`, positioned at its current end."""
    partitions = (await partition_counts(bootstrap, (topic,))).get(topic, 0)
    if not partitions:
        raise BenchError(f"topic {topic} has no partitions on the broker")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    for tp, offset in (await consumer.end_offsets(tps)).items():
        consumer.seek(tp, offset)
    return consumer


# --- restart -----------------------------------------------------------------------------------------


async def wait_attribution(consumer: AIOKafkaConsumer, key: bytes, worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for records in (await consumer.getmany(timeout_ms=100)).values():
            if any(record.key == key for record in records):
                return
        check(worker, time.monotonic() > deadline, f"the restarted worker's attribution of order {key.decode()}")


async def wait_log(worker: WorkerProcess, offset: int, text: str) -> float:
    """Monotonic time at which `text` first shows in the worker's log after byte `offset` (polled every 0.1 s)."""
    while True:
        with open(worker.log_path, "rb") as log:
            log.seek(offset)
            if text.encode() in log.read():
                return time.monotonic()
        await asyncio.sleep(0.1)


def new_visitor() -> tuple[dict[str, Any], dict[str, Any]]:
    """A click and an order of a visitor nobody has seen, ts = now."""
    tag, now = uuid.uuid4().hex[:12], int(time.time() * 1000)
    click = {"event_id": f"restart-click-{tag}", "type": "click", "ts": now, "tracking_id": f"restart-{tag}",
             "channel": "google_ads", "campaign": "brand"}
    order = {"event_id": f"restart-order-{tag}", "type": "order", "ts": now, "tracking_id": f"restart-{tag}",
             "order_id": f"restart-{tag}", "revenue": 50.0, "currency": "USD"}
    return click, order


async def restart(worker: WorkerProcess, bootstrap: str, timeout: float) -> dict[str, Any]:
    consumer = await consumer_at_end(bootstrap, ATTRIBUTIONS_TOPIC)  # before the kill
    marks: dict[str, asyncio.Task[float]] = {}
    try:
        offset = worker.log_path.stat().st_size
        killed = time.monotonic()
        worker.kill()
        worker.start()
        marks = {name: asyncio.create_task(wait_log(worker, offset, text)) for name, text in LOG_MARKS.items()}
        click, order = new_visitor()
        await produce_one(bootstrap, "clicks", click)
        await produce_one(bootstrap, "orders", order)
        await wait_attribution(consumer, order["event_id"].encode(), worker, timeout)
        out: dict[str, float | None] = {"restart_s": time.monotonic() - killed}
    finally:
        await consumer.stop()
        for task in marks.values():
            task.cancel()
    for name, task in marks.items():
        out[name] = task.result() - killed if task.done() and not task.cancelled() else None
    say(f"  restart: the new visitor's order attributed {out['restart_s']:.1f}s after the kill (worker starting: "
        f"{seconds(out['started_s'])}, partitions assigned: {seconds(out['assigned_s'])}, changelogs read in bulk: "
        f"{seconds(out['bulk_read_s'])}, Faust's recovery complete: {seconds(out['recovered_s'])})")
    return out


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


# --- one store x V -----------------------------------------------------------------------------------


def start_worker(procs: Processes, broker: KafkaBroker, store: str, case_dir: Path) -> WorkerProcess:
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "STATE_STORE": store, "STATE_DIR": str(case_dir / "state"),
           "LOG_LEVEL": "INFO"}
    worker = WorkerProcess(env, bootstrap=broker.bootstrap, log_dir=case_dir, name=f"state-{store}")
    for name in DEFAULTED:
        worker.env.pop(name, None)
    procs.workers.append(worker)
    return worker.start()


async def baseline(worker: WorkerProcess) -> int:
    await asyncio.to_thread(worker.wait_http, "/api/v1/state", 180)
    await asyncio.sleep(SETTLE_S)  # the group settles, the first timers run
    return rss(worker)


async def measure(store: str, visitors: int, tmp: Path, procs: Processes) -> dict[str, Any]:
    """One store at one V on a broker of its own; the broker's data and STATE_DIR are deleted afterwards."""
    case_dir = tmp / f"{store}-{visitors}"
    broker = KafkaBroker(case_dir / "kafka")
    procs.brokers.append(broker)
    say(f"{store}, {visitors:,} visitors: starting Apache Kafka on port {broker.port} ...")
    worker: WorkerProcess | None = None
    try:
        await asyncio.to_thread(broker.start)
        await create_topics(broker.bootstrap, list(data.INPUT_TOPICS), PARTITIONS)
        worker = start_worker(procs, broker, store, case_dir)
        idle = await baseline(worker)
        say(f"  idle RSS {idle / 2**20:,.0f} MiB; producing {visitors:,} visitors ...")
        began = time.monotonic()
        events = await produce_visitors(broker.bootstrap, visitors, prefix=f"{store[0]}{visitors}-")
        timeout = 600 + events / 2_000  # at least 2,000 events/s: far below the engine's rate on two cores
        full = await wait_absorbed(worker, events, visitors, timeout)
        load_s = time.monotonic() - began
        await asyncio.sleep(SETTLE_S)
        out = await sizes(worker, broker, store, case_dir, visitors, idle)
        out |= {"store": store, "visitors": visitors, "events": events, "load_s": load_s,
                "journeys": full["journeys"]}
        say(f"  absorbed {events:,} events in {load_s:.0f}s: RSS +{out['rss_bytes_per_visitor']:,.0f} B, changelog "
            f"{out['changelog_bytes_per_visitor']:,.0f} B per visitor; restarting ...")
        out |= await restart(worker, broker.bootstrap, timeout)
        after = await asyncio.to_thread(state, worker)
        out |= {"journeys_after_restart": after["journeys"],
                "rss_after_restart_bytes_per_visitor": (rss(worker) - idle) / visitors}
        return out
    finally:
        if worker is not None:
            procs.stop_worker(worker)
        procs.stop_broker(broker)
        shutil.rmtree(case_dir / "kafka", ignore_errors=True)
        shutil.rmtree(case_dir / "state", ignore_errors=True)


async def sizes(worker: WorkerProcess, broker: KafkaBroker, store: str, case_dir: Path, visitors: int,
                idle: int) -> dict[str, Any]:
    loaded = rss(worker)
    changelogs = {topic: changelog_bytes(broker, topic) for topic in CHANGELOG_TOPICS}
    records = await topic_records(broker.bootstrap, JOURNEYS_CHANGELOG)
    disk = disk_bytes(case_dir / "state") if store == "rocksdb" else None
    return {"rss_idle_bytes": idle, "rss_loaded_bytes": loaded, "rss_bytes_per_visitor": (loaded - idle) / visitors,
            "state_dir_bytes": disk, "disk_bytes_per_visitor": None if disk is None else disk / visitors,
            "changelog_bytes": changelogs, "changelog_records": records,
            "changelog_bytes_per_visitor": changelogs[JOURNEYS_CHANGELOG] / visitors,
            "changelog_records_per_visitor": records / visitors}


# --- the whole run -----------------------------------------------------------------------------------


async def run(visitors: list[int], stores: list[str], tmp: Path, procs: Processes) -> dict[str, Any]:
    cases = [await measure(store, v, tmp, procs) for store in stores for v in visitors]
    return {"machine": machine(), "partitions": PARTITIONS, "changelog_size": "sum of the segment files (*.log) of "
            f"the {JOURNEYS_CHANGELOG}-N directories under the broker's log dir", "cases": cases,
            "restart_ratio": restart_ratios(cases)}


def restart_ratios(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per store: restart_s of its largest V over its smallest V's."""
    out: dict[str, Any] = {}
    for store in dict.fromkeys(case["store"] for case in cases):
        mine = sorted((c for c in cases if c["store"] == store), key=lambda c: c["visitors"])
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            out[store] = {"visitors": [small["visitors"], large["visitors"]],
                          "ratio": large["restart_s"] / max(small["restart_s"], 1e-9)}
    return out


def table(result: dict[str, Any]) -> str:
    def num(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = ["| store | visitors | RSS B/visitor | disk B/visitor | changelog B/visitor | restart s | worker started s "
             "| assigned s | bulk read s | recovered s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        lines.append(f"| {c['store']} | {c['visitors']:,} | {num(c['rss_bytes_per_visitor'])} | "
                     f"{num(c['disk_bytes_per_visitor'])} | {num(c['changelog_bytes_per_visitor'])} | "
                     f"{num(c['restart_s'], 1)} | {num(c['started_s'], 1)} | {num(c.get('assigned_s'), 1)} | "
                     f"{num(c.get('bulk_read_s'), 1)} | {num(c['recovered_s'], 1)} |")
    if result["restart_ratio"]:
        lines.append("")
    for store, r in result["restart_ratio"].items():
        small, large = r["visitors"]
        lines.append(f"{store}: restart({large:,}) / restart({small:,}) = {r['ratio']:.2f}")
    return "\n".join(lines)


def sizes_arg(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated counts, e.g. 100000,1000000") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be positive")
    return values


def stores_arg(text: str) -> list[str]:
    values = text.split(",")
    if not values or set(values) - {"memory", "rocksdb"}:
        raise argparse.ArgumentTypeError(f"{text!r}: expected memory, rocksdb or both")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.state", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--visitors", type=sizes_arg, default=[100_000, 1_000_000], help="V, comma-separated")
    parser.add_argument("--stores", type=stores_arg, default=["memory", "rocksdb"], help="memory,rocksdb")
    parser.add_argument("--json", type=Path, help="write the JSON object here instead of stdout")
    args = parser.parse_args()
    fetch_kafka()
    tmp, procs = Path(tempfile.mkdtemp(prefix="attribution-state-")), Processes()
    try:
        result = asyncio.run(run(args.visitors, args.stores, tmp, procs))
    except BaseException:
        say(f"logs kept in {tmp}")
        raise
    finally:
        procs.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)
    print(table(result), flush=True)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text, flush=True)


if __name__ == "__main__":
    main()
