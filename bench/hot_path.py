"""CPU per event of the engine's own code on its hot path, in one process, without Kafka or Faust.

The intake (`Intake.handle`: decode, validate, route, encode) and the journeys stage (`absorb_batch`:
dedup, touchpoints, partials, rows) run over the benchmark's synthetic input (bench/data.py) with a
producer and tables that only keep what they are given. What this leaves out (aiokafka's fetch and
produce, Faust's streams and changelogs, the metrics stage) is what `bench.run` measures end to end; this
is the quick loop for changing the code in between: a figure per part, stable to a few percent.

    python -m bench.hot_path [--events N] [--shape batched|single] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import pstats
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from bench.data import build
from streams.config import Settings
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.intake import Intake
from streams.stages.journeys import BATCH_MAX, JourneyStage
from streams.stages.topology import JOURNEY_TOPIC
from streams.stages.worker import GC_THRESHOLDS
from tests.fakes import FakeTable

PARTITIONS = 4
START_MS = 1_763_800_000_000


@dataclass
class Sent:
    topic: str
    value: bytes
    partition: int | None


class KeepingProducer:
    """What the intake sends, kept in order; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(self, topic: str, value: bytes, partition: int | None = None) -> asyncio.Future[None]:
        self.sent.append(Sent(topic, value, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def wiring(settings: Settings) -> SimpleNamespace:
    registry = CollectorRegistry()
    return SimpleNamespace(
        settings=settings, metrics=WorkerMetrics(registry, settings.campaign_label_cap), registry=registry,
        bootstrap="", journeys=FakeTable(), partials=FakeTable(), state={},
        partition_of=lambda key: partition_of(key, settings.topic_partitions),
    )


def input_records(events: int, shape: str) -> list[Any]:
    data = build(events, shape, START_MS, 3_600_000, partitions=PARTITIONS)
    return [SimpleNamespace(topic=topic, partition=partition or 0, offset=offset, value=value)
            for offset, (topic, _, value, partition) in enumerate(data.messages)]


async def run_intake(w: Any, records: list[Any]) -> list[Sent]:
    producer = KeepingProducer()
    intake = Intake(w, producer, consumer=None)  # type: ignore[arg-type]
    for start in range(0, len(records), 1000):  # a read: up to 1,000 records, grouped by input partition
        fetched: dict[TopicPartition, list[Any]] = {}
        for record in records[start : start + 1000]:
            fetched.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        await intake.handle(fetched)
    return producer.sent


def journey_batches(sent: list[Sent]) -> list[list[Any]]:
    offsets = [0] * PARTITIONS
    events = []
    for record in sent:
        if record.topic != JOURNEY_TOPIC:
            continue
        message = SimpleNamespace(partition=record.partition, offset=offsets[record.partition], value=record.value)
        offsets[record.partition] += 1
        events.append(SimpleNamespace(message=message))
    return [events[start : start + BATCH_MAX] for start in range(0, len(events), BATCH_MAX)]


def run_journeys(w: Any, batches: list[list[Any]]) -> JourneyStage:
    stage = JourneyStage(w)
    for batch in batches:
        stage.absorb_batch(batch)
    return stage


def digest(events: int) -> str:
    """A hash of everything the stage leaves behind (rows, partials, Prometheus samples) over input with
    repeats (input messages sent twice) and replays (journey messages absorbed twice): the same before and
    after a change that must not change behaviour."""
    settings = Settings.from_env({"TOPIC_PARTITIONS": str(PARTITIONS), "WORKER_NAME": "bench"})
    records = input_records(events, "batched")
    records += [SimpleNamespace(**{**vars(r), "offset": len(records) + i}) for i, r in enumerate(records[::7])]
    w = wiring(settings)
    batches = journey_batches(asyncio.run(run_intake(w, records)))
    stage = run_journeys(w, batches + batches[::5])
    samples = sorted((m.name, tuple(sorted(s.labels.items())), round(s.value, 6))
                     for m in w.registry.collect() if "lag" not in m.name
                     for s in m.samples if not s.name.endswith("_created"))
    state = (sorted(w.journeys.items()), sorted((k, repr(v)) for k, v in w.partials.items()), samples,
             stage.stream_time)
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def measure(events: int, shape: str, profile: bool) -> None:
    settings = Settings.from_env({"TOPIC_PARTITIONS": str(PARTITIONS), "WORKER_NAME": "bench"})
    gc.set_threshold(*GC_THRESHOLDS)  # as the worker and the intake process run
    records = input_records(events, shape)
    w = wiring(settings)
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    sent = asyncio.run(run_intake(w, records))
    intake_s = time.process_time() - started
    batches = journey_batches(sent)
    started = time.process_time()
    run_journeys(w, batches)
    journeys_s = time.process_time() - started
    if profiler:
        profiler.disable()
    total = intake_s + journeys_s
    print(f"{events:,} events, {shape}, {len(records):,} input messages, {sum(map(len, batches)):,} journey messages")
    print("| part | us per event | events per CPU second |")
    print("|---|---:|---:|")
    for name, seconds in (("intake", intake_s), ("journeys", journeys_s), ("both", total)):
        print(f"| {name} | {seconds / events * 1e6:.2f} | {events / seconds:,.0f} |")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shape", choices=("batched", "single"), default="batched")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 30 by own time")
    parser.add_argument("--digest", action="store_true", help="print a hash of the stage's output instead")
    args = parser.parse_args()
    if args.digest:
        print(digest(args.events))
        return
    measure(args.events, args.shape, args.profile)


if __name__ == "__main__":
    main()
