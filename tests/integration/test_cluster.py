"""The engine on a three-broker Apache Kafka cluster (`deploy/kafka/kafka.sh cluster start 3`): its topics
replicated three times, and faults while it runs: a broker killed mid-run, workers leaving and coming back
every 10 s (churn), a worker stopped past its session timeout and woken (a zombie). Nothing lost or counted
twice.

The scenario and its checks are those of test_reliability.py (`reliability_support.Scenario`): the latest
message per (key, window) on the metric topics equals the truth, and every conversion is on `attributions`
once and right. Size: `RELIABILITY_EVENTS` (default 5,000), as there.

One cluster serves the module's tests (starting and stopping three brokers takes ~27 s). The topic names and
the worker group are fixed by the contract, so each test gets it empty: every broker up, every topic and
consumer group of the test before deleted (`cluster`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from tests.integration.reliability_support import (
    Scenario,
    assert_exact_on,
    poll,
    produce_steps,
    shared,
    start_workers,
    started,
    state,
    wait_processed,
    zombie_report,
)
from tests.integration.services import KafkaBroker, KafkaCluster, ServiceError, WorkerProcess, fetch_kafka

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = int(os.environ.get("RELIABILITY_EVENTS", "5000"))
PARTITIONS = 4
CONVERGE_S = 90.0 + EVENTS / 400
JOURNEYS_TOPIC = "attribution-journey-events"
REPLICATED = (JOURNEYS_TOPIC, "attribution-journeys-changelog", "metrics.channel", "impressions", "events.dlq")
SESSION_TIMEOUT = "6s"
GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP = 69, 68


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    """TOPIC_REPLICATION unset: min(3, brokers)."""
    return {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "FX_RATES": "EUR=1.1",
            "REDIS_URL": redis_url, "KAFKA_SESSION_TIMEOUT": SESSION_TIMEOUT, **extra}


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three brokers of the module's own, every one a voter of the controller quorum."""
    try:
        fetch_kafka()
        started_cluster = KafkaCluster(tmp_path_factory.mktemp("cluster"), size=3)
        started_cluster.start()
    except ServiceError as exc:
        pytest.fail(f"a Kafka cluster could not be started: {exc}", pytrace=False)
    yield started_cluster
    started_cluster.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(module_cluster: KafkaCluster) -> KafkaCluster:
    """The module's cluster as if new: every broker up (a test may have killed one), no topic and no consumer
    group left by an earlier test (the workers of a test are stopped before the next one starts)."""
    for node in module_cluster.nodes:
        if not await asyncio.to_thread(node.running):
            await asyncio.to_thread(node.start)
    await empty(module_cluster.bootstrap)
    return module_cluster


async def empty(bootstrap: str, timeout: float = 60.0) -> None:
    """Delete every topic (but Kafka's own) and every consumer group, and wait until they are gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics, timeout_ms=30_000)
        while [t for t in await admin.list_topics() if not t.startswith("__")]:
            assert time.monotonic() < deadline, "the topics of the test before were not deleted"
            await asyncio.sleep(0.2)
        groups = [group[0] for group in await admin.list_consumer_groups()]
        for group in groups:  # a killed worker's member stays until its session times out: retry until then
            while True:
                node = await admin.find_coordinator(group)
                response = await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
                code = response.results[0][1]
                if code in (0, GROUP_ID_NOT_FOUND):
                    break
                assert code == NON_EMPTY_GROUP and time.monotonic() < deadline, f"group {group}: error {code}"
                await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def describe(bootstrap: str, topics: tuple[str, ...]) -> dict[str, list[dict]]:
    """Each topic's partitions: leader, replicas and in-sync replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: t["partitions"] for t in await admin.describe_topics(list(topics))}
    finally:
        await admin.close()


def busiest_leader(cluster: KafkaCluster, partitions: list[dict]) -> KafkaBroker:
    """The broker that leads the most of these partitions: killing it moves the most leaders."""
    leaders = Counter(partition["leader"] for partition in partitions)
    node_id = leaders.most_common(1)[0][0]
    return cluster.nodes[node_id - 1]  # node-I has node.id I


async def test_one_broker_of_three_killed_mid_run_and_restarted_loses_and_double_counts_nothing(
    cluster: KafkaCluster, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = await started(make_worker(bootstrap=cluster.bootstrap, env=worker_env(redis_url), name="cluster"))
    topics = await describe(cluster.bootstrap, REPLICATED)
    assert {name: {len(p["replicas"]) for p in partitions} for name, partitions in topics.items()} == {
        name: {3} for name in REPLICATED}

    scenario = Scenario(seed=11, events=EVENTS)
    producing = asyncio.create_task(produce_steps(cluster.bootstrap, scenario.steps, pause=0.05))
    at_kill = await wait_processed(worker, int(scenario.total_sent * 0.4), timeout=120)
    victim = busiest_leader(cluster, topics[JOURNEYS_TOPIC])
    victim.kill()
    assert 0 < at_kill < scenario.total_sent, f"not killed mid-run: {at_kill} of {scenario.total_sent} judged"
    await asyncio.sleep(5.0)  # the others elect new leaders and go on with two in-sync replicas
    await asyncio.to_thread(victim.start)
    await producing

    report = {"test": "broker kill -9", "events": scenario.total_sent, "judged_at_kill": at_kill,
              "killed": victim.bootstrap}
    await assert_exact_on(cluster.bootstrap, scenario, report, CONVERGE_S, worker)
    assert worker.alive
    assert worker.log_text().count("=== start") == 1, "the worker was restarted"


CHURN_EVERY_S = 10.0
CHURN_RUN_S = 45.0  # the scenario's steps are spread over this long, so that several workers leave mid-run


async def test_four_workers_one_leaving_and_coming_back_every_10_s_keep_the_totals_exact(
    cluster: KafkaCluster, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    """Churn: four workers share eight partitions; every 10 s one of them leaves (SIGKILL and SIGTERM in turn) and
    comes back 2 s later, through the whole run. Every figure stays exact and every conversion is attributed."""
    env = worker_env(redis_url, TOPIC_PARTITIONS="8")
    workers = await start_workers(make_worker, cluster.bootstrap, env, "churn", 4)
    scenario = Scenario(seed=6, events=EVENTS)
    pause = CHURN_RUN_S / len(scenario.steps)
    producing = asyncio.create_task(produce_steps(cluster.bootstrap, scenario.steps, pause=pause))
    faults: list[str] = []
    while not producing.done():
        await asyncio.wait({producing}, timeout=CHURN_EVERY_S)
        if producing.done():
            break
        victim = workers[len(faults) % len(workers)]
        if len(faults) % 2 == 0:
            victim.kill()
            faults.append(f"{victim.name} SIGKILL")
        else:
            status = await asyncio.to_thread(victim.stop, 15.0)
            faults.append(f"{victim.name} SIGTERM ({status})")
        await asyncio.sleep(2.0)
        victim.restart()
    await producing
    assert len(faults) >= 3, f"too few faults mid-run: {faults}"
    report = {"test": "churn", "events": scenario.total_sent, "faults": faults}
    await assert_exact_on(cluster.bootstrap, scenario, report, CONVERGE_S, *workers)
    assert all(worker.alive for worker in workers)


async def test_a_paused_worker_that_wakes_after_its_partitions_moved_writes_nothing_stale(
    cluster: KafkaCluster, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    """A zombie: one of two workers is stopped (SIGSTOP) past its session timeout, the other takes its
    partitions over and finishes the whole run; then the zombie wakes up with its old state in memory.
    Whatever it had queued must not overwrite the new owner's: the figures stay exact after it woke and took
    partitions back. The fence (streams.kafka.group_fence) holds its changelog records from the moment it wakes
    and drops those of partitions another worker wrote meanwhile; records it had handed to the Kafka client before
    the pause still land after the new owner's (journeys, partials, channel windows), and recovery skips them by
    their sequence marks (`attribution_stale_changelog_records_total`): no journey record that forgets what an
    earlier one held may be one recovery keeps."""
    workers = await start_workers(make_worker, cluster.bootstrap, worker_env(redis_url), "zombie", 2)
    assert await poll(lambda: shared(workers, PARTITIONS), timeout=60), "the two workers never shared the partitions"
    survivor, zombie = workers
    scenario = Scenario(seed=5, events=EVENTS)
    first, rest = scenario.split_steps(0.4)
    await produce_steps(cluster.bootstrap, first)
    await wait_processed(zombie, 1, timeout=60)
    await asyncio.sleep(2.0)  # the zombie's partials and snapshots are out: it has figures to write again later
    zombie.pause()
    try:
        async def took_over() -> bool:
            owned = await asyncio.to_thread(lambda: state(survivor)["journey_partitions"])
            return set(owned) == set(range(PARTITIONS))

        assert await poll(took_over, timeout=60), "the survivor did not take over the zombie's partitions"
        await produce_steps(cluster.bootstrap, rest)
        report: dict[str, object] = {"test": "zombie", "events": scenario.total_sent}
        await assert_exact_on(cluster.bootstrap, scenario, {**report, "phase": "before waking"}, CONVERGE_S,
                              survivor)
    finally:
        zombie.resume()
    # It wakes, holds what it would write, learns of the rebalance and rejoins: partitions come back to it and
    # it restores them from their changelogs, then sends their partials again.
    assert await poll(lambda: shared(workers, PARTITIONS), timeout=90), "the woken worker never got partitions back"
    try:
        await assert_exact_on(cluster.bootstrap, scenario, {**report, "phase": "after waking"}, CONVERGE_S,
                              survivor, zombie)
    finally:
        late = await zombie_report(cluster.bootstrap, zombie)
    assert late["journeys"] == [], f"journey records from older state that recovery keeps: {late['journeys'][:5]}"
    assert survivor.alive
