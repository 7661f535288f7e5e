"""`attribution worker`: the Faust worker, on the configured Kafka or the embedded broker."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import IO

from streams.config import Settings
from streams.serving.prometheus import configure_logging

log = logging.getLogger(__name__)
EMBEDDED_SESSION_TIMEOUT_S = 3.0  # Tansu makes a group join wait out the session timeout
# The worker's state is millions of small lists (journey rows), every one tracked by the cyclic garbage
# collector, and each batch allocates thousands more. With CPython's default thresholds (700, 10, 10) the
# collector took about 45% of the journeys stage's time (bench data, offline: 36k events/s absorbed, 62k with
# these). The state holds no reference cycles, so collecting young objects far less often loses nothing.
GC_THRESHOLDS = (100_000, 50, 100)
GROUP_LEAVE_MARGIN_S = 5.0
GROUP_POLL_S = 1.0


def run(settings: Settings, args: Namespace | None = None) -> int:
    import faust

    from streams.kafka.embedded_broker import resolve_bootstrap
    from streams.serving.store import RedisStore, open_store
    from streams.stages.app import build

    configure_logging(settings.log_level)
    tune_runtime(settings)
    try:  # Faust creates its data directory but not the parents: a fresh clone has no .run/
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"attribution worker: STATE_DIR={settings.state_dir} cannot be created: {exc}", file=sys.stderr)
        return 1
    bootstrap, embedded = resolve_bootstrap(settings)
    try:
        session_timeout = settings.kafka_session_timeout_ms / 1000
        if embedded is not None:
            session_timeout = min(session_timeout, EMBEDDED_SESSION_TIMEOUT_S)
        try:
            replication = asyncio.run(prepare_topics(bootstrap, settings))
            if not settings.redis_url and embedded is None:  # an embedded broker of our own has no other worker
                asyncio.run(refuse_a_second_worker(bootstrap, session_timeout + GROUP_LEAVE_MARGIN_S))
        except (TimeoutError, PartitionMismatch, SecondWorker) as exc:
            print(f"attribution worker: {exc}", file=sys.stderr)
            return 1
        store = open_store(settings.redis_url)
        wiring = build(settings, bootstrap, store, session_timeout, store if isinstance(store, RedisStore) else None,
                       replication)
        if settings.state_store == "rocksdb":
            try:
                wiring.state["state-dir-lock"] = claim_rocksdb_files(bootstrap, Path(wiring.app.conf.tabledir))
            except RuntimeError as exc:  # rocksdict missing, or the directory in use
                print(f"attribution worker: {exc}", file=sys.stderr)
                return 1
        log.warning("worker starting on %s (model %s, web port %d%s)", bootstrap, settings.attribution_model,
                    settings.web_port, "" if settings.worker_intake else "; WORKER_INTAKE=off: `attribution intake` "
                    "processes read the input topics")
        worker = faust.Worker(wiring.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
        _keep_log_levels(settings.log_level)
        worker.execute_from_commandline()
        return 0
    finally:
        if embedded is not None:
            embedded.stop()


def tune_runtime(settings: Settings) -> None:
    """The garbage collector's thresholds (GC_THRESHOLDS) and the event loop (EVENT_LOOP) of a worker or an
    intake process. uvloop runs the callbacks, futures and sockets of Faust and aiokafka in C: the asyncio
    loop's own share of a worker's time was 15-20% (bench/RESULTS.md, "Engine profile")."""
    gc.set_threshold(*GC_THRESHOLDS)
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("EVENT_LOOP=uvloop but uvloop is not installed: running on asyncio's own loop")
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def claim_rocksdb_files(bootstrap: str, tabledir: Path) -> IO[str]:
    """Lock STATE_DIR's table files and keep those that can resume from their changelog's end."""
    from streams.kafka.rocksdb_store import claim_state_dir  # Faust's RocksDB module only where it is used
    from streams.kafka.topics import end_offsets
    from streams.stages.topology import APP_ID, CHANGELOG_TOPICS, TABLES

    ends = asyncio.run(end_offsets(bootstrap, CHANGELOG_TOPICS))
    table_of = {f"{APP_ID}-{table}-changelog": table for table in TABLES}
    return claim_state_dir(tabledir, {(table_of[topic], p): end for (topic, p), end in ends.items()})


async def prepare_topics(bootstrap: str, settings: Settings) -> int:
    """Wait for Kafka, create every topic the engine uses, and check the co-partitioned ones agree; returns
    the replication of the topics created (TOPIC_REPLICATION), for the topics Faust creates itself."""
    from streams.kafka.topics import PUBLIC_TOPICS, ensure_topics, partition_counts, wait_for_broker
    from streams.stages.topology import CHANGELOG_TOPICS, CO_PARTITIONED_TOPICS, INTERNAL_TOPICS

    await wait_for_broker(bootstrap)
    replication = await ensure_topics(bootstrap, settings, PUBLIC_TOPICS + INTERNAL_TOPICS, CHANGELOG_TOPICS)
    counts = await partition_counts(bootstrap, CO_PARTITIONED_TOPICS)
    wrong = {name: n for name, n in counts.items() if n != settings.topic_partitions}
    if wrong:
        found = ", ".join(f"{name} has {n}" for name, n in sorted(wrong.items()))
        raise PartitionMismatch(
            f"TOPIC_PARTITIONS={settings.topic_partitions} but {found} partitions; the engine's state is "
            "partitioned like these topics: set TOPIC_PARTITIONS to match, or recreate the topics"
        )
    return replication


class PartitionMismatch(RuntimeError):
    pass


class SecondWorker(RuntimeError):
    pass


async def refuse_a_second_worker(bootstrap: str, wait_s: float) -> None:
    """Without REDIS_URL the claims on customers and order ids live in one worker's table, which must own
    every partition: refuse to join a group that has a member. A member left by a killed worker leaves
    within the session timeout, so that long is waited out first. A group that cannot be described (a
    fresh broker still electing its coordinator) counts as empty after a while: the claims table refuses
    to judge a partition this worker does not own, so a missed second worker stalls, never miscounts."""
    from streams.stages.topology import APP_ID

    deadline = time.monotonic() + wait_s
    members = await members_of(bootstrap, APP_ID, wait_s)
    if members:
        log.warning("consumer group %s has members %s: waiting up to %.0fs for them to leave", APP_ID, members, wait_s)
    while members and time.monotonic() < deadline:
        await asyncio.sleep(GROUP_POLL_S)
        members = await members_of(bootstrap, APP_ID, wait_s)
    if members:
        raise SecondWorker(
            f"another worker is running in consumer group {APP_ID!r} ({', '.join(members)}) and REDIS_URL is "
            "unset: without Redis one worker keeps every customer and order id; set REDIS_URL (the same for "
            "every worker) to run several"
        )


async def members_of(bootstrap: str, group: str, wait_s: float) -> list[str]:
    """The group's members, asking again while the broker has no coordinator for it; none after `wait_s`."""
    from aiokafka.errors import KafkaError

    from streams.kafka.topics import group_members

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await group_members(bootstrap, group)
        except KafkaError as exc:
            if time.monotonic() >= deadline:
                log.warning("could not describe consumer group %s (%s): starting without the check", group, exc)
                return []
            await asyncio.sleep(GROUP_POLL_S)


def _keep_log_levels(level: str) -> None:
    """mode's Worker installs its own logging at start; keep our explicit levels afterwards too."""
    import mode

    original = mode.Worker._setup_logging

    def setup_logging(self: object) -> None:
        original(self)
        configure_logging(level)

    mode.Worker._setup_logging = setup_logging  # type: ignore[method-assign]
