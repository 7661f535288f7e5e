"""The zombie fence: no changelog record from a worker that may no longer own its partitions.

A worker stopped past its consumer group's session timeout (SIGSTOP, a frozen VM, a long pause) loses its
partitions to another worker; when it wakes, its timers and its agents run before its consumer learns of the
rebalance, and what they write to the tables' changelogs would land after the new owner's records (a row
older than the new owner's, restored by whoever recovers the partition next). Kafka fences such writes only
with transactions, which this engine does not use (DESIGN.md), so the worker fences itself:

- It may write while its consumer's membership is known to be alive: a generation that Faust has seen the
  assignment of, and a heartbeat that succeeded (or a join that completed) less than `LIVE_FRACTION` of the
  session timeout ago. The broker drops a member only a full session timeout after the last heartbeat it
  received, so a worker that may write is still a member (`GroupFence.is_open`). The monotonic clock runs on
  through SIGSTOP, so a zombie is fenced the moment it wakes.
- While the fence is closed, `KeyPartitionedTable.send_changes` holds its queued records, and its caller waits:
  the journeys agent acknowledges its input only after its records are handed over, so no input offset is
  committed past rows that are not on the changelog.
- When it opens again in the same generation, the member was never dropped: the held records go out. In a new
  generation, the records of a partition that is no longer this worker's are dropped (its new owner reads the
  changelog and the input since the last commit, and redoes them); those of a partition that it kept go out
  only if nobody wrote its changelog meanwhile (its end offset is where this worker's own last record, or its
  last recovery, left it), and are dropped otherwise (`GroupFence` tells the table; `KeyPartitionedTable.
  release_held`). Dropped records are counted (`attribution_fenced_changelog_records_total`).
- The stages attribute nothing and publish no snapshot, metric or signal message while the fence is shut, nor in a
  new generation before its recovery of the journeys completed (`streams.stages.topology.may_write`); and then
  only for the partitions they own: what a woken worker read before it learnt of the rebalance marks keys changed
  that another worker owns now, from figures older than that worker's.

aiokafka keeps a member's last successful heartbeat in a local variable of `GroupCoordinator._heartbeat_routine`;
`track_group_liveness` records it on the coordinator (the time the heartbeat was sent) and the start of every
completed join.

Not covered: records handed to the Kafka client before the pause and still in its accumulator go out when the
worker wakes, before any check can run. Recovery skips those of the partials and channel windows by their sequence
marks (`KeyPartitionedTable.apply_changelog_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

ALIVE_AT = "_attribution_alive_at"
LIVE_FRACTION = 0.8  # of the session timeout: a join's completion is seen a little after the broker's clock starts
NO_GENERATION = -1  # aiokafka's generation before a join, and after the broker said the member was gone


def track_group_liveness() -> None:
    """Record on aiokafka's group coordinator when its member was last known alive: the send time of the last
    heartbeat that succeeded, and the start of the last completed join (before Faust hears of the assignment)."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    if getattr(GroupCoordinator._do_heartbeat, "tracks_liveness", False):
        return
    do_heartbeat = GroupCoordinator._do_heartbeat
    on_join_complete = GroupCoordinator._on_join_complete

    async def _do_heartbeat(self: Any) -> bool:
        sent = time.monotonic()
        ok = await do_heartbeat(self)
        if ok:
            setattr(self, ALIVE_AT, sent)
        return bool(ok)

    async def _on_join_complete(self: Any, *args: Any, **kwargs: Any) -> Any:
        setattr(self, ALIVE_AT, time.monotonic())
        return await on_join_complete(self, *args, **kwargs)

    _do_heartbeat.tracks_liveness = True  # type: ignore[attr-defined]
    GroupCoordinator._do_heartbeat = _do_heartbeat  # type: ignore[method-assign]
    GroupCoordinator._on_join_complete = _on_join_complete  # type: ignore[method-assign]


class GroupFence:
    """Whether the worker's Faust app may write its changelogs now, judged from its consumer's group membership."""

    def __init__(self, app: Any, session_timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 on_dropped: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.live_s = session_timeout_s * LIVE_FRACTION
        self.clock = clock
        self.on_dropped = on_dropped  # (table name, records dropped)

    def coordinator(self) -> Any:
        """The worker consumer's aiokafka group coordinator; None before the consumer started (nothing to fence)."""
        consumer = getattr(self.app, "_consumer", None)
        client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
        return getattr(client, "_coordinator", None)

    def generation(self) -> Any:
        """The generation whose assignment Faust has applied (the one the tables' rows were made under)."""
        return getattr(self.app, "consumer_generation_id", None)

    def is_open(self) -> bool:
        coordinator = self.coordinator()
        if coordinator is None:
            return True
        alive_at = getattr(coordinator, ALIVE_AT, None)
        generation = coordinator.generation
        return (generation != NO_GENERATION and generation == self.generation() and alive_at is not None
                and self.clock() - alive_at < self.live_s)

    def assigned(self, tp: Any) -> bool:
        return tp in self.app.assignor.assigned_actives()

    async def end_offset(self, tp: Any) -> int:
        return int((await self.app.consumer.highwaters(tp))[tp])

    def dropped(self, table: str, count: int) -> None:
        if self.on_dropped is not None:
            self.on_dropped(table, count)
