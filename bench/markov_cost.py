"""What the Markov stage costs (issue #20): the engine measure of bench/engine_run.py, with and without it.

    python -m bench.run --only markov-cost [--quick] [--no-write]

One dataset (bench/data.py, batched, 4 partitions, the realistic mix) is pre-produced identically onto two fresh
brokers; one `attribution worker` runs on each at the same time, one with the Markov stage (`MARKOV_STAGE=on`,
the default) and one with `MARKOV_STAGE=off`, so that the machine's other load falls on both alike. Each is
timed, and its CPU counted, until `metrics.channel` shows every event. `PATH_TIMEOUT` is 5 minutes in both, so
that null paths end within the hour of event time the data spans (with the default 1d none would, and their
work would be left out of the figure). Per worker CPU second is the figure to compare: the run without the
stage finishes first and the other then has the CPU to itself.
"""

from __future__ import annotations

import asyncio
import os
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


async def one_run(run: Run, label: str, dataset: data.Dataset, stage: str, broker: Any) -> dict[str, Any]:
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


async def measure(run: Run, n: int, start_ms: int, span_ms: int) -> dict[str, Any]:
    dataset = data.build(n, "batched", start_ms, span_ms, seed=12, partitions=PARTITIONS, order_rate=ORDER_RATE)
    brokers = [await prepare(run, f"markov-{stage}", dataset) for stage in ("on", "off")]
    runs = await asyncio.gather(*(one_run(run, f"markov-{stage}", dataset, stage, broker)
                                  for stage, broker in zip(("on", "off"), brokers, strict=True)))
    return {"events": dataset.expected.events, "runs": list(runs)}


def section(results: dict[str, Any]) -> str:
    on, off = (next(r for r in results["runs"] if r["stage"] == stage) for stage in ("on", "off"))
    return "\n".join([
        "## Markov stage cost",
        "",
        "`python -m bench.run --only markov-cost` (bench/markov_cost.py): one worker with `MARKOV_STAGE=on` and one "
        "with `off`, at the same time, each on its own broker with the same "
        f"{results['events']:,} events (batched, 4 partitions, PATH_TIMEOUT={PATH_TIMEOUT}).",
        "",
        "| MARKOV_STAGE | events/s until metrics.channel showed all | events per worker CPU second | "
        "load average at start / end |",
        "|---|---:|---:|---|",
        *(f"| {r['stage']} | {rate(r['rate'])} | {rate(r['per_cpu_s'])} | {r['load'][0]:.2f} / {r['load'][1]:.2f} |"
          for r in (on, off)),
        "",
        f"Per worker CPU second, with / without: {on['per_cpu_s'] / off['per_cpu_s']:.2f}.",
        "",
    ])
