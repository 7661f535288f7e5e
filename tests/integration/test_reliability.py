"""Reliability (DESIGN.md "Rules that keep the numbers true"): crash, restart, rebalance and outages
without losing or double-counting, on the real Apache Kafka broker.

Each test runs a seeded campaign with a known truth (`reliability_support.Scenario`: impressions,
clicks, leads, orders in USD and EUR, new and returning customers, spend, repeated events, ts over
the last four 60-second windows, sent in JSON-array batches in event-time order) through a worker on
a broker of its own (the topic names and the worker group are fixed by the contract, so a fresh
broker keeps every test clean), breaks something in the middle of the run, and then requires:

- on `metrics.channel` and `metrics.campaign`, the latest message per (key, window) equals the
  truth, figure by figure, and so does their sum per channel;
- on `attributions`, every conversion (and nothing else) has a message, with the right credits, and
  a conversion attributed again after the fault repeats the same key with the same credits, revenue
  and new-customer answer: a consumer that keeps the latest per key sees each conversion once and right.

The faults with several workers and rebalances after rebalances (churn: four workers, one leaving every 10 s; a
zombie: a worker stopped past its session timeout, then woken) run on a three-broker cluster, in
test_cluster.py.

Size: `RELIABILITY_EVENTS` input events per run (default 5,000, to keep these tests within about three
minutes on a two-core CI machine; the issue's 100k run is
`RELIABILITY_EVENTS=100000 pytest tests/integration/test_reliability.py -k kill_9`, whose result
docs/reliability.md reports). The grace is ATTRIBUTION_GRACE=500ms throughout.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.reliability_support import (
    JOURNEYS_CHANGELOG,
    S,
    Scenario,
    assert_exact_on,
    now_ms,
    outcomes,
    poll,
    processed,
    produce_steps,
    read_attributions,
    shared,
    start_workers,
    started,
    state,
    wait_processed,
    window_of,
)
from tests.integration.services import KafkaBroker, RedisServer, WorkerProcess, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = int(os.environ.get("RELIABILITY_EVENTS", "5000"))
PARTITIONS = 4
CONVERGE_S = 60.0 + EVENTS / 400  # after the fault: recovery, then the rest of the backlog (~1k events/s here)
SHUTDOWN_BOUND_S = 15.0  # SIGTERM to exit
SESSION_TIMEOUT = "6s"


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "TOPIC_PARTITIONS": str(PARTITIONS),
        "ATTRIBUTION_GRACE": "500ms",
        "FX_RATES": "EUR=1.1",
        "REDIS_URL": redis_url,
        "KAFKA_SESSION_TIMEOUT": SESSION_TIMEOUT,  # a killed worker's partitions move on after this
        **extra,
    }


@pytest.fixture
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    """A broker of the test's own: the worker creates the topics, as on an empty cluster."""
    started = kafka_broker_factory()
    yield started
    started.stop()


async def assert_exact(broker: KafkaBroker, scenario: Scenario, report: dict[str, object],
                       *workers: WorkerProcess) -> None:
    await assert_exact_on(broker.bootstrap, scenario, report, CONVERGE_S, *workers)


@pytest.mark.parametrize("state_store", ["memory", "rocksdb"])
async def test_kill_9_of_the_only_worker_mid_run_loses_and_double_counts_nothing(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess], state_store: str
) -> None:
    env = worker_env(redis_url, STATE_STORE=state_store, LOG_LEVEL="INFO")  # INFO: the recovery lines
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=env, name="solo"))
    scenario = Scenario(seed=1, events=EVENTS)
    producing = asyncio.create_task(produce_steps(broker.bootstrap, scenario.steps, pause=0.05))

    at_kill = await wait_processed(worker, int(scenario.total_sent * 0.4), timeout=120)
    # a worker judges a batch before its rows are on the changelog: at least one must be, for a restore to read
    await consume_all(broker.bootstrap, JOURNEYS_CHANGELOG, until=bool, timeout=60)
    worker.kill()
    assert 0 < at_kill < scenario.total_sent, f"not killed mid-run: {at_kill} of {scenario.total_sent} judged"
    await asyncio.sleep(1.0)
    worker.restart()
    await producing

    report = {"test": "kill -9", "store": state_store, "events": scenario.total_sent, "judged_at_kill": at_kill}
    await assert_exact(broker, scenario, report, worker)
    assert worker.alive
    if state_store == "rocksdb":  # the killed worker's files were kept, not emptied and read again
        journeys = sorted((worker.log_dir / "state-solo").rglob("journeys-*.db"))
        assert journeys, "no journeys database under STATE_DIR"
        assert "cannot resume" not in worker.log_path.read_text()
    else:  # the restarted worker's tables came back through the bulk read, not record by record through Faust
        assert "read in bulk" in worker.log_path.read_text().rsplit("=== start", 1)[-1]


async def test_a_killed_worker_s_partitions_are_taken_over_and_totals_stay_exact(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    workers = await start_workers(make_worker, broker.bootstrap, worker_env(redis_url), "pair", 2)
    assert await poll(lambda: shared(workers, PARTITIONS), timeout=60), "the two workers never shared the partitions"
    survivor, victim = workers
    scenario = Scenario(seed=2, events=EVENTS)
    producing = asyncio.create_task(produce_steps(broker.bootstrap, scenario.steps, pause=0.05))

    async def both() -> int:
        return sum(await asyncio.gather(*(asyncio.to_thread(processed, w) for w in workers)))

    target = int(scenario.total_sent * 0.3)

    async def through() -> bool:
        return await both() >= target

    assert await poll(through, timeout=120, interval=0.1), "the pair never got through 30%"
    at_kill = await both()
    victim.kill()
    assert at_kill < scenario.total_sent, f"not killed mid-run: {at_kill} of {scenario.total_sent} judged"
    await producing

    async def took_over() -> bool:
        return set(await asyncio.to_thread(lambda: state(survivor)["journey_partitions"])) == set(range(PARTITIONS))

    assert await poll(took_over, timeout=60), "the survivor did not take over the victim's partitions"
    report = {"test": "rebalance", "events": scenario.total_sent, "judged_at_kill": at_kill}
    await assert_exact(broker, scenario, report, survivor)
    assert survivor.alive


async def test_a_killed_intake_process_s_inputs_are_taken_over_and_totals_stay_exact(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    """WORKER_INTAKE=off and two `attribution intake` processes: one is killed mid-run; the other reads its
    input partitions again from the last commit (the journeys drop the repeats) and its watermark
    reports stop counting once stale, so conversions are neither lost nor held for good."""
    env = worker_env(redis_url)
    worker = await started(make_worker(bootstrap=broker.bootstrap, env={**env, "WORKER_INTAKE": "off"},
                                       name="no-intake"))
    intakes = [make_worker(bootstrap=broker.bootstrap, env=env, name=f"intake-{i}", args=("intake",)) for i in (1, 2)]
    for intake in intakes:
        await asyncio.to_thread(intake.wait_http, "/metrics", 90)
    scenario = Scenario(seed=3, events=EVENTS)
    cut = len(scenario.steps) * 2 // 5  # the rest is produced after the kill: the survivor must read it
    await produce_steps(broker.bootstrap, scenario.steps[:cut], pause=0.05)
    at_kill = await wait_processed(worker, int(scenario.total_sent * 0.2), timeout=120)  # both intakes reading
    intakes[1].kill()
    assert 0 < at_kill < scenario.total_sent, f"not killed mid-run: {at_kill} of {scenario.total_sent} judged"
    await produce_steps(broker.bootstrap, scenario.steps[cut:], pause=0.05)

    report = {"test": "intake kill -9", "events": scenario.total_sent, "judged_at_kill": at_kill}
    await assert_exact(broker, scenario, report, worker)
    assert worker.alive and intakes[0].alive


async def test_the_worker_resumes_after_the_broker_stops_and_restarts_mid_run(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name="outage"))
    scenario = Scenario(seed=3, events=EVENTS)
    first, rest = scenario.split_steps(0.6)
    await produce_steps(broker.bootstrap, first)
    first_elements = sum(orjson_len(value) for step in first for _, value in step)

    at_stop = await wait_processed(worker, int(first_elements * 0.5), timeout=120)
    began = time.monotonic()
    await asyncio.to_thread(broker.restart)
    outage_s = round(time.monotonic() - began, 1)
    assert worker.alive, f"the worker died with the broker:\n{worker.tail()}"
    await produce_steps(broker.bootstrap, rest)

    await assert_exact(broker, scenario, {"test": "broker restart", "events": scenario.total_sent,
                                          "judged_at_stop": at_stop, "outage_s": outage_s}, worker)
    assert worker.alive
    assert worker.log_text().count("=== start") == 1, "the worker was restarted"


async def test_conversions_wait_while_redis_is_down_and_are_attributed_when_it_is_back(
    broker: KafkaBroker, make_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis_url = redis.start()
    try:
        worker = await started(make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name="no-redis"))
        scenario = Scenario(seed=4, events=EVENTS)
        first, rest = scenario.split_steps(0.5)
        await produce_steps(broker.bootstrap, first)
        first_elements = sum(orjson_len(value) for step in first for _, value in step)
        await wait_processed(worker, first_elements, timeout=120)

        await asyncio.to_thread(redis.stop)
        await produce_steps(broker.bootstrap, rest)
        # an order is counted (ok or duplicate) once the store has held its order_id: all but the orders
        await wait_processed(worker, scenario.total_sent - scenario.sent["order"], timeout=120)
        await asyncio.sleep(3.0)  # three retries of the store
        assert worker.alive, f"the worker died without Redis:\n{worker.tail()}"
        waiting = state(worker)["pending_conversions"]
        assert waiting > 0, "no conversion waits for the store while Redis is down"
        attributed = await read_attributions(broker.bootstrap)
        orders_of_customers = {k for k, e in scenario.conversions.items() if e.kind == "order" and e.new_customer}
        assert orders_of_customers - attributed.keys(), "every first order was attributed without the store"
        log = worker.log_text()
        assert log.count("store unavailable") == 1, "the outage is logged once, not per retry"

        await asyncio.to_thread(redis.start)
        await assert_exact(broker, scenario, {"test": "redis down", "events": scenario.total_sent,
                                              "waiting_while_down": waiting}, worker)
        log = worker.log_text()
        assert "store is back" in log
        assert log.count("=== start") == 1, "the worker was restarted"
        assert worker.alive
        outage = [line for line in log.splitlines()
                  if "store" in line and ("unavailable" in line or "could not" in line)]
        assert len(outage) <= 3, f"the outage is logged {len(outage)} times, not once per stage:\n" + "\n".join(
            outage[:6])
    finally:
        redis.stop()


async def test_sigterm_exits_0_within_the_bound_and_a_restart_continues_exactly(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name="term"))
    scenario = Scenario(seed=5, events=EVENTS)
    producing = asyncio.create_task(produce_steps(broker.bootstrap, scenario.steps, pause=0.05))

    at_stop = await wait_processed(worker, int(scenario.total_sent * 0.4), timeout=120)
    began = time.monotonic()
    status = await asyncio.to_thread(worker.stop, SHUTDOWN_BOUND_S + 15)
    took = round(time.monotonic() - began, 1)
    assert status == 0, f"exit status {status} on SIGTERM:\n{worker.tail()}"
    assert took <= SHUTDOWN_BOUND_S, f"SIGTERM took {took}s to exit (bound {SHUTDOWN_BOUND_S}s)"
    assert at_stop < scenario.total_sent, f"not stopped mid-run: {at_stop} of {scenario.total_sent} judged"
    worker.restart()
    await producing

    await assert_exact(broker, scenario, {"test": "sigterm", "events": scenario.total_sent,
                                          "judged_at_stop": at_stop, "exit_s": took}, worker)


def orjson_len(value: bytes) -> int:
    return len(orjson.loads(value))


async def test_the_support_scenario_is_what_the_tests_think_it_is() -> None:
    """The truth's own sanity: every type is present, the repeats and customers exist, the plan sends it all."""
    scenario = Scenario(seed=9, events=5_000)
    sent = sum(orjson_len(value) for step in scenario.steps for _, value in step)
    assert sent == scenario.total_sent == sum(scenario.outcomes.values())
    assert 4_900 <= sent <= 5_300
    assert set(scenario.sent) == {"impression", "click", "lead", "order", "spend"}
    assert scenario.outcomes["order", "duplicate"] and scenario.outcomes["impression", "duplicate"] + \
        scenario.outcomes["click", "duplicate"]
    kinds = [e for e in scenario.conversions.values()]
    assert any(e.new_customer for e in kinds) and any(e.kind == "order" and not e.new_customer for e in kinds)
    assert any(e.credits == (("(direct)", "(none)"),) for e in kinds)
    assert len({w for _, w in scenario.channel}) == 4


async def test_a_window_closed_before_a_restart_stays_closed_after_it(
    broker: KafkaBroker, make_worker: Callable[..., WorkerProcess]
) -> None:
    """ALLOWED_LATENESS: an event for a closed window is `late` and changes nothing, restart or not. Here the
    window W0 closes and gets its final message, the worker restarts (SIGTERM), and the first events the new
    incarnation reads are late ones for W0: they must not reopen W0 with figures of their own."""
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "CLICK_LOOKBACK": "3m",
           "VIEW_LOOKBACK": "90s", "ALLOWED_LATENESS": "10s", "DEDUP_WINDOW": "2m"}
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=env, name="closed"))
    run = uuid.uuid4().hex[:8]
    w0 = window_of(now_ms() - 600 * S)
    visitors = spread_over_partitions(run, PARTITIONS)
    old = [{"event_id": f"{tid}-i", "type": "impression", "ts": w0 + 5 * S, "tracking_id": tid, "channel": "display",
            "campaign": "old"} for tid in visitors]
    old.append({"event_id": f"{run}-s", "type": "spend", "ts": w0 + 6 * S, "channel": "display", "campaign": "old",
                "amount": 5.0})
    await produce_steps(broker.bootstrap, [[("impressions", orjson.dumps(old[:-1])),
                                            ("spend", orjson.dumps(old[-1:]))]])
    truth = {"impressions": len(visitors), "spend": 5.0}

    def w0_messages(records: list) -> list[dict]:
        return [m for r in records if r.key == b"display" and (m := orjson.loads(r.value))["window_start"] == w0]

    async def counted() -> bool:
        messages = w0_messages(await consume_all(broker.bootstrap, "metrics.channel", timeout=10))
        return bool(messages) and all(messages[-1][k] == v for k, v in truth.items())

    assert await poll(counted, timeout=60), "W0 never showed its figures"
    now = [{"event_id": f"{tid}-now", "type": "click", "ts": now_ms() - 2 * S, "tracking_id": tid, "channel": "advance"}
           for tid in visitors]
    await produce_steps(broker.bootstrap, [[("clicks", orjson.dumps(now))]])

    async def closed() -> bool:
        messages = w0_messages(await consume_all(broker.bootstrap, "metrics.channel", timeout=10))
        return bool(messages) and messages[-1]["final"]

    assert await poll(closed, timeout=60), "W0 never got its final message"
    assert await asyncio.to_thread(worker.stop, 30) == 0
    worker.restart()
    await started(worker)
    await asyncio.sleep(3.0)  # the group has its partitions: the late events are the first it reads

    late = [{"event_id": f"{run}-late-i", "type": "impression", "ts": w0 + 20 * S, "tracking_id": visitors[0],
             "channel": "display", "campaign": "old"}]
    late_spend = [{"event_id": f"{run}-late-s", "type": "spend", "ts": w0 + 30 * S, "channel": "display",
                   "campaign": "old", "amount": 7.0}]
    await produce_steps(broker.bootstrap, [[("impressions", orjson.dumps(late)), ("spend", orjson.dumps(late_spend))]])

    async def judged() -> bool:
        return await asyncio.to_thread(processed, worker) >= 2

    assert await poll(judged, timeout=30), "the late events were never judged"
    await asyncio.sleep(3.0)  # metrics are published about once a second: a reopened W0 would show by now
    messages = w0_messages(await consume_all(broker.bootstrap, "metrics.channel", timeout=10))
    counts = await asyncio.to_thread(outcomes, worker)
    print(f"reliability report: {{'test': 'closed window after restart', 'late': {counts}, 'w0': {messages[-1]}}}")
    assert messages[-1]["final"], f"W0 reopened after the restart: {messages[-1]}"
    assert all(messages[-1][k] == v for k, v in truth.items()), messages[-1]
    assert counts["impression", "late"] == 1 and counts["spend", "late"] == 1, counts


def spread_over_partitions(run: str, partitions: int, per_partition: int = 2) -> list[str]:
    """Tracking IDs, `per_partition` on every journey partition (murmur2, as the engine routes them)."""
    from streams.kafka.partitioner import partition_of

    chosen: list[str] = []
    i = 0
    while len(chosen) < partitions * per_partition:
        tid = f"{run}-t{i}"
        i += 1
        if sum(partition_of(t, partitions) == partition_of(tid, partitions) for t in chosen) < per_partition:
            chosen.append(tid)
    return chosen
