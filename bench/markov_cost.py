"""What the Markov stage costs (issue #20): the engine measure of bench/engine_run.py, with and without it.

    python -m bench.run --only markov-cost [--quick] [--no-write]

One dataset (bench/data.py, batched, 4 partitions, the realistic mix: one null path per ~8 events) is
pre-produced onto a fresh broker per run; one `attribution worker` runs on it, with the Markov stage
(`MARKOV_STAGE=on`, the default) or without (`off`), timed and its CPU counted until `metrics.channel` shows
every event. `PATH_TIMEOUT` is 5 minutes in both, so that null paths end within the hour of event time the data
spans (with the default 1d none would, and their work would be left out of the figure).

The runs go in ROUNDS pairs, one after the other, the order alternating (on, off; off, on; ...): run at the same
time, as the first version of this benchmark did, the two workers and their brokers took turns on a 2-core
machine and the ratio moved by +-10% from one run to the next. The figure is the median of the pairs' ratios of
events per worker CPU second.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, Any

from bench import data
from bench.ltv_cost import prepare
from bench.processes import say
from bench.report import rate

if TYPE_CHECKING:
    from bench.engine_run import Run

PARTITIONS = 4
ORDER_RATE = 0.12  # bench/ltv_cost.py's realistic mix
PATH_TIMEOUT = "5m"


ROUNDS = 3


async def one_run(run: Run, label: str, dataset: data.Dataset, stage: str) -> dict[str, Any]:
    broker = await prepare(run, label, dataset)
    try:
        load_start = os.getloadavg()[0]
        env = {"MARKOV_STAGE": stage, "PATH_TIMEOUT": PATH_TIMEOUT}
        engine, workers, watcher = await run.engine(label, broker, dataset, PARTITIONS, keep=True, extra_env=env)
        for worker in workers:
            run.procs.stop_worker(worker)
        await watcher.stop()
    finally:
        run.retire(broker)
    result = engine | {"stage": stage, "load": (load_start, os.getloadavg()[0])}
    say(f"markov-cost ({label}): MARKOV_STAGE={stage}: {result['rate']:,.0f} events/s until metrics.channel showed "
        f"all, {result['per_cpu_s']:,.0f} events per worker CPU second")
    return result


async def measure(run: Run, n: int, start_ms: int, span_ms: int, rounds: int = ROUNDS) -> dict[str, Any]:
    dataset = data.build(n, "batched", start_ms, span_ms, seed=12, partitions=PARTITIONS, order_rate=ORDER_RATE)
    pairs = []
    for i in range(rounds):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        pair = {stage: await one_run(run, f"markov-{stage}-{i + 1}", dataset, stage) for stage in order}
        pairs.append(pair)
    return {"events": dataset.expected.events, "pairs": pairs}


def ratio(pair: dict[str, dict[str, Any]]) -> float:
    return float(pair["on"]["per_cpu_s"] / pair["off"]["per_cpu_s"])


def section(results: dict[str, Any]) -> str:
    pairs = results["pairs"]
    median = statistics.median(ratio(pair) for pair in pairs)
    return "\n".join([
        "## Markov stage cost",
        "",
        f"`python -m bench.run --only markov-cost` (bench/markov_cost.py): {len(pairs)} pairs of runs one after the "
        "other, the order alternating: one worker with `MARKOV_STAGE=on`, then one with `off` (or the other way "
        f"round), each on a fresh broker with the same {results['events']:,} events (batched, 4 partitions, "
        f"PATH_TIMEOUT={PATH_TIMEOUT}).",
        "",
        "| pair | events per worker CPU second, on | off | on / off | load average at start, on / off |",
        "|---|---:|---:|---:|---|",
        *(f"| {i} | {rate(pair['on']['per_cpu_s'])} | {rate(pair['off']['per_cpu_s'])} | {ratio(pair):.2f} | "
          f"{pair['on']['load'][0]:.2f} / {pair['off']['load'][0]:.2f} |" for i, pair in enumerate(pairs, start=1)),
        "",
        f"Events per worker CPU second, with / without (median of the pairs): {median:.2f}; worker CPU per event "
        f"with the stage: {1 / median:.2f}x.",
        "",
    ])
