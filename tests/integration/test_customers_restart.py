"""Customers and order ids survive a kill -9 (issue #23): with the defaults (no Redis) and with Redis.

Round one: N customers each place a first order. The worker is killed with SIGKILL and restarted
(with Redis, Redis is restarted too, from its append-only file). Round two: the same customers
order again from new tracking IDs, none of them new; and some round-one orders are sent again
under their old `order_id` from other tracking IDs (a reloaded thank-you page), none attributed.
`metrics.channel` must end with exactly the figures computed here from the events sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.integration.reliability_support import http_get, poll
from tests.integration.services import KafkaBroker, RedisServer, ServiceError, WorkerProcess, consume_all
from tests.integration.test_business import create_engine_topics, send, uid

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CUSTOMERS = 20
RESENT = 5
S = 1_000
MIN = 60 * S
WAIT_S = 60.0
FIGURES = ("orders", "new_customers", "revenue")


def env(**extra: str) -> dict[str, str]:
    return {"TOPIC_PARTITIONS": "3", "ATTRIBUTION_MODEL": "last_click", "ATTRIBUTION_GRACE": "1s",
            "KAFKA_SESSION_TIMEOUT": "6s", "LOG_LEVEL": "INFO", **extra}


def visit(channel: str, ts: int, customer: str, order_id: str, revenue: float) -> list[dict[str, Any]]:
    """A click in `channel` on a fresh tracking ID, then an order on it 5 s later."""
    tid = uid("tid")
    return [
        {"event_id": uid("click"), "type": "click", "ts": ts - 5 * S, "tracking_id": tid, "channel": channel,
         "campaign": "c"},
        {"event_id": uid("order"), "type": "order", "ts": ts, "tracking_id": tid, "order_id": order_id,
         "revenue": revenue, "customer_id": customer},
    ]


class Rounds:
    """The two rounds of events, and what they must add up to per channel."""

    def __init__(self) -> None:
        base = int(time.time() * 1000) - 20 * MIN
        self.customers = [uid("cust") for _ in range(CUSTOMERS)]
        self.order_ids = [uid("oid") for _ in range(CUSTOMERS)]
        self.first = [e for i, c in enumerate(self.customers)
                      for e in visit("google_ads", base + i * S, c, self.order_ids[i], 10.0 + i)]
        self.second = [e for i, c in enumerate(self.customers)
                       for e in visit("email", base + 5 * MIN + i * S, c, uid("oid"), 5.0)]
        self.resent = [e for i in range(RESENT)
                       for e in visit("facebook", base + 6 * MIN + i * S, self.customers[i], self.order_ids[i], 99.0)]
        self.expected = {
            "google_ads": {"orders": CUSTOMERS, "new_customers": CUSTOMERS,
                           "revenue": sum(10.0 + i for i in range(CUSTOMERS))},
            "email": {"orders": CUSTOMERS, "new_customers": 0, "revenue": 5.0 * CUSTOMERS},
            "facebook": {"orders": 0, "new_customers": 0, "revenue": 0.0},
        }


def channel_sums(records: list[Any]) -> dict[str, dict[str, float]]:
    """Per channel, the sum over windows of each window's latest `metrics.channel` message."""
    windows: dict[tuple[str, int], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        message = orjson.loads(record.value)
        windows[message["channel"], message["window_start"]] = message
    sums: dict[str, dict[str, float]] = {}
    for (channel, _), message in windows.items():
        figures = sums.setdefault(channel, dict.fromkeys(FIGURES, 0.0))
        for name in FIGURES:
            figures[name] += message[name]
    return sums


def exact(sums: dict[str, dict[str, float]], expected: dict[str, dict[str, float]]) -> bool:
    return all(sums.get(channel, dict.fromkeys(FIGURES, 0.0))[name] == pytest.approx(want[name])
               for channel, want in expected.items() for name in FIGURES)


async def until_exact(bootstrap: str, expected: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    records = await consume_all(bootstrap, "metrics.channel", until=lambda rs: exact(channel_sums(rs), expected),
                                timeout=WAIT_S)
    return channel_sums(records)


async def attributed_orders(bootstrap: str) -> set[str]:
    """The event ids of the orders on `attributions` (a message sent again after a crash counts once)."""
    records = await consume_all(bootstrap, "attributions", timeout=10)
    return {m["conversion_id"] for r in records for m in [orjson.loads(r.value)] if m["type"] == "order"}


def kpis_served(worker: WorkerProcess) -> dict[str, float]:
    """Orders per channel in the read API's current windows."""
    served: dict[str, float] = {}
    try:
        messages = orjson.loads(http_get(worker, "/api/v1/kpis"))
    except OSError:  # not serving yet
        return served
    for message in messages:
        served[message["channel"]] = served.get(message["channel"], 0.0) + message["orders"]
    return served


@pytest.fixture
def persistent_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"), appendonly=True)
    try:
        server.start()
    except ServiceError as exc:
        pytest.fail(f"Redis could not be started: {exc}", pytrace=False)
    yield server
    server.stop()


async def play(bootstrap: str, workers: list[WorkerProcess], restart_redis: Callable[[], None] | None) -> None:
    """Round one, kill -9 of the first worker (and a Redis restart), round two; the figures must be exact."""
    rounds = Rounds()
    first_round = {channel: want if channel == "google_ads" else dict.fromkeys(FIGURES, 0.0)
                   for channel, want in rounds.expected.items()}
    await send(bootstrap, rounds.first)
    assert exact(await until_exact(bootstrap, first_round), first_round)
    killed = workers[0]
    assert killed.kill() == -9
    if restart_redis is not None:
        restart_redis()
    killed.restart()
    killed.wait_http("/metrics", timeout=90)
    if len(workers) == 1:  # the read API serves the figures again before any new event, not an empty list
        served = await poll(lambda: kpis_served(killed).get("google_ads") == CUSTOMERS, timeout=30)
        assert served, f"/api/v1/kpis after the restart: {kpis_served(killed)}"
    await send(bootstrap, rounds.second + rounds.resent)
    sums = await until_exact(bootstrap, rounds.expected)
    assert exact(sums, rounds.expected), f"metrics.channel sums {sums}, expected {rounds.expected}"
    assert await attributed_orders(bootstrap) == {e["event_id"] for e in rounds.first + rounds.second
                                                  if e["type"] == "order"}  # none of the orders sent again


async def test_without_redis_customers_and_order_ids_survive_a_kill_9(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess]
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    worker = make_worker(bootstrap=broker.bootstrap, env=env(REDIS_URL=""), name="no-redis")
    worker.wait_http("/metrics", timeout=90)
    await play(broker.bootstrap, [worker], None)


async def test_with_redis_restarted_too_customers_and_order_ids_survive_a_kill_9(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess],
    persistent_redis: RedisServer,
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    worker = make_worker(bootstrap=broker.bootstrap, env=env(REDIS_URL=persistent_redis.url), name="redis")
    worker.wait_http("/metrics", timeout=90)

    def restart_redis() -> None:
        persistent_redis.stop()
        persistent_redis.start()

    await play(broker.bootstrap, [worker], restart_redis)


async def test_two_workers_with_redis_one_killed_stay_exact(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess],
    persistent_redis: RedisServer,
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    workers = [make_worker(bootstrap=broker.bootstrap, env=env(REDIS_URL=persistent_redis.url), name=f"w{i}")
               for i in (1, 2)]
    for worker in workers:
        worker.wait_http("/metrics", timeout=90)
    await play(broker.bootstrap, workers, None)


async def test_without_redis_a_second_worker_is_refused_with_the_reason(
    kafka_broker_factory: Callable[[], KafkaBroker], make_worker: Callable[..., WorkerProcess]
) -> None:
    broker = kafka_broker_factory()
    await create_engine_topics(broker.bootstrap)
    first = make_worker(bootstrap=broker.bootstrap, env=env(REDIS_URL=""), name="first")
    first.wait_http("/metrics", timeout=90)
    owns_all = await poll(lambda: orjson.loads(http_get(first, "/api/v1/state"))["journey_partitions"] == [0, 1, 2],
                          timeout=60)
    assert owns_all, "the first worker never owned every partition"
    second = make_worker(bootstrap=broker.bootstrap, env=env(REDIS_URL=""), name="second")
    gone = await poll(lambda: second.returncode is not None, timeout=60)
    assert gone and second.returncode == 1, second.tail()
    assert "another worker is running in consumer group 'attribution'" in second.log_text()
    assert "set REDIS_URL" in second.log_text()
    assert first.alive
