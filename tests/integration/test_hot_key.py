"""A hot tracking ID (a bot, a shared cookie) through a real worker (issue #18): its journey row stays bounded,
the worker stays up, and every figure on `metrics.channel` is exact for the countable events.

One tracking ID sends `HOT_KEY_EVENTS` impressions and clicks (default 20,000, far past the 500 touchpoints a
journey keeps; `HOT_KEY_EVENTS=1000000` for the issue's size), the latest few hundred of them sent twice, then
an order. Impressions and clicks are counted by their own `ts` whether or not the journey still holds them; the
repeats count once (a hot journey remembers its latest 500 touchpoints and 5,000 other ids: README, "Hot
keys"); the order is credited to the latest click. The journeys changelog's records for the key stay under
the documented bound (README, "Compact rows").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce
from tests.integration.test_business import uid

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = int(os.environ.get("HOT_KEY_EVENTS", "20000"))
REPEATS = 300
PER_MESSAGE = 500
ROW_BOUND = 400 * 1024  # README: a hot journey's row stays under ~400 KiB
S = 1_000


@pytest.fixture
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


def hot_events(tid: str, channel: str, start: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """EVENTS touches of one tracking ID over ten minutes (every 10th a click), the latest REPEATS sent again."""
    touches = []
    for n in range(EVENTS):
        kind = "click" if n % 10 == 0 else "impression"
        touches.append({"event_id": f"{tid}-{n}", "type": kind, "ts": start + n * 600 * S // EVENTS,
                        "tracking_id": tid, "channel": channel, "campaign": f"c{n % 7}"})
    order = {"event_id": uid("order"), "type": "order", "ts": start + 601 * S, "tracking_id": tid,
             "order_id": uid("oid"), "revenue": 50.0}
    return touches + touches[-REPEATS:], order


async def send_arrays(bootstrap: str, events: list[dict[str, Any]]) -> None:
    for kind, topic in (("impression", "impressions"), ("click", "clicks"), ("order", "orders")):
        of_kind = [e for e in events if e["type"] == kind]
        values = [orjson.dumps(of_kind[i : i + PER_MESSAGE]) for i in range(0, len(of_kind), PER_MESSAGE)]
        if values:
            await produce(bootstrap, topic, values, key=of_kind[0]["tracking_id"].encode())


def totals(records: list[Any], channel: str) -> dict[str, float]:
    """The channel's figures summed over its windows' latest messages."""
    latest: dict[int, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        message = orjson.loads(record.value)
        if message["channel"] == channel:
            latest[message["window_start"]] = message
    return {name: sum(m[name] for m in latest.values()) for name in ("impressions", "clicks", "orders", "revenue")}


async def test_a_hot_tracking_id_keeps_a_bounded_row_and_exact_figures(
    broker: KafkaBroker, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = make_worker(bootstrap=broker.bootstrap, env={"TOPIC_PARTITIONS": "2", "ATTRIBUTION_GRACE": "1s"},
                         name="hot")
    worker.wait_http("/api/v1/state", 90)
    tid, channel = uid("bot"), uid("hot")
    touches, order = hot_events(tid, channel, int(time.time() * 1000) - 20 * 60 * S)
    await send_arrays(broker.bootstrap, touches)
    await send_arrays(broker.bootstrap, [order])
    want = {"impressions": sum(1 for e in touches[:EVENTS] if e["type"] == "impression"),
            "clicks": sum(1 for e in touches[:EVENTS] if e["type"] == "click"), "orders": 1.0, "revenue": 50.0}

    records = await consume_all(broker.bootstrap, "metrics.channel", until=lambda rs: totals(rs, channel) == want,
                                timeout=60 + EVENTS / 500)
    assert totals(records, channel) == want
    assert worker.alive

    key = orjson.dumps(tid)  # the journeys table's key, as Faust encodes it
    rows = [r.value for r in await consume_all(broker.bootstrap, "attribution-journeys-changelog", timeout=10)
            if r.key == key and r.value is not None]
    assert rows, "no changelog record for the hot key"
    assert max(map(len, rows)) < ROW_BOUND, f"largest journey record {max(map(len, rows)):,} B"
