"""Live load for the lag measurement: events with ts = now at a steady rate, and when each was sent.

    python -m bench.live_producer BOOTSTRAP RATE DURATION_S SHAPE SEED WINDOW_MS OUT_FILE

Every TICK_S it makes the tick's share of RATE events (ts = the tick's wall clock), sends them as one
message each (SHAPE "single", keyed by tracking ID) or as one JSON array per topic ("batched"), and
notes per tick: the send time, the touchpoints per (channel, window) and the conversions per window.
OUT_FILE gets {"ticks": [[t, {"channel|window": n}, {"window": n}], ...], "sent", "seconds"}.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import orjson

from bench.data import EventSource, live_ticks
from streams.kafka.topics import make_producer

TICK_S = 0.02


async def produce(bootstrap: str, rate: float, duration_s: float, shape: str, seed: int, window_ms: int,
                  out_file: str) -> None:
    source = EventSource(seed, prefix=f"live{seed}-")
    producer = make_producer(bootstrap, linger_ms=5)
    await producer.start()
    ticks: list[list[Any]] = []
    sent = 0
    futures: list[asyncio.Future[Any]] = []
    try:
        started = time.monotonic()
        counts = live_ticks(source, rate, TICK_S)
        tick = 0
        while True:
            due = started + tick * TICK_S
            if due - started >= duration_s:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            ts = int(now * 1000)
            window = ts - ts % window_ms
            touches: Counter[str] = Counter()
            conversions = 0
            batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for _ in range(next(counts)):
                topic, event = source.next_event(ts)
                if topic in ("impressions", "clicks"):
                    touches[f"{event['channel']}|{window}"] += 1
                elif topic in ("leads", "orders"):
                    conversions += 1
                if shape == "single":
                    key = (event.get("tracking_id") or event["channel"]).encode()
                    futures.append(await producer.send(topic, orjson.dumps(event), key=key))
                else:
                    batches[topic].append(event)
                sent += 1
            for topic, events in batches.items():
                futures.append(await producer.send(topic, orjson.dumps(events)))
            ticks.append([now, dict(touches), {str(window): conversions} if conversions else {}])
            if len(futures) > 5000:
                await asyncio.gather(*futures)
                futures.clear()
            tick += 1
        await asyncio.gather(*futures)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    with open(out_file, "wb") as out:
        out.write(orjson.dumps({"ticks": ticks, "sent": sent, "seconds": seconds}))


def main() -> None:
    bootstrap, rate, duration, shape, seed, window_ms, out_file = sys.argv[1:8]
    asyncio.run(produce(bootstrap, float(rate), float(duration), shape, int(seed), int(window_ms), out_file))


if __name__ == "__main__":
    main()
