"""`attribution worker`: the Faust worker, on the configured Kafka or the embedded broker."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from argparse import Namespace
from pathlib import Path

from streams.config import Settings
from streams.serving.prometheus import configure_logging

log = logging.getLogger(__name__)
EMBEDDED_SESSION_TIMEOUT_S = 3.0  # Tansu makes a group join wait out the session timeout
# The worker's state is millions of small lists (journey rows), every one tracked by the cyclic garbage
# collector, and each batch allocates thousands more. With CPython's default thresholds (700, 10, 10) the
# collector took about 45% of the journeys stage's time (bench data, offline: 36k events/s absorbed, 62k with
# these). The state holds no reference cycles, so collecting young objects far less often loses nothing.
GC_THRESHOLDS = (100_000, 50, 100)


def run(settings: Settings, args: Namespace | None = None) -> int:
    import faust

    from streams.kafka.embedded_broker import resolve_bootstrap
    from streams.serving.store import open_store
    from streams.stages.app import build

    configure_logging(settings.log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    bootstrap, embedded = resolve_bootstrap(settings)
    try:
        try:
            asyncio.run(prepare_topics(bootstrap, settings))
        except (TimeoutError, PartitionMismatch) as exc:
            print(f"attribution worker: {exc}", file=sys.stderr)
            return 1
        session_timeout = settings.kafka_session_timeout_ms / 1000
        if embedded is not None:
            session_timeout = min(session_timeout, EMBEDDED_SESSION_TIMEOUT_S)
        wiring = build(settings, bootstrap, open_store(settings.redis_url), session_timeout)
        if settings.state_store == "rocksdb":
            from streams.kafka.rocksdb_store import (
                claim_empty_state_dir,  # Faust's RocksDB module only where it is used
            )

            try:
                wiring.state["state-dir-lock"] = claim_empty_state_dir(Path(wiring.app.conf.tabledir))
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


async def prepare_topics(bootstrap: str, settings: Settings) -> None:
    """Wait for Kafka, create every topic the engine uses, and check the co-partitioned ones agree."""
    from streams.kafka.topics import PUBLIC_TOPICS, ensure_topics, partition_counts, wait_for_broker
    from streams.stages.topology import CHANGELOG_TOPICS, CO_PARTITIONED_TOPICS, INTERNAL_TOPICS

    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings.topic_partitions, PUBLIC_TOPICS + INTERNAL_TOPICS, CHANGELOG_TOPICS)
    counts = await partition_counts(bootstrap, CO_PARTITIONED_TOPICS)
    wrong = {name: n for name, n in counts.items() if n != settings.topic_partitions}
    if wrong:
        found = ", ".join(f"{name} has {n}" for name, n in sorted(wrong.items()))
        raise PartitionMismatch(
            f"TOPIC_PARTITIONS={settings.topic_partitions} but {found} partitions; the engine's state is "
            "partitioned like these topics: set TOPIC_PARTITIONS to match, or recreate the topics"
        )


class PartitionMismatch(RuntimeError):
    pass


def _keep_log_levels(level: str) -> None:
    """mode's Worker installs its own logging at start; keep our explicit levels afterwards too."""
    import mode

    original = mode.Worker._setup_logging

    def setup_logging(self: object) -> None:
        original(self)
        configure_logging(level)

    mode.Worker._setup_logging = setup_logging  # type: ignore[method-assign]
