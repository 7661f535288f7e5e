"""Push the worker's metrics to a Prometheus Pushgateway (CONTRACT.md section 6).

For deployments where Prometheus cannot reach the workers: every 15 s each worker pushes its
registry to `PROMETHEUS_PUSHGATEWAY`, grouped by job `attribution` and its own instance name,
and deletes its group on a clean shutdown so a stopped worker leaves no stale series behind.
"""

from __future__ import annotations

import asyncio
import logging

from mode import Service
from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway

log = logging.getLogger(__name__)
JOB = "attribution"
PUSH_INTERVAL_S = 15.0


class Pusher(Service):
    def __init__(self, gateway: str, instance: str, registry: CollectorRegistry, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.grouping = {"instance": instance}
        self.registry = registry
        self.failing = False

    async def push(self) -> None:
        try:
            await asyncio.to_thread(
                push_to_gateway, self.gateway, job=JOB, registry=self.registry, grouping_key=self.grouping, timeout=5
            )
            if self.failing:
                log.warning("pushing metrics to %s works again", self.gateway)
            self.failing = False
        except OSError as exc:
            if not self.failing:
                log.warning("cannot push metrics to the Pushgateway %s: %s (will keep trying)", self.gateway, exc)
            self.failing = True

    @Service.task
    async def _push_periodically(self) -> None:
        while not self.should_stop:
            await self.push()
            await self.sleep(PUSH_INTERVAL_S)

    async def on_stop(self) -> None:
        try:
            await asyncio.to_thread(
                delete_from_gateway, self.gateway, job=JOB, grouping_key=self.grouping, timeout=5
            )
        except OSError as exc:
            log.warning("could not delete this worker's group from the Pushgateway: %s", exc)
