"""Baseline 2: the naive way to write this in Faust, as its own small app (its own app id).

    python -m bench.naive_app BOOTSTRAP SHAPE PARTITIONS WEB_PORT PROGRESS_FILE

One agent over the five input topics; every event becomes a `faust.Record` and makes one table
update (`visits[tracking_id or channel] += 1`, a changelog record each). With SHAPE "single" the
topic's value type is the Record itself; with "batched" the value is raw bytes, decoded with orjson
and turned into one Record per element. Every 0.25 s it writes {"events", "first", "last", "cpu_first",
"cpu_last"} (wall clock and process CPU time at the first and the latest event) to PROGRESS_FILE;
the benchmark stops it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import faust
import orjson

from bench.data import INPUT_TOPICS


class InputEvent(faust.Record, serializer="json"):
    event_id: str
    type: str
    ts: int
    tracking_id: str | None = None
    channel: str | None = None
    campaign: str | None = None
    affiliate_id: str | None = None
    cost: float | None = None
    order_id: str | None = None
    revenue: float | None = None
    currency: str | None = None
    customer_id: str | None = None
    promo_code: str | None = None
    margin: float | None = None
    amount: float | None = None


def build(bootstrap: str, shape: str, partitions: int, web_port: int, progress_file: str) -> faust.App:
    app = faust.App(
        f"bench-naive-{shape}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_port=web_port,
        web_bind="127.0.0.1",
        autodiscover=False,
        datadir=os.path.dirname(progress_file) + f"/naive-{shape}-data",
        logging_config=None,
        loghandlers=[],
    )
    visits = app.Table("visits", default=int, partitions=partitions)
    progress = {"events": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}

    def seen(events: int) -> None:
        progress["events"] += events
        progress["last"], progress["cpu_last"] = time.time(), time.process_time()
        if not progress["first"]:
            progress["first"], progress["cpu_first"] = progress["last"], progress["cpu_last"]

    if shape == "single":
        topic = app.topic(*INPUT_TOPICS, value_type=InputEvent)

        @app.agent(topic, name="naive")
        async def naive(stream: Any) -> None:
            async for event in stream:
                visits[event.tracking_id or event.channel] += 1
                seen(1)
    else:
        topic = app.topic(*INPUT_TOPICS, value_type=bytes, value_serializer="raw")

        @app.agent(topic, name="naive")
        async def naive(stream: Any) -> None:
            async for value in stream:
                events = orjson.loads(value)
                for data in events:
                    event = InputEvent(**data)
                    visits[event.tracking_id or event.channel] += 1
                seen(len(events))

    @app.timer(0.25)
    async def report() -> None:
        quiet_logs()
        tmp = progress_file + ".tmp"
        with open(tmp, "wb") as out:
            out.write(orjson.dumps(progress))
        os.replace(tmp, progress_file)

    return app


def quiet_logs() -> None:
    """mode's worker leaves the root logger at DEBUG even with -l warning (DESIGN.md, Known traps)."""
    for name in ("", "faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    bootstrap, shape, partitions, web_port, progress_file = sys.argv[1:6]
    app = build(bootstrap, shape, int(partitions), int(web_port), progress_file)
    sys.argv = [sys.argv[0], "worker"]
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    quiet_logs()
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
