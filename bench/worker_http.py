"""What the benchmark reads from each worker's web server: /metrics (events processed, the
attribution_event_lag_seconds histogram) and /api/v1/state (which journey partitions it owns)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson

from bench.processes import BenchError
from tests.integration.services import WorkerProcess

# --- the worker's /metrics ----------------------------------------------------------------------------


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:  # noqa: S310
            return response.read().decode()
    except OSError:
        return ""


def events_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("attribution_events_total{"))


def lag_buckets(text: str) -> dict[float, float]:
    """Cumulative bucket counts of attribution_event_lag_seconds, by upper bound."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("attribution_event_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the quantile."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1]


async def journeys_owned(workers: list[WorkerProcess], partitions: int, timeout: float) -> None:
    """Wait until the workers own every journey partition between them (`/api/v1/state`)."""
    deadline = time.monotonic() + timeout

    def owned(worker: WorkerProcess) -> list[int]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/api/v1/state", timeout=2) as answer:  # noqa: S310
                return list(orjson.loads(answer.read())["journey_partitions"])
        except OSError:
            return []

    while len({p for owns in await asyncio.gather(*(asyncio.to_thread(owned, w) for w in workers)) for p in owns}
              ) < partitions:
        if time.monotonic() > deadline:
            raise BenchError(f"the workers did not own all {partitions} journey partitions within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def scrape_all(workers: list[WorkerProcess]) -> list[str]:
    return list(await asyncio.gather(*(asyncio.to_thread(scrape, w.web_port) for w in workers)))

