"""Scale-out cost (issue #24): CPU per event with 1, 2 and 4 workers on a three-broker cluster.

    python -m bench.run --only scale-out [--quick] [--scale-out-workers 1,2,4] [--scale-out-rounds N] [--write]

This machine has 2 cores, so more workers cannot be faster by the wall clock; what scaling out must not do is
cost more CPU per event. One dataset (bench/data.py, batched input, 8 partitions, the size of the "scale"
section) is built once and pre-produced identically for every run onto a fresh three-broker KRaft cluster
(`deploy/kafka/kafka.sh cluster start 3` in a temp dir: every topic on 3 brokers, min.insync.replicas 2; the
engine creates its own topics with 3 replicas, as it does on any cluster of 3 or more), so each run's group
starts from nothing and reads everything. Every run, one worker included, shares customers and order ids
through a fresh in-memory redis-server (REDIS_URL), as several workers must: the only difference between the
runs is the number of workers.

Each run is `Run.engine`: all workers launched at once, timed from the intake's first output until
`metrics.channel` shows every event. The workers' CPU (utime + stime from /proc of each worker process,
summed) is counted over that same span, so the group's rebalances while the workers join, and the table
recovery they cause, are in it; the workers' start-up before the first output (imports, topic checks,
the first join) is not, and is shown apart (*incl. start-up*: each worker's CPU from its launch). After
the run the workers stay up, idle, for IDLE_S seconds: their CPU then is the per-worker fixed cost (timers,
metric publishing, fetch loops) that a larger group pays once per worker. The brokers' CPU is the three
nodes' together. Runs alternate the order of the sizes from round to round (1, 2, 4, then 4, 2, 1), so a
change in the machine's other load falls on each size alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
from typing import TYPE_CHECKING, Any

from bench import data
from bench.engine_run import broker_pids
from bench.processes import CpuMark, say
from bench.report import rate
from streams.kafka.topics import METRICS_CHANNEL_TOPIC
from tests.integration.services import KafkaCluster, RedisServer, create_topics

if TYPE_CHECKING:
    from bench.engine_run import Run

HEADING = "## Scale-out on a three-broker cluster"
PARTITIONS = 8
BROKERS = 3
REPLICATION = 3
IDLE_S = 5.0
TARGET = 1.3  # CPU per event with the most workers at most this times one worker's


def worker_counts(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]."""
    import argparse

    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected worker counts, e.g. 1,2,4") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: at least one worker per run")
    return counts


def order(counts: list[int], rounds: int) -> list[tuple[int, int]]:
    """(round, workers) in run order: each round the other way round."""
    out: list[tuple[int, int]] = []
    for r in range(rounds):
        out += [(r + 1, n) for n in (counts if r % 2 == 0 else list(reversed(counts)))]
    return out


async def start_cluster(run: Run, label: str) -> KafkaCluster:
    cluster = KafkaCluster(run.tmp / f"cluster-{label}", BROKERS)
    run.procs.clusters.append(cluster)
    say(f"{label}: starting a {BROKERS}-broker Apache Kafka cluster ...")
    await asyncio.to_thread(cluster.start)
    # the inputs and the topic the benchmark watches: on every broker, as the engine makes its own
    await create_topics(cluster.bootstrap, [*data.INPUT_TOPICS, METRICS_CHANNEL_TOPIC], PARTITIONS,
                        replication=REPLICATION)
    return cluster


def retire(run: Run, cluster: KafkaCluster) -> None:
    """Stop the cluster and delete its data (see Run.retire: a killed broker's files slow later runs)."""
    run.procs.stop_cluster(cluster)
    if not run.args.keep_logs:
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)


async def one_run(run: Run, dataset: data.Dataset, count: int, round_: int) -> dict[str, Any]:
    label = f"scaleout-r{round_}-{count}w"
    cluster = await start_cluster(run, label)
    redis = RedisServer(run.tmp / f"redis-{label}")
    try:
        await run.preproduce(cluster, dataset)
        await asyncio.to_thread(redis.start)
        run.procs.redis.append(redis)
        load_start = os.getloadavg()[0]
        engine, workers, watcher = await run.engine(label, cluster, dataset, PARTITIONS, count=count, keep=True,
                                                    extra_env={"REDIS_URL": redis.url})
        try:
            load_end = os.getloadavg()[0]
            before = CpuMark.take((w.pid for w in workers), broker_pids(cluster))
            await asyncio.sleep(IDLE_S)
            after = CpuMark.take((w.pid for w in workers), broker_pids(cluster))
            idle = after.cores_since(before)
        finally:
            for worker in workers:
                run.procs.stop_worker(worker)
            await watcher.stop()
    finally:
        with contextlib.suppress(Exception):
            redis.stop()
        retire(run, cluster)
    result = engine | {"round": round_, "load_start": load_start, "load_end": load_end, "idle": idle,
                       "brokers": BROKERS, "replication": REPLICATION}
    say(f"scale-out ({count} worker(s), round {round_}): {result['per_cpu_s']:,.0f} events per worker CPU second "
        f"({engine['cpu_seconds']['workers']:.2f} CPU s), idle afterwards {idle['workers']:.3f} worker cores, "
        f"{idle['broker']:.3f} broker cores")
    return result


async def measure(run: Run, n: int, start_ms: int, span_ms: int) -> dict[str, Any]:
    dataset = data.build(n, "batched", start_ms, span_ms, seed=9, partitions=PARTITIONS)
    counts: list[int] = run.args.scale_out_workers
    rounds = run.args.scale_out_rounds or (1 if run.args.quick else 2)
    runs = []
    for round_, count in order(counts, rounds):
        runs.append(await one_run(run, dataset, count, round_))
    return {"runs": runs, "counts": counts, "rounds": rounds, "events": dataset.expected.events,
            "messages": len(dataset.messages)}


def above_idle(run: dict[str, Any]) -> float | None:
    """Events per worker CPU second, the workers' idle rate times the run's span taken off their CPU seconds."""
    cpu = run["cpu_seconds"]["workers"] - run["idle"]["workers"] * run["cpu_seconds"]["span"]
    return run["events"] / cpu if cpu > 0 else None


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per worker count: the runs' events per worker CPU second (median) and CPU per event vs the fewest workers."""
    rows = []
    for count in result["counts"]:
        runs = [r for r in result["runs"] if r["workers"] == count]
        rows.append({"workers": count, "runs": [r["per_cpu_s"] for r in runs],
                     "per_cpu_s": statistics.median(r["per_cpu_s"] for r in runs),
                     "idle_per_worker": statistics.median(r["idle"]["workers"] / count for r in runs)})
    base = rows[0]["per_cpu_s"]
    for row in rows:
        row["relative"] = base / row["per_cpu_s"]  # CPU per event relative to the first count's
    return rows


def section(result: dict[str, Any], head: str) -> str:
    runs, rows = result["runs"], summary(result)
    base = rows[0]
    most = rows[-1]
    out = [
        HEADING,
        "",
        "`python -m bench.run --only scale-out` (bench/scale_out.py; part of `make bench`): the same "
        f"{result['events']:,} events (batched, {result['messages']:,} messages on {PARTITIONS} partitions) "
        f"pre-produced onto a fresh {BROKERS}-broker KRaft cluster (`kafka.sh cluster start {BROKERS}`: replication "
        f"{REPLICATION}, min.insync.replicas 2) for each run, read by 1, 2 and 4 `attribution worker`s "
        f"(TOPIC_PARTITIONS={PARTITIONS}, in-process store, REDIS_URL to a fresh redis-server in every run, one "
        "worker included). *Workers' CPU s*: utime + stime of every worker process, summed, from the intake's "
        "first output until `metrics.channel` shows every event (the group's rebalances while the workers "
        "join, and the changelog recovery they cause, are inside it); *incl. start-up*: from each worker's "
        f"launch. *Idle*: the workers' and brokers' CPU cores over {IDLE_S:.0f} s after the run, nothing left to "
        "do; *above idle*: events over the workers' CPU seconds less that idle rate times the run's span (an "
        "estimate of the cost that goes with the events, apart from the cost that goes with the seconds). Rounds "
        "alternate the order of the sizes. The module's docstring says exactly how.",
        "",
        head,
        "",
        "| workers | round | wall s until metrics show every event | events/s | workers' CPU s | events per worker "
        "CPU second | CPU per event vs 1 worker | workers' CPU s incl. start-up | brokers' CPU s (3 nodes) | "
        "brokers' CPU cores | idle: worker cores (per worker) | idle: broker cores | events per worker CPU second "
        "above idle | load average start / end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        cpu = r["cpu_seconds"]
        out.append(
            f"| {r['workers']} | {r['round']} | {r['seconds']:.1f} | {rate(r['rate'])} | {cpu['workers']:.2f} | "
            f"{rate(r['per_cpu_s'])} | {base['per_cpu_s'] / r['per_cpu_s']:.2f}x | {cpu['workers_since_launch']:.2f} | "
            f"{cpu['broker']:.2f} | {r['cpu']['broker']:.2f} | {r['idle']['workers']:.3f} "
            f"({r['idle']['workers'] / r['workers']:.3f}) | {r['idle']['broker']:.3f} | {rate(above_idle(r))} | "
            f"{r['load_start']:.2f} / {r['load_end']:.2f} |")
    out += [
        "",
        "| workers | events per worker CPU second (median of the runs) | runs | CPU per event vs 1 worker | "
        "idle worker cores per worker |",
        "|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        out.append(f"| {row['workers']} | {rate(row['per_cpu_s'])} | {', '.join(rate(v) for v in row['runs'])} | "
                   f"{row['relative']:.2f}x | {row['idle_per_worker']:.3f} |")
    if base["workers"] == 1 and most["workers"] > 1:
        ok = most["relative"] <= TARGET
        out += ["", f"Target: CPU per event with {most['workers']} workers within {TARGET}x of 1 worker: "
                f"{'**met**' if ok else '**not met**'} ({most['relative']:.2f}x)."]
    out.append("")
    return "\n".join(out)
