"""Bytes per tracking ID in the journeys state and per remembered event id.

    python -m bench.memory [--ids 1000000] [--typical 100000]

Runs in its own interpreter. Builds journeys the way the journeys agent does (orjson-decoded
events -> `streams.events` rows -> `Journey.admit` / `add_touch` -> `to_row()`), and keeps the rows
in a dict keyed by tracking ID, which is what Faust's in-memory table store holds. Memory is
measured twice: tracemalloc (bytes Python allocated for the objects) and the RSS delta (what the
process really grew by, allocator overhead included). Prints one JSON object.

- base: N ids with one impression each (1 touchpoint, 1 remembered id)
- typical: the benchmark's event mix, all events of each visitor (touchpoints, ids, nothing pending)
- ids: one impression plus EXTRA_IDS more remembered ids per tracking ID (leads absorbed, then
  attributed, so nothing but their ids stays): the marginal bytes per remembered id
- touches: one impression plus EXTRA_TOUCHES more impressions: the marginal bytes per touchpoint
  (its remembered id included)
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from bench.data import EventSource
from streams.config import Settings
from streams.events import Touch, from_row, validate
from streams.journeys import Admission, Journey, event_ids, seq_of

EXTRA_IDS = 20
EXTRA_TOUCHES = 10
SETTINGS = Settings()
T0 = 1_763_800_000_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def touch_row(tid: str, serial: int, ts: int) -> list[Any]:
    return ["i", f"e{serial}", ts, tid, "google_ads", "brand", None, 0.0]


def lead_row(tid: str, serial: int, ts: int) -> list[Any]:
    return ["l", f"e{serial}", ts, tid, None]


def validated(events: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
    """Contract-shaped events -> the normalised rows the intake sends on (validated, as in the engine)."""
    rows = []
    for topic, event in events:
        result = validate(event, topic, SETTINGS)
        assert not isinstance(result, str), result
        rows.append(list(result))
    return rows


def journeys_of(kind: str, n: int) -> Iterator[tuple[str, list[list[Any]]]]:
    """(tracking ID, its normalised event rows) for n tracking IDs of one configuration."""
    if kind == "typical":
        source = EventSource(seed=11, prefix="m")
        for _ in range(n):
            tid, events = source.whole_journey(T0)
            yield tid, validated(events)
        return
    serial = 0
    for i in range(n):
        tid = f"t{i:09d}"
        serial += 1
        rows = [touch_row(tid, serial, T0 + i)]
        extra, make = (EXTRA_IDS, lead_row) if kind == "ids" else (EXTRA_TOUCHES, touch_row)
        if kind in ("ids", "touches"):
            for j in range(extra):
                serial += 1
                rows.append(make(tid, serial, T0 + i + j + 1))
        yield tid, rows


def measure(kind: str, n: int, traced: bool) -> dict[str, Any]:
    """Build the table rows for n tracking IDs and report the memory they take.

    Each tracking ID's events are decoded from bytes inside the measured span, as the journeys agent
    decodes its messages: the strings a row keeps (channel, campaign, event id) are counted."""
    prepared = [(tid.encode(), orjson.dumps(rows)) for tid, rows in journeys_of(kind, n)]
    gc.collect()
    if traced:
        tracemalloc.start()
    rss_before = rss_bytes()
    before = tracemalloc.get_traced_memory()[0]
    table: dict[str, list[Any]] = {}
    touches = ids = 0
    for offset, (tid, encoded) in enumerate(prepared):
        journey = Journey()
        for position, row in enumerate(orjson.loads(encoded)):
            item = from_row(row)
            admission = journey.admit(event_ids(item), seq_of(offset, position), item.ts)
            if admission is Admission.NEW and isinstance(item, Touch):
                journey.add_touch(item)
        journey.pending.clear()  # conversions attributed: only their ids stay
        touches += len(journey.touches)
        ids += len(journey.seen)
        table[tid.decode()] = journey.to_row()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    rss_after = rss_bytes()
    tracemalloc.stop()
    count = len(table)
    unit = "traced" if traced else "rss"
    return {
        "kind": kind,
        "tracking_ids": count,
        "touches_per_id": touches / count,
        "ids_per_id": ids / count,
        f"{unit}_bytes_per_id": ((after - before) if traced else (rss_after - rss_before)) / count,
    }


def run(ids: int, typical: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every case in a fresh interpreter, so that one case's freed memory does not hide the next's RSS;
    tracemalloc (which costs memory itself) and RSS in separate runs."""
    started = time.monotonic()
    out: dict[str, Any] = {}
    for kind, n in (("base", ids), ("typical", typical), ("ids", typical), ("touches", typical)):
        out[kind] = {}
        for unit in ("traced", "rss"):
            # tracemalloc is slow: the large base case by RSS only, the marginal cases on fewer IDs
            count = n if unit == "rss" else typical if kind in ("base", "typical") else typical // 2
            progress(f"memory: {kind} journeys for {count:,} tracking IDs ({unit}) ...")
            argv = [sys.executable, "-m", "bench.memory", "--case", kind, "--n", str(count), "--unit", unit]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[1:])} failed:\n{result.stderr[-2000:]}")
            out[kind].update(orjson.loads(result.stdout.strip().splitlines()[-1]))
            out[kind][f"{unit}_n"] = count
    base, more_ids, more_touches = out["base"], out["ids"], out["touches"]
    for unit in ("traced", "rss"):
        field = f"{unit}_bytes_per_id"
        out[f"{unit}_bytes_per_remembered_id"] = (more_ids[field] - base[field]) / EXTRA_IDS
        out[f"{unit}_bytes_per_touch"] = (more_touches[field] - base[field]) / EXTRA_TOUCHES
    out["seconds"] = time.monotonic() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000, help="tracking IDs for the base case (RSS)")
    parser.add_argument("--typical", type=int, default=100_000, help="tracking IDs for the other cases")
    parser.add_argument("--case", choices=("base", "typical", "ids", "touches"), help="measure one case only")
    parser.add_argument("--n", type=int, default=100_000, help="tracking IDs for --case")
    parser.add_argument("--unit", choices=("traced", "rss"), default="traced", help="what --case measures")
    args = parser.parse_args()
    if args.case:
        result = measure(args.case, args.n, args.unit == "traced")
    else:
        result = run(args.ids, args.typical, lambda text: print(text, file=sys.stderr, flush=True))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
