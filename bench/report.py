"""The benchmark's figures as Markdown sections of bench/RESULTS.md (other sections are kept)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

LAG_TARGET_S = 1.5
EVENTS_PER_WEEK_AT_1K = 7 * 86_400 * 1_000


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value / 1000:,.0f}k"
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.1f}x"


def seconds(value: float | None) -> str:
    if value == float("inf"):
        return "not shown in time"
    return "-" if value is None else f"{value:.2f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def render(results: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    sections: dict[str, str] = {}
    head = (
        f"Machine: {info['nproc']} CPUs (nproc {info['nproc']}), {info['cpu']}, Linux {info['kernel']}, "
        f"Python {info['python']}; broker, worker(s), load generators and the benchmark share it.  \n"
        f"Date: {info['date']}. 1-minute load average {info['load_before']:.2f} when measuring began "
        f"(after waiting {info['waited_s']:.0f}s for < {args.max_load}), {info['load_after']:.2f} at the end; "
        f"the machine is shared with other engineers' test runs, so compare only within this run (ratios). "
        f"{'`--quick` run. ' if info.get('quick') else ''}Whole run: {info['seconds'] / 60:.1f} min."
        + (f" **Experiment: workers ran with FETCH_MAX_WAIT_MS = {args.worker_fetch_wait_ms}.**"
           if args.worker_fetch_wait_ms is not None else "")
    )
    if any(key in results for key in ("single", "batched", "lag", "scale")):
        sections["## Engine end to end"] = engine_section(results, head, args)
    if results.get("scale_out"):
        from bench.scale_out import HEADING
        from bench.scale_out import section as scale_out_section

        sections[HEADING] = scale_out_section(results["scale_out"], head)
    if results.get("ltv_cost"):
        from bench.ltv_cost import section as ltv_cost_section

        sections["## Lifetime-value stage cost"] = ltv_cost_section(results["ltv_cost"], head)
    if "memory" in results:
        sections["## Memory"] = memory_section(results["memory"], info)
    if results.get("state"):
        sections["## State at scale"] = state_section(results["state"], head)
    if results.get("profile"):
        sections["## Engine profile"] = profile_section(results["profile"], info)
    return sections


def state_section(state: dict[str, Any], head: str) -> str:
    from bench.state import table

    return "\n".join([
        "## State at scale",
        "",
        "`python -m bench.state` (run by `make bench`): one worker at the contract's defaults fed V typical visitors "
        "(~6.9 events each), per store: RSS over the idle worker's, bytes on disk (RocksDB) and in the journeys "
        "changelog per visitor, and from a kill -9 to the restarted worker's first attribution (`restart s`; "
        "`worker started s`: past the wait for the killed member to leave the group; `recovered s`: Faust's "
        "\"Recovery complete\"). The module's docstring says exactly how.",
        "",
        head,
        "",
        table(state),
        "",
    ])


def engine_section(results: dict[str, Any], head: str, args: argparse.Namespace) -> str:
    out = [
        "## Engine end to end",
        "",
        "`make bench` (`python -m bench.run`; `--quick` for a smaller N): Apache Kafka 4.1.1 (one KRaft node, "
        "started by the benchmark on a free port with a temp data dir), `attribution worker` as a subprocess "
        "(`KAFKA_BOOTSTRAP`, `TOPIC_PARTITIONS=4`, `LOG_LEVEL=WARNING`, in-process store), input pre-produced "
        "by `bench/data.py`: ~86% impressions, ~11% clicks, ~2% leads and orders, 1% spend rows, "
        "~6.5 events per tracking ID, ts spread over an hour.",
        "",
        head,
        "",
    ]
    single, batched = results.get("single"), results.get("batched")
    if single or batched:
        out += [
            "### Throughput, one worker, 4 partitions",
            "",
            "Events/s by the wall clock, and events per CPU second of the consuming process (robust to the other "
            "load on this shared machine: the processes did not all get the same share of the 2 cores).",
            "",
            "| input | events | raw aiokafka + orjson | naive Faust agent | engine, end to end | engine's journeys "
            "stage | engine / naive | engine / raw | per CPU second: raw / naive / engine | engine / naive per CPU "
            "second | target (wall clock) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, part, factor, other in (("one event per message", single, 2, None),
                                          ("batched, 100 per message", batched, 20, single)):
            if not part:
                continue
            e, naive, raw = part["engine"], part["naive"], part["raw"]
            also = f" ({ratio(e['rate'], other['naive']['rate'])} the naive agent on one event per message)" \
                if other else ""
            out.append(
                f"| {name} | {e['events']:,} | {rate(raw['rate'])} | {rate(naive['rate'])} | {rate(e['rate'])} | "
                f"{rate(e['absorb_rate'])} | {ratio(e['rate'], naive['rate'])}{also} | {e['rate'] / raw['rate']:.3f} | "
                f"{rate(raw.get('per_cpu_s'))} / {rate(naive.get('per_cpu_s'))} / {rate(e.get('per_cpu_s'))} | "
                f"{ratio(e.get('per_cpu_s'), naive.get('per_cpu_s'))} | >= {factor}x naive: "
                f"{verdict(e['rate'] >= factor * naive['rate'])} |")
        out += [
            "",
            "All figures are events/s. *Engine, end to end*: from the intake's first output (the first message on "
            "its journeys topic, polled every 0.1 s) until `metrics.channel` shows every touchpoint (sum of "
            "impressions + clicks over the latest message per channel and window) and every conversion (sum of "
            "leads + orders); this includes, once at the end, the conversions' 2 s grace and the metrics' 1 s publish "
            "interval. *Journeys stage*: the rate at which the journeys stage absorbed events between 10% and 90% "
            "of them (its `attribution_events_total`, scraped once a second). Raw and naive: from their first "
            "event to their last.",
            "",
            "Where the engine's time went, seconds from the intake's first output (start-up: from launching the "
            "worker process to that output; intake: until the group had committed every input message, committed "
            "once a second):",
            "",
            "| run | start-up | intake read all input | journeys absorbed all | metrics show all touchpoints | "
            "metrics show everything | worker CPU cores | broker CPU cores | other processes' CPU cores | "
            "records the engine wrote per input event (journeys changelog) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, part in (("one event per message", single), ("batched", batched)):
            if part:
                e = part["engine"]
                written = {t: n for t, n in (e.get("records_written") or {}).items() if not t.startswith("bench-")}
                per_event = f"{sum(written.values()) / e['events']:.2f} " \
                    f"({written.get('attribution-journeys-changelog', 0) / e['events']:.2f})" if written else "-"
                out.append(f"| {name} | {e['startup_s']:.1f} | {seconds(e['intake_s'])} | {seconds(e['absorbed_s'])} "
                           f"| {e['touch_seconds']:.2f} | {e['seconds']:.2f} | {e['cpu']['workers']:.2f} | "
                           f"{e['cpu']['broker']:.2f} | {e['cpu']['others']:.2f} | {per_event} |")
        if single and single["naive"].get("capped") or batched and batched["naive"].get("capped"):
            out += ["", "The naive agent was stopped at its time cap in at least one shape; its rate is over the "
                        "events it processed."]
        out.append("")
    if results.get("lag"):
        out += [
            "### Lag at a steady rate (ts = now, default ATTRIBUTION_GRACE 2s)",
            "",
            "Same worker, after the batched throughput run, one phase after the other. External: per event, from "
            "the producer's send to the first `metrics.channel` message whose counts include it (touchpoints per "
            "channel and window; conversions per window over all channels, where their credit lands); the metric "
            "topic is published at most once a second per key, so ~0.5 s of any figure is that interval. *Not shown "
            f"in time*: not within {results['lag'][0]['drain_max_s']:.0f} s after the phase's last send (the worker "
            "fell behind). Engine: `attribution_event_lag_seconds` from the worker's /metrics over the same span "
            "(event ts to processed; interpolated in its buckets as Prometheus' `histogram_quantile` does).",
            "",
            "| input | events/s asked / achieved | touchpoints p50 s | touchpoints p99 s | conversions p50 s | "
            "conversions p99 s | engine histogram p50 s | engine histogram p99 s | events not shown in time | "
            f"worker CPU | broker CPU | target: touchpoint p99 < {LAG_TARGET_S} s at {args.rate:,.0f}/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for lag in results["lag"]:
            ok: bool | None = lag["touch_p99"] is not None and lag["touch_p99"] < LAG_TARGET_S \
                and not lag["missing_touches"]
            if lag.get("target_rate", args.rate) != args.rate:
                ok = None  # not the target's rate: for reading the engine's latency where it keeps up
            out.append(
                f"| {'one event per message' if lag['shape'] == 'single' else 'batched'} | "
                f"{lag.get('target_rate', args.rate):,.0f} / {lag['rate']:,.0f} | "
                f"{seconds(lag['touch_p50'])} | {seconds(lag['touch_p99'])} | {seconds(lag['conversion_p50'])} | "
                f"{seconds(lag['conversion_p99'])} | {seconds(lag['engine_p50'])} | {seconds(lag['engine_p99'])} | "
                f"{lag['missing_touches'] + lag['missing_conversions']} | {lag['cpu']['workers']:.2f} | "
                f"{lag['cpu']['broker']:.2f} | {verdict(ok)} |")
        out.append("")
    if results.get("scale"):
        scale = results["scale"]
        one = next((e for e in scale if e["workers"] == 1 and not e.get("intakes")), scale[0])
        out += [
            f"### Scaling: 8 partitions, {scale[0]['shape']} input, {one['events']:,} events",
            "",
            "| workers (+ intake processes) | events/s end to end | until every touchpoint shows | journeys stage | "
            "vs one worker (end to "
            "end) | vs one worker (touchpoints) | vs one worker (journeys stage) | workers' CPU cores | events per "
            "worker CPU second | broker CPU cores | other processes' CPU cores |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in scale:
            processes = f"{e['workers']} + {e['intakes']}" if e.get("intakes") else str(e["workers"])
            out.append(
                f"| {processes} | {rate(e['rate'])} | {rate(touch_rate(e))} | {rate(e['absorb_rate'])} | "
                f"{ratio(e['rate'], one['rate'])} | {ratio(touch_rate(e), touch_rate(one))} | "
                f"{ratio(e['absorb_rate'], one['absorb_rate'])} | {e['cpu']['workers']:.2f} | "
                f"{rate(e.get('per_cpu_s'))} | {e['cpu']['broker']:.2f} | {e['cpu']['others']:.2f} |")
        two = next((e for e in scale if e["workers"] == 2 and not e.get("intakes")), None)
        if two is not None:
            ok = two["rate"] >= 1.6 * one["rate"]
            out += ["", f"Target two workers >= 1.6x one worker: {verdict(ok)} (end to end). *Until every touchpoint "
                    "shows*: events over the time until `metrics.channel` shows every touchpoint, which does not "
                    "include the conversions' grace (the end-to-end time ends with it: a fixed ~3 s, the same for "
                    "one worker and two). *1 + 1*: one worker with `WORKER_INTAKE=off` and one `attribution intake` "
                    "process; the workers' columns count both processes."]
        out.append("")
    return "\n".join(out)


def touch_rate(engine: dict[str, Any]) -> float | None:
    """Events over the seconds until the metric topic showed every touchpoint (no grace in it)."""
    seconds = engine.get("touch_seconds")
    return engine["events"] / seconds if seconds else None


def memory_section(memory: dict[str, Any], info: dict[str, Any]) -> str:
    base, typical = memory["base"], memory["typical"]
    names = {
        "base": "one impression per tracking ID",
        "typical": "the benchmark's journeys (all events of each visitor)",
        "ids": "one impression + 20 more remembered ids",
        "touches": "one impression + 10 more impressions",
    }
    out = [
        "## Memory",
        "",
        "`python -m bench.memory` (run by `make bench`): journeys built as the journeys agent builds them "
        "(events decoded from bytes -> `Journey.admit` -> `to_row()`: packed bytes), kept as rows in a dict keyed "
        "by tracking ID, which is what Faust's in-memory table store holds. Each case in a fresh interpreter; "
        "*tracemalloc*: bytes Python allocated for the objects; *RSS*: what the process grew by (allocator "
        "overhead included; measured without tracemalloc).",
        "",
        f"Date: {info['date']}, {info['nproc']} CPUs, Python {info['python']}.",
        "",
        "| case | tracking IDs (tracemalloc / RSS) | touchpoints per ID | remembered ids per ID | "
        "bytes per tracking ID, tracemalloc | bytes per tracking ID, RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("base", "typical", "ids", "touches"):
        case = memory[kind]
        out.append(f"| {names[kind]} | {case['traced_n']:,} / {case['rss_n']:,} | {case['touches_per_id']:.1f} | "
                   f"{case['ids_per_id']:.1f} | {case['traced_bytes_per_id']:,.0f} | {case['rss_bytes_per_id']:,.0f} |")
    per_id = memory["traced_bytes_per_remembered_id"]
    per_touch = memory["traced_bytes_per_touch"]
    out += [
        "",
        "- **Per remembered event id** (dedup memory: a packed record of its 8-byte hash, sequence and kept-until "
        "in the row): "
        f"**{per_id:,.0f} B** (tracemalloc), {memory['rss_bytes_per_remembered_id']:,.0f} B (RSS).",
        f"- **Per touchpoint** (a packed record of ts, sequence, id hash, kind and name indexes, its id included): "
        f"**{per_touch:,.0f} B** (tracemalloc), {memory['rss_bytes_per_touch']:,.0f} B (RSS).",
        f"- **Per tracking ID**: {base['traced_bytes_per_id']:,.0f} B with one impression; "
        f"**{typical['traced_bytes_per_id']:,.0f} B** for a typical journey of {typical['touches_per_id']:.1f} "
        f"touchpoints ({typical['rss_bytes_per_id']:,.0f} B RSS): 1M visitors ~ "
        f"{typical['traced_bytes_per_id'] * 1e6 / 2**30:.1f} GiB.",
        f"- A week of event ids at 1,000 events/s ({EVENTS_PER_WEEK_AT_1K / 1e6:,.0f}M ids), were each kept for "
        f"DEDUP_WINDOW 7d, at {per_id:,.0f} B each: {EVENTS_PER_WEEK_AT_1K * per_id / 2**30:,.0f} GiB; only order "
        "ids are (README, \"What the engine remembers\"), the others go with their touchpoint or when their window "
        "closes.",
    ]
    if "customers1" in memory:  # the lifetime-value stage's ltv-customers table
        one, three = memory["customers1"], memory["customers3"]
        out.append(
            f"- **Per remembered customer** (lifetime value, `ltv-customers`: key + row + dict slot, one acquiring "
            f"channel, UUID event ids; {one['customers']:,} customers): **{one['traced_bytes_per_customer']:,.0f} B** "
            f"with 1 order ({one['rss_bytes_per_customer']:,.0f} B RSS), {three['traced_bytes_per_customer']:,.0f} B "
            f"with 3 orders; changelog record (key + JSON value) {one['changelog_bytes_per_customer']:,.0f} B / "
            f"{three['changelog_bytes_per_customer']:,.0f} B: 1M customers ~ "
            f"{one['traced_bytes_per_customer'] * 1e6 / 2**30:.2f} GiB.")
    out.append("")
    return "\n".join(out)


def profile_section(profiles: dict[str, Any], info: dict[str, Any]) -> str:
    out = [
        "## Engine profile",
        "",
        "`python -m bench.run --profile`: `py-spy record --gil --threads --rate 200 --nonblocking` on the worker "
        "through a throughput run of each input shape and through a lag phase (one worker, 4 partitions; separate "
        "from the measured runs). "
        "Shares are of samples holding the GIL, i.e. of the worker's Python CPU time. Raw stacks: "
        f"`.run/bench-profile-SHAPE.txt`. Date: {info['date']}.",
        "",
    ]
    for shape, p in profiles.items():
        title = {"single": "throughput, one event per message", "batched": "throughput, batched input",
                 "live": "steady live load, batched input (the lag phase)"}[shape]
        out += [f"### {title} ({p['samples']:,} samples, {rate(p['rate'])} events/s under the profiler)", "",
                "Where the worker's Python time goes, by the outermost project agent or timer on the stack, else "
                "the Faust/aiokafka machinery, else the asyncio loop itself:", "",
                "| part | share |", "|---|---:|",
                *[f"| {name} | {share:.1%} |" for name, share in p["stages"] if share >= 0.005], "",
                *[f"Inside `{parent}` ({n / p['samples']:.1%} of all): "
                  + ", ".join(f"`{name}` {share:.0%}" for name, share in parts) + "." + "\n"
                  for parent, (n, parts) in p["breakdowns"].items() if n],
                "By library (leaf frame): " + ", ".join(f"{name} {share:.0%}" for name, share in p["packages"]),
                "", "By thread: " + ", ".join(f"{name} {share:.0%}" for name, share in p["threads"]), "",
                "| self time | share | | inclusive (project code) | share |", "|---|---:|---|---|---:|"]
        rows = max(len(p["self"]), len(p["project"]))
        for i in range(rows):
            left = p["self"][i] if i < len(p["self"]) else ("", None)
            right = p["project"][i] if i < len(p["project"]) else ("", None)
            out.append(f"| `{left[0]}` | {'' if left[1] is None else f'{left[1]:.1%}'} | | "
                       f"{f'`{right[0]}`' if right[0] else ''} | {'' if right[1] is None else f'{right[1]:.1%}'} |")
        out += ["", "Inclusive, all code (top): " + "; ".join(f"`{n}` {s:.0%}" for n, s in p["inclusive"][:12]), ""]
    return "\n".join(out)


def write_sections(path: Path, sections: dict[str, str]) -> None:
    """Replace each section (from its heading to the next `## `) or append it; keep everything else."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.rstrip("\n").split("\n")
    for heading, body in sections.items():
        start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
        new = body.rstrip("\n").split("\n")
        if start is None:
            lines += ["", *new]
            continue
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = [""] if end < len(lines) else []
        lines[start:end] = new + tail
    path.write_text("\n".join(lines) + "\n")
