"""The intake in processes of its own (`attribution intake`) for a worker with WORKER_INTAKE=off.

On a fresh Apache Kafka broker: a worker that reads no input topic routes nothing; two intake
processes then share the inputs (one consumer group), and the worker's metrics show every
touchpoint and the conversion credited to its click, the broken input is on `events.dlq` once and
counted on an intake's `/metrics`; SIGTERM stops an intake with status 0.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTITIONS = 4
JOURNEY_TOPIC = "attribution-journey-events"
WAIT_S = 90.0
ENV = {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "KAFKA_SESSION_TIMEOUT": "6s"}
CHANNELS = ("google_ads", "facebook", "display")


@pytest.fixture(scope="module")
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


def invalid_total(worker: WorkerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "attribution_events_total" and sample.labels.get("outcome") == "invalid")


def latest_by_channel(records: list[Any]) -> dict[str, dict[str, Any]]:
    """The latest `metrics.channel` message per channel (the events all fall in one window)."""
    return {record.key.decode(): orjson.loads(record.value) for record in records}


async def test_a_worker_without_its_intake_is_fed_by_intake_processes(broker: KafkaBroker, tmp_path: Any) -> None:
    run = uuid.uuid4().hex[:8]
    ts = int(time.time() * 1000) - 30_000
    touches = [{"event_id": f"{run}-i{i}", "type": "impression", "ts": ts + i, "tracking_id": f"{run}-t{i}",
                "channel": CHANNELS[i % 3], "campaign": "c"} for i in range(30)]
    clicks = [{"event_id": f"{run}-c{i}", "type": "click", "ts": ts + 100 + i, "tracking_id": f"{run}-t{i}",
               "channel": CHANNELS[i % 3], "campaign": "c"} for i in range(6)]
    lead = {"event_id": f"{run}-l", "type": "lead", "ts": ts + 1_000, "tracking_id": f"{run}-t4"}  # click 4: facebook
    broken = {k: v for k, v in touches[0].items() if k != "tracking_id"} | {"event_id": f"{run}-bad"}
    worker = WorkerProcess({**ENV, "WORKER_INTAKE": "off"}, bootstrap=broker.bootstrap, log_dir=tmp_path,
                           name="worker-no-intake").start()
    intakes = [WorkerProcess(ENV, bootstrap=broker.bootstrap, log_dir=tmp_path, name=f"intake-{n}", args=("intake",))
               for n in (1, 2)]
    try:
        worker.wait_http("/metrics", timeout=90)
        await produce(broker.bootstrap, "impressions", [orjson.dumps(e) for e in [*touches, broken]])
        await produce(broker.bootstrap, "clicks", [orjson.dumps(e) for e in clicks])
        await produce(broker.bootstrap, "leads", [orjson.dumps(lead)])
        await asyncio.sleep(5)
        assert await consume_all(broker.bootstrap, JOURNEY_TOPIC) == []  # the worker read no input

        for intake in intakes:
            intake.start()
        for intake in intakes:
            intake.wait_http("/metrics", timeout=90)

        def complete(records: list[Any]) -> bool:
            by_channel = latest_by_channel(records)
            return (sum(m["impressions"] + m["clicks"] for m in by_channel.values()) == len(touches) + len(clicks)
                    and sum(m["leads"] for m in by_channel.values()) == 1)

        records = await consume_all(broker.bootstrap, "metrics.channel", until=complete, timeout=WAIT_S)
        by_channel = latest_by_channel(records)
        assert {c: by_channel.get(c, {}).get("impressions") for c in CHANNELS} == {c: 10 for c in CHANNELS}
        assert {c: by_channel.get(c, {}).get("clicks") for c in CHANNELS} == {c: 2 for c in CHANNELS}
        assert {c: m["leads"] for c, m in by_channel.items() if m["leads"]} == {"facebook": 1.0}

        dead = await consume_all(broker.bootstrap, "events.dlq")
        assert [orjson.loads(r.value)["topic"] for r in dead] == ["impressions"]
        assert "tracking_id" in orjson.loads(dead[0].value)["error"]
        assert sum(invalid_total(intake) for intake in intakes) == 1
        assert invalid_total(worker) == 0
        assert Counter(intake.stop(timeout=30) for intake in intakes) == {0: 2}
        assert all("Traceback" not in intake.log_text() for intake in intakes)
    finally:
        for process in (*intakes, worker):
            process.stop(timeout=15)
        print("\n".join(f"--- {p.name} log ---\n{p.tail(30)}" for p in (*intakes, worker)))
