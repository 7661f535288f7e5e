"""The engine on a three-broker Apache Kafka cluster (`deploy/kafka/kafka.sh cluster start 3`): its topics
replicated three times, and a broker killed mid-run without losing or double-counting anything.

The scenario and its checks are those of test_reliability.py (`reliability_support.Scenario`): the latest
message per (key, window) on the metric topics equals the truth, and every conversion is on `attributions`
once and right. Size: `RELIABILITY_EVENTS` (default 5,000), as there.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.reliability_support import Scenario, assert_exact_on, produce_steps, started, wait_processed
from tests.integration.services import KafkaBroker, KafkaCluster, ServiceError, WorkerProcess, fetch_kafka

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = int(os.environ.get("RELIABILITY_EVENTS", "5000"))
PARTITIONS = 4
CONVERGE_S = 90.0 + EVENTS / 400
JOURNEYS_TOPIC = "attribution-journey-events"
REPLICATED = (JOURNEYS_TOPIC, "attribution-journeys-changelog", "metrics.channel", "impressions", "events.dlq")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three brokers of the test's own, every one a voter of the controller quorum."""
    try:
        fetch_kafka()
        started_cluster = KafkaCluster(tmp_path_factory.mktemp("cluster"), size=3)
        started_cluster.start()
    except ServiceError as exc:
        pytest.fail(f"a Kafka cluster could not be started: {exc}", pytrace=False)
    yield started_cluster
    started_cluster.stop()


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
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "FX_RATES": "EUR=1.1",
           "REDIS_URL": redis_url, "KAFKA_SESSION_TIMEOUT": "6s"}  # TOPIC_REPLICATION unset: min(3, brokers)
    worker = await started(make_worker(bootstrap=cluster.bootstrap, env=env, name="cluster"))
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
