"""End-to-end benchmark of the engine on a real Apache Kafka broker (`make bench`).

    python -m bench.run [--quick] [--profile] [--only single,batched,lag,scale,scale-out,memory,ltv-cost,state]
                        [--wait-load SECONDS]

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
4b. scale-out: the same batched data on 8 partitions, 1, 2 and 4 workers, each run on a fresh three-broker
   cluster (replication 3): events per CPU second of all the workers together, and the brokers' CPU
   (bench/scale_out.py; two rounds, one with --quick).
5. memory: bytes per tracking ID and per remembered event id, and per remembered customer of the
   lifetime-value stage (bench/memory.py).
6. ltv-cost: the throughput measure of 1./2. (batched), with the lifetime-value stage and with LTV_STAGE=off, on
   the same data, for the realistic mix and an order-heavy one (bench/ltv_cost.py).
7. state: a real worker's state at 100k and 1M typical visitors (10k and 100k with --quick), in memory and
   in RocksDB: RSS, disk and journeys changelog bytes per visitor, and the time from a kill -9 to the first
   attribution of the restarted worker (bench/state.py).
8. with --profile, after the rest: py-spy samples a worker through a throughput run of each shape and a
   5,000/s lag phase (bench/profile.py says where its time goes).

Compare figures only within one run (ratios): the machine is shared. Before measuring it waits (up to
--wait-load seconds) for the 1-minute load average to fall below --max-load, and notes the load.
A full run writes its tables to bench/RESULTS.md (sections "Engine end to end", "Scale-out on a three-broker
cluster", "Memory", "Engine profile";
the others are kept); --quick, --only, --scale and experiments only print theirs unless --write. Every
process it starts is stopped in `finally`, brokers included; it gives up with a message naming what it saw
when a phase times out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import data
from bench.engine_run import Run, Sizes
from bench.processes import ROOT, STARTED, BenchError, machine, say, wait_for_quiet
from bench.profile import summarize as summarize_profile
from bench.scale_out import worker_counts
from tests.integration.services import fetch_kafka

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTIONS = ("## Engine end to end", "## Scale-out on a three-broker cluster", "## Lifetime-value stage cost",
            "## Memory", "## State at scale", "## Engine profile")
DEFAULT_SCALE_RUNS = "1:0,2:0,1:1"  # workers:intake processes, in order (0: each worker reads the inputs itself)
STATE_VISITORS = (100_000, 1_000_000)  # bench/state.py's V (--quick: a tenth; --scale multiplies them)
STATE_STORES = ["memory", "rocksdb"]


def state_visitors(quick: bool, scale: float) -> list[int]:
    return [max(1, int(v * scale / (10 if quick else 1))) for v in STATE_VISITORS]


# --- the whole run ---------------------------------------------------------------------------------------


async def run_all(run: Run) -> None:
    sizes, results, now_ms = run.sizes, run.results, int(time.time() * 1000)
    start_ms, span_ms = now_ms - 70 * 60_000, 60 * 60_000  # an hour of event time ending 10 min ago
    wanted = set(run.args.only.split(",")) if run.args.only else {"single", "batched", "lag", "scale", "scale-out",
                                                                  "memory", "ltv-cost", "state"}

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

    if "scale-out" in wanted:
        from bench.scale_out import measure as measure_scale_out

        results["scale_out"] = await measure_scale_out(run, sizes.scale, start_ms, span_ms)

    if "ltv-cost" in wanted:
        from bench.ltv_cost import measure as measure_ltv_cost

        results["ltv_cost"] = await measure_ltv_cost(run, sizes.batched, start_ms, span_ms, run.args.ltv_rounds,
                                                     not run.args.ltv_sequential)

    if "markov-cost" in wanted:  # not part of the default set: run it by name
        from bench.markov_cost import measure as measure_markov_cost
        from bench.markov_cost import section as markov_section

        results["markov_cost"] = await measure_markov_cost(run, sizes.batched, start_ms, span_ms)
        say(markov_section(results["markov_cost"]))

    if "memory" in wanted:
        from bench.memory import run as measure_memory

        results["memory"] = await asyncio.to_thread(measure_memory, sizes.memory_ids, sizes.memory_typical, say)

    if "state" in wanted:
        from bench.state import run as measure_state

        visitors = state_visitors(run.args.quick, run.args.scale)
        say(f"state: {', '.join(f'{v:,}' for v in visitors)} visitors, stores {', '.join(STATE_STORES)} "
            "(progress on stderr) ...")
        results["state"] = await measure_state(visitors, STATE_STORES, run.tmp, run.procs)

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
    parser.add_argument("--quick", action="store_true", help="smaller N, shorter phases (~3 minutes, more with state)")
    parser.add_argument("--profile", action="store_true", help="also profile the worker with py-spy")
    parser.add_argument("--only", default="", help="comma-separated subset of: single,batched,lag,scale,scale-out,"
                        "memory,ltv-cost,state; or markov-cost (another name, e.g. 'profile' with --profile, runs none "
                        "of them)")
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
    parser.add_argument("--scale-out-workers", type=worker_counts, default=worker_counts("1,2,4"),
                        help="scale-out: worker counts, in order, the first the baseline (default 1,2,4)")
    parser.add_argument("--scale-out-rounds", type=int, default=None,
                        help="scale-out: rounds of every count, alternating their order (default 2, with --quick 1)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load is below this")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="seconds to wait for that (default 600, with --quick 60; 0: do not wait)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this (for trying it out)")
    parser.add_argument("--worker-log-level", default="WARNING", help="LOG_LEVEL of the workers (default WARNING)")
    parser.add_argument("--worker-fetch-wait-ms", type=int, default=None,
                        help="experiment: run the workers with streams.stages.topology.FETCH_MAX_WAIT_MS set to this")
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
               or args.scale_runs != scale_runs(DEFAULT_SCALE_RUNS)
               or args.scale_out_workers != worker_counts("1,2,4") or args.scale_out_rounds is not None)
    if args.no_write or (partial and not args.write):
        if not args.no_write:
            say(f"not writing {RESULTS.relative_to(ROOT)} for a partial or experimental run (--write to force)")
    else:
        write_sections(RESULTS, sections)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
