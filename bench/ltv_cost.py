"""What the lifetime-value stage costs (issue #10): the engine measure of bench/engine_run.py, with and without it.

    python -m bench.run --only ltv-cost [--quick] [--ltv-rounds N] [--ltv-sequential] [--write]

Per input mix, one dataset (bench/data.py, batched, 4 partitions) is built once and pre-produced identically
onto a fresh broker for every run (a worker group must start from nothing: a second run on the same broker
would resume from the first one's offsets and tables). Each run is `Run.engine` (one `attribution worker`,
timed from the intake's first output until `metrics.channel` shows every event), once with the LTV stage
(`LTV_STAGE=on`, the default) and once with `LTV_STAGE=off`. The two runs of a round go at the same time, so
that the machine's other load falls on both alike: one after the other (`--ltv-sequential`, alternating the
order per round), runs on this shared machine spread by 20-30%, more than the effect being measured.

With the stage on, the run also waits until `metrics.ltv` shows every order that has a customer_id (the sum
of `orders` over the latest message per channel): *every output* is timed to whichever comes last, and the
worker's CPU is counted to that point, so the stage's backlog is not left out of the figure.

Two mixes: the realistic one (the benchmark's: ~1% orders, 70% of them with a customer_id) and an order-heavy
one (every visitor who clicks orders: ~7% orders), where the stage has ~7x the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer

from bench import data
from bench.metrics_topic import decoded_batches, read_from_start
from bench.processes import BenchError, cpu_seconds, say
from bench.report import rate
from streams.kafka.topics import METRICS_LTV_TOPIC

if TYPE_CHECKING:
    from bench.engine_run import Run

PARTITIONS = 4
MIXES = (("realistic", 0.12), ("order-heavy", 1.0))  # (name, data.build's order_rate)
LTV_WAIT_S = 90.0  # after metrics.channel showed everything, at most this for metrics.ltv


class LtvWatcher:
    """Reads metrics.ltv from the start; notes when the latest `orders` per channel add up to `want`."""

    def __init__(self, bootstrap: str, want: int) -> None:
        self.bootstrap = bootstrap
        self.want = want
        self.orders: dict[str, float] = {}
        self.reached: float | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def shown(self) -> float:
        return sum(self.orders.values())

    async def start(self, partitions: int) -> None:
        self.consumer = await read_from_start(self.bootstrap, METRICS_LTV_TOPIC, partitions)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        async for received, messages in decoded_batches(self.consumer):
            for message in messages:
                self.orders[message["channel"]] = float(message["orders"])
            if self.reached is None and self.shown >= self.want - 1e-6 * max(self.want, 1):
                self.reached = received

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()


def stages(rounds: int) -> list[str]:
    """on, off, then off, on, ...: each round in the other order."""
    out: list[str] = []
    for i in range(rounds):
        out += ["on", "off"] if i % 2 == 0 else ["off", "on"]
    return out


async def prepare(run: Run, label: str, dataset: data.Dataset) -> Any:
    """A fresh broker with the dataset on it."""
    broker = await run.broker(label, PARTITIONS)
    try:
        await run.preproduce(broker, dataset)
    except BaseException:
        run.retire(broker)
        raise
    return broker


async def one_run(run: Run, label: str, dataset: data.Dataset, stage: str, broker: Any = None) -> dict[str, Any]:
    broker = broker or await prepare(run, label, dataset)
    try:
        ltv = LtvWatcher(broker.bootstrap, dataset.expected.customer_orders) if stage == "on" else None
        if ltv is not None:
            await ltv.start(PARTITIONS)
        load_start = os.getloadavg()[0]
        engine, workers, watcher = await run.engine(label, broker, dataset, PARTITIONS, keep=True,
                                                    extra_env={"LTV_STAGE": stage})
        try:
            done_wall = engine["started_wall"] + engine["seconds"]
            per_cpu_s = engine["per_cpu_s"]  # worker CPU until metrics.channel showed everything
            if ltv is not None:
                deadline = time.monotonic() + LTV_WAIT_S
                while ltv.reached is None:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{label}: metrics.ltv showed {ltv.shown:,.1f} of "
                                         f"{ltv.want:,} customer orders {LTV_WAIT_S:.0f}s after metrics.channel "
                                         f"showed everything.\n{workers[0].name} log:\n{workers[0].tail()}")
                    await asyncio.sleep(0.05)
                if ltv.reached > done_wall:  # the LTV stage finished last: its CPU to that point
                    done_wall = ltv.reached
                    cpu = sum(cpu_seconds(w.pid) for w in workers) - engine["started_cpu_workers"]
                    per_cpu_s = dataset.expected.events / max(cpu, 1e-9)
                with contextlib.suppress(Exception):  # the stage's records too, now that it is done
                    engine["records_written"] = await watcher.records_written()
        finally:
            for worker in workers:
                run.procs.stop_worker(worker)
            await watcher.stop()
            if ltv is not None:
                await ltv.stop()
    finally:
        run.retire(broker)
    all_seconds = done_wall - engine["started_wall"]
    events = dataset.expected.events
    written = engine.get("records_written") or {}
    result = engine | {
        "stage": stage,
        "all_seconds": all_seconds,
        "all_rate": events / max(all_seconds, 1e-9),
        "all_per_cpu_s": per_cpu_s,
        "records_per_event": sum(written.values()) / events if written else None,
        "load": (load_start, os.getloadavg()[0]),
    }
    say(f"ltv-cost ({label}): LTV_STAGE={stage}: {result['rate']:,.0f} events/s until metrics.channel showed all, "
        f"{result['all_rate']:,.0f} events/s until every output did ({all_seconds:.1f}s), "
        f"{result['all_per_cpu_s']:,.0f} events per worker CPU second")
    return result


async def paired(run: Run, label: str, dataset: data.Dataset) -> list[dict[str, Any]]:
    """Both at once, each on its own broker with the same data: the machine's other load falls on both alike."""
    brokers = [await prepare(run, f"{label}-{stage}", dataset) for stage in ("on", "off")]
    return list(await asyncio.gather(*(one_run(run, f"{label}-{stage}", dataset, stage, broker)
                                       for stage, broker in zip(("on", "off"), brokers, strict=True))))


async def measure(run: Run, n: int, start_ms: int, span_ms: int, rounds: int, together: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds, "mixes": [], "paired": together}
    for mix, order_rate in MIXES:
        dataset = data.build(n, "batched", start_ms, span_ms, seed=12, partitions=PARTITIONS, order_rate=order_rate)
        e = dataset.expected
        if together:
            runs = [r for i in range(rounds) for r in await paired(run, f"ltv-{mix}-{i + 1}", dataset)]
        else:
            runs = [await one_run(run, f"ltv-{mix}-{stage}-{i + 1}", dataset, stage)
                    for i, stage in enumerate(stages(rounds))]
        out["mixes"].append({"mix": mix, "order_rate": order_rate, "events": e.events,
                             "orders": e.by_topic["orders"], "customer_orders": e.customer_orders,
                             "by_topic": dict(e.by_topic), "runs": runs})
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def section(results: dict[str, Any], head: str) -> str:
    out = [
        "## Lifetime-value stage cost",
        "",
        "`python -m bench.run --only ltv-cost` (bench/ltv_cost.py; part of `make bench`): the engine measure of the "
        "section above (one `attribution worker`, 4 partitions, batched input pre-produced by `bench/data.py`, "
        "in-process store), run on the same data with the lifetime-value stage (`LTV_STAGE=on`, the default) and "
        "without it (`LTV_STAGE=off`: no `ltv-customers` / `ltv-channels` agents and tables, no customer "
        "orders on `attribution-customer-orders`), each run on a fresh broker with the same messages, "
        + (f"{results['rounds']} round(s) per mix, the two workers of a round at the same time (the machine's "
           "other load falls on both alike; the one without the stage finishes first and the other then has the "
           "CPU to itself, so per worker CPU second is the figure to compare). "
           if results.get("paired") else
           f"{results['rounds']} round(s) per mix, one run after the other (`--ltv-sequential`), alternating the "
           "order. ")
        + "*metrics.channel*: the section above's "
        "end-to-end rate (until `metrics.channel` shows every event); *every output*: with the stage on, until "
        "`metrics.ltv` also shows every order that has a customer_id (with it off the two are the same). "
        "Per worker CPU second: events over the worker's CPU time to that same point.",
        "",
        head,
        "",
        "| mix | events | orders / with a customer_id (share of events) | LTV_STAGE | run | "
        "events/s, metrics.channel | events/s, every output | events per worker CPU second | "
        "records written per input event | "
        "load average at start / end |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for m in results["mixes"]:
        share = f"{m['orders']:,} / {m['customer_orders']:,} ({m['orders'] / m['events']:.1%} / " \
                f"{m['customer_orders'] / m['events']:.1%})"
        for i, r in enumerate(m["runs"]):
            per_event = "-" if r["records_per_event"] is None else f"{r['records_per_event']:.2f}"
            run_no = f"{i // 2 + 1} (together)" if results.get("paired") else f"{i + 1}"
            out.append(f"| {m['mix']} | {m['events']:,} | {share} | {r['stage']} | {run_no} | {rate(r['rate'])} | "
                       f"{rate(r['all_rate'])} | {rate(r['all_per_cpu_s'])} | {per_event} | "
                       f"{r['load'][0]:.2f} / {r['load'][1]:.2f} |")
    out += [
        "",
        "Median over the runs of each mix; *with / without* < 1 is what the stage costs"
        + (" (last column: the ratio within each round, whose two runs shared the machine's load):"
           if results.get("paired") else ":"),
        "",
        "| mix | orders with a customer_id | events/s with / without (metrics.channel) | ratio | events/s with "
        "(every output) / without | ratio | per worker CPU second with / without | ratio |"
        + (" per worker CPU second, with / without per round |" if results.get("paired") else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if results.get("paired") else ""),
    ]
    for m in results["mixes"]:
        on = [r for r in m["runs"] if r["stage"] == "on"]
        off = [r for r in m["runs"] if r["stage"] == "off"]
        cells = []
        for key in ("rate", "all_rate", "all_per_cpu_s"):  # without the stage, rate == all_rate
            a, b = _median([r[key] for r in on]), _median([r[key] for r in off])
            cells.append(f"{rate(a)} / {rate(b)} | {a / b:.2f}")
        if results.get("paired"):
            rounds = [a["all_per_cpu_s"] / b["all_per_cpu_s"] for a, b in zip(on, off, strict=True)]
            cells.append(", ".join(f"{r:.2f}" for r in rounds) + f" (median {_median(rounds):.2f})")
        out.append(f"| {m['mix']} | {m['customer_orders'] / m['events']:.1%} of events | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)
