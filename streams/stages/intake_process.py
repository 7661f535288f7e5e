"""`attribution intake`: the intake in a process of its own, for workers run with WORKER_INTAKE=off.

The intake keeps no state (its consumer group `attribution-intake` holds where it is), so it can run
apart from the workers, as many processes as the input topics have partitions: validation and routing
then no longer share a worker's one Python thread with the journeys stage, and the two scale apart.
It serves its counters (invalid events, input consumer lag) on WEB_PORT at `/metrics`, and pushes
them to PROMETHEUS_PUSHGATEWAY when that is set. SIGINT / SIGTERM: it finishes the read in hand,
commits and leaves its group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from argparse import Namespace
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.config import Settings
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics, configure_logging
from streams.stages.topology import instance_name

log = logging.getLogger(__name__)


@dataclass
class StandaloneWiring:
    """The `IntakeWiring` of this process: settings, counters, bootstrap and the partitioner."""

    settings: Settings
    metrics: WorkerMetrics
    bootstrap: str

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.settings.topic_partitions)


def run(settings: Settings, args: Namespace | None = None) -> int:
    from streams.kafka.embedded_broker import resolve_bootstrap
    from streams.stages.worker import PartitionMismatch, tune_runtime

    configure_logging(settings.log_level)
    tune_runtime(settings)
    bootstrap, embedded = resolve_bootstrap(settings)
    try:
        asyncio.run(serve(settings, bootstrap))
        return 0
    except (TimeoutError, PartitionMismatch, OSError) as exc:  # no broker, wrong partitions, port in use
        print(f"attribution intake: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()


async def serve(settings: Settings, bootstrap: str) -> None:
    from streams.serving.pushgateway import Pusher
    from streams.stages.intake import IntakeReader
    from streams.stages.worker import prepare_topics

    await prepare_topics(bootstrap, settings)
    registry = CollectorRegistry()
    wiring = StandaloneWiring(settings, WorkerMetrics(registry, settings.campaign_label_cap), bootstrap)
    services = [IntakeReader(wiring, settings.kafka_session_timeout_ms / 1000)]
    if settings.prometheus_pushgateway:
        services.append(Pusher(settings.prometheus_pushgateway, instance_name(settings), registry))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    site = await serve_metrics(registry, settings.web_port)
    try:
        for service in services:
            await service.start()
        log.warning("intake starting on %s (%d journey partitions, /metrics on port %d)", bootstrap,
                    settings.topic_partitions, settings.web_port)
        await stopping.wait()
    finally:
        for service in reversed(services):
            await service.stop()
        await site.cleanup()


async def serve_metrics(registry: CollectorRegistry, port: int) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - scraped by Prometheus from elsewhere
    except OSError:
        await runner.cleanup()
        raise
    return runner
