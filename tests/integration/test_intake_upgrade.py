"""Upgrading a deployment whose Faust group read the inputs: the intake's own group starts where it stopped.

Before the intake had a consumer group of its own (`attribution-intake`), the worker's Faust group
(`attribution`) read the input topics. A worker of this version on such a cluster must neither read
again what that group had committed (older events would be counted twice once out of the dedup
window) nor skip what it had not.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.stages.intake import INTAKE_GROUP, LEGACY_GROUP
from tests.integration.services import KafkaBroker, WorkerProcess, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTITIONS = 2
SENT = 30
COMMITTED_BY_FAUST = 12  # the old group had read impressions/0 up to here


@pytest.fixture(scope="module")
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


def impression(n: int) -> bytes:
    return orjson.dumps({"event_id": str(uuid.uuid4()), "type": "impression", "ts": int(time.time() * 1000) - n,
                         "tracking_id": f"visitor-{n}", "channel": "upgrade_test", "campaign": "c"})


def impressions_counted(worker: WorkerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    ok = {"type": "impression", "outcome": "ok"}
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "attribution_events_total" and sample.labels == ok)


async def test_the_intake_group_starts_where_the_faust_group_committed(broker: KafkaBroker, tmp_path: Path) -> None:
    await create_topics(broker.bootstrap, ["impressions", "clicks", "leads", "orders", "spend"], PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(SENT):
            await producer.send_and_wait("impressions", impression(n), partition=0)
    finally:
        await producer.stop()
    old_group = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=LEGACY_GROUP, enable_auto_commit=False)
    await old_group.start()
    try:
        old_group.assign([TopicPartition("impressions", 0)])
        await old_group.commit({TopicPartition("impressions", 0): COMMITTED_BY_FAUST})
    finally:
        await old_group.stop()

    worker = WorkerProcess({"TOPIC_PARTITIONS": str(PARTITIONS)}, bootstrap=broker.bootstrap, log_dir=tmp_path,
                           name="upgrade-worker").start()
    try:
        worker.wait_http("/metrics", timeout=90)
        deadline = time.monotonic() + 60
        while impressions_counted(worker) < SENT - COMMITTED_BY_FAUST and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)  # anything read twice, or from the start, would be counted by now
        assert impressions_counted(worker) == SENT - COMMITTED_BY_FAUST, worker.tail(40)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                offsets = await admin.list_consumer_group_offsets(INTAKE_GROUP)
                committed = offsets.get(TopicPartition("impressions", 0))
                if (committed and committed.offset == SENT) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        assert committed is not None and committed.offset == SENT
    finally:
        worker.stop(timeout=15)
