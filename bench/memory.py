"""Bytes per tracking ID in the journeys state and per remembered event id; bytes per remembered customer.

    python -m bench.memory [--ids 1000000] [--typical 100000]
    python -m bench.memory --case customers1 --n 100000 --unit traced   (one case: 1 order per customer)

Runs in its own interpreter. Builds journeys the way the journeys agent does (orjson-decoded
events -> `streams.core.events` rows -> `Journey.admit` -> `to_row()`), and keeps the rows
in a dict keyed by tracking ID, which is what Faust's in-memory table store holds. Memory is
measured twice: tracemalloc (bytes Python allocated for the objects) and the RSS delta (what the
process really grew by, allocator overhead included). Prints one JSON object.

- base: N ids with one impression each (1 touchpoint, 1 remembered id)
- typical: the benchmark's event mix, all events of each visitor (touchpoints, ids, nothing pending)
- ids: one impression plus EXTRA_IDS more remembered ids per tracking ID (leads absorbed, then
  attributed, so nothing but their ids stays): the marginal bytes per remembered id
- touches: one impression plus EXTRA_TOUCHES more impressions: the marginal bytes per touchpoint
  (its remembered id included)
- customers1 / customers3: lifetime-value customers (`ltv-customers` table) with 1 / 3 orders each, built as
  the ltv-customers agent builds them (the journeys stage's order records, UUID event ids, decoded from bytes
  -> `CustomerOrder.from_record` -> `absorb` -> `to_row()`), kept in a dict under their table key; also the
  changelog record (key + JSON value) per customer
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

from bench.data import CHANNELS, EventSource
from streams.config import Settings
from streams.core.events import from_row, validate
from streams.core.journeys import Journey, Retention, seq_of
from streams.core.ltv import CustomerOrder, absorb

EXTRA_IDS = 20
EXTRA_TOUCHES = 10
SETTINGS = Settings()
RETENTION = Retention.of(SETTINGS)
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
            journey.admit(item, seq_of(offset, position), RETENTION)
        journey.pending.clear()  # conversions attributed: only their ids stay
        touches += len(journey.touches)
        ids += len(journey.touches) + len(journey.ids)
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


CUSTOMER_CASES = {"customers1": 1, "customers3": 3}  # case -> orders per customer


def customer_orders(n: int, orders: int) -> list[tuple[bytes, list[bytes]]]:
    """(customer_id, the journeys stage's records of their orders) for n customers, one channel each."""
    import random
    import uuid

    rng = random.Random(13)
    out = []
    for i in range(n):
        channel = CHANNELS[i % len(CHANNELS)]
        records = [orjson.dumps({
            "p": i % 8, "seq": i * 10 + j, "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ts": T0 + i + j * 86_400_000, "revenue": 100.0, "gross_profit": 40.0, "new_customer": j == 0,
            "credits": [[channel, 1.0]],
        }) for j in range(orders)]
        out.append((f"customer-{i:010d}".encode(), records))
    return out


def measure_customers(kind: str, n: int, traced: bool) -> dict[str, Any]:
    """Remembered customers as the ltv-customers agent keeps them: bytes each, and their changelog record."""
    from streams.kafka.partitioner import partition_of
    from streams.stages.ltv import customer_key

    prepared = customer_orders(n, CUSTOMER_CASES[kind])
    retention = SETTINGS.customer_retention_ms
    gc.collect()
    if traced:
        tracemalloc.start()
    rss_before = rss_bytes()
    before = tracemalloc.get_traced_memory()[0]
    table: dict[str, list[Any]] = {}
    for customer_id, records in prepared:
        key = customer_key(partition_of(customer_id.decode(), 8), customer_id.decode())
        customer = None
        for record in records:
            result = absorb(customer, CustomerOrder.from_record(orjson.loads(record)), retention)
            customer = result.customer or customer
        table[key] = customer.to_row()  # type: ignore[union-attr]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    rss_after = rss_bytes()
    tracemalloc.stop()
    unit = "traced" if traced else "rss"
    changelog = sum(len(key.encode()) + len(orjson.dumps(row)) for key, row in table.items())
    return {
        "kind": kind,
        "customers": len(table),
        "orders_per_customer": CUSTOMER_CASES[kind],
        f"{unit}_bytes_per_customer": ((after - before) if traced else (rss_after - rss_before)) / len(table),
        "changelog_bytes_per_customer": changelog / len(table),
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
    for kind in CUSTOMER_CASES:
        out[kind] = {}
        for unit in ("traced", "rss"):
            progress(f"memory: {kind} lifetime-value customers for {typical:,} customers ({unit}) ...")
            argv = [sys.executable, "-m", "bench.memory", "--case", kind, "--n", str(typical), "--unit", unit]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[1:])} failed:\n{result.stderr[-2000:]}")
            out[kind].update(orjson.loads(result.stdout.strip().splitlines()[-1]))
    out["seconds"] = time.monotonic() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000, help="tracking IDs for the base case (RSS)")
    parser.add_argument("--typical", type=int, default=100_000, help="tracking IDs for the other cases")
    parser.add_argument("--case", choices=("base", "typical", "ids", "touches", *CUSTOMER_CASES),
                        help="measure one case only")
    parser.add_argument("--n", type=int, default=100_000, help="tracking IDs for --case")
    parser.add_argument("--unit", choices=("traced", "rss"), default="traced", help="what --case measures")
    args = parser.parse_args()
    if args.case in CUSTOMER_CASES:
        result = measure_customers(args.case, args.n, args.unit == "traced")
    elif args.case:
        result = measure(args.case, args.n, args.unit == "traced")
    else:
        result = run(args.ids, args.typical, lambda text: print(text, file=sys.stderr, flush=True))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
