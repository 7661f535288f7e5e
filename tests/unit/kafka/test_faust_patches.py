"""The worker consumer Faust builds gets the engine's fetch limits (streams.kafka.faust_patches.set_fetch_limits)."""

from __future__ import annotations

from streams.config import Settings
from streams.serving.store import open_store
from streams.stages.app import build
from streams.stages.topology import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES


async def test_the_worker_consumer_waits_for_the_engine_s_fetch_size_or_its_wait_not_faust_s_1_5_s() -> None:
    wiring = build(Settings.from_env({"TOPIC_PARTITIONS": "4"}), "127.0.0.1:1", open_store(None))
    consumer = wiring.app.consumer._thread._create_worker_consumer(wiring.app.transport)
    try:
        assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
    finally:
        await consumer.stop()
