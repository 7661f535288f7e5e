"""CPU per event of the engine's own code on its hot path, in one process, without Kafka or Faust.

The intake (`Intake.handle`: decode, validate, route, encode) and the journeys stage (`absorb_batch`:
dedup, touchpoints, partials, rows) run over the benchmark's synthetic input (bench/data.py) with a
producer and tables that only keep what they are given. What this leaves out (aiokafka's fetch and
produce, Faust's streams and changelogs, the metrics stage) is what `bench.run` measures end to end; this
is the quick loop for changing the code in between: a figure per part, stable to a few percent.

With `--markov` the journeys run a second time with the Markov stage's paths attached (`PathStage`: a visitor's
open path noted per batch, a converting path per conversion), and then every open path is closed as null (the
clock moved past PATH_TIMEOUT, as the stage's timer does): the stage's own cost per event, beside the journeys'.
The chain (stage two) is left out: it reads a snapshot per partition per half second, not per event.

    python -m bench.hot_path [--events N] [--shape batched|single] [--markov] [--profile]
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
from streams.core.watermarks import CAUGHT_UP
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.intake import Intake
from streams.stages.journeys import BATCH_MAX, JourneyStage
from streams.stages.markov import PathStage
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


def run_journeys(w: Any, batches: list[list[Any]], markov: bool = False) -> JourneyStage:
    stage = JourneyStage(w)
    if markov:
        stage.paths = PathStage(w, lambda: stage.stream_time, lambda partition: CAUGHT_UP)
    for batch in batches:
        stage.absorb_batch(batch)
    return stage


def with_markov(w: Any) -> Any:
    """The wiring the Markov stage's paths need besides the journeys' (every partition owned, and removal effects
    known, as once the chain has published)."""
    channels = ("google_ads", "meta_ads", "email", "affiliate", "organic", "tiktok_ads", "direct")
    return SimpleNamespace(
        **vars(w), markov_paths=FakeTable(), assigned=lambda topic: set(range(PARTITIONS)),
        journey_events=SimpleNamespace(get_topic_name=lambda: JOURNEY_TOPIC),
        markov_effects=SimpleNamespace(current={channel: 0.1 + i / 10 for i, channel in enumerate(channels)}),
    )


def close_null_paths(stage: JourneyStage) -> None:
    """Event time moved past PATH_TIMEOUT: every open path ends, as the stage's timer ends them."""
    assert stage.paths is not None
    stage.stream_time += stage.w.settings.path_timeout_ms + 1
    stage.paths.close_timed_out()


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


def measure(events: int, shape: str, profile: bool, markov: bool = False) -> None:
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
    parts = [("intake", intake_s), ("journeys", journeys_s), ("both", intake_s + journeys_s)]
    if markov:
        w = with_markov(wiring(settings))
        started = time.process_time()
        stage = run_journeys(w, batches, markov=True)
        with_paths_s = time.process_time() - started
        started = time.process_time()
        close_null_paths(stage)
        close_s = time.process_time() - started
        markov_s = with_paths_s - journeys_s + close_s
        parts += [("journeys, Markov paths on", with_paths_s), ("null paths closed", close_s),
                  ("Markov stage (paths on - off + closed)", markov_s)]
    if profiler:
        profiler.disable()
    print(f"{events:,} events, {shape}, {len(records):,} input messages, {sum(map(len, batches)):,} journey messages")
    print("| part | us per event | events per CPU second |")
    print("|---|---:|---:|")
    for name, seconds in parts:
        print(f"| {name} | {seconds / events * 1e6:.2f} | {events / seconds:,.0f} |")
    if markov:
        print(f"Markov stage / (intake + journeys): {markov_s / (intake_s + journeys_s):.2f}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shape", choices=("batched", "single"), default="batched")
    parser.add_argument("--markov", action="store_true", help="the Markov stage's paths too, and its null paths closed")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 30 by own time")
    parser.add_argument("--digest", action="store_true", help="print a hash of the stage's output instead")
    args = parser.parse_args()
    if args.digest:
        print(digest(args.events))
        return
    measure(args.events, args.shape, args.profile, args.markov)


if __name__ == "__main__":
    main()
