"""Metrics: sum the partial snapshots of every source partition per (channel, window), publish
`metrics.channel` and `metrics.campaign` at most about once a second per key, and a final
message when event time has passed a window's end by ALLOWED_LATENESS.

The latest channel messages also go to the store for `GET /api/v1/kpis`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from streams.core.kpis import Figures, metrics_message
from streams.core.windows import ChannelWindow, channel_figures, is_closed, parse_partial_key
from streams.kafka.skipped_records import SkippedRecordGuard
from streams.kafka.topics import json_arrays
from streams.stages.topology import APP_ID, Wiring, may_write

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05
PUBLISH_INTERVAL_S = 1.0
KPI_NAMESPACE = "kpis"
SNAPSHOT_MESSAGE_BYTES = 256 * 1024  # partial snapshots per message, as a JSON array (Kafka's limit: 1 MiB)


async def send_partial_snapshots(w: Wiring, table: Any, keys: set[str], stream_time: int, source: str = "") -> None:
    """The partials of `table` named by `keys` (partition|window|channel) as absolute snapshots for this stage:
    JSON arrays, a message per metrics partition (that of their channels) and SNAPSHOT_MESSAGE_BYTES, so that
    Faust's per-message cost is paid once per array on both sides. Each carries its partial's sequence marks (an
    older snapshot is then ignored, `ChannelWindow.offer`); `source` prefixes the partition in the snapshot's
    source name (refund partials are sources of their own)."""
    by_partition: dict[int, list[bytes]] = {}
    for key in sorted(keys):
        row = table.row(key)
        if row is None:
            continue
        partition, window, channel = parse_partial_key(key)
        snapshot = {"p": f"{source}{partition}" if source else partition, "w": window, "c": channel,
                    "wm": stream_time, "m": row[:2], "f": row[2]}
        by_partition.setdefault(w.partition_of(channel), []).append(orjson.dumps(snapshot))
    for partition, snapshots in by_partition.items():
        for value in json_arrays(snapshots, SNAPSHOT_MESSAGE_BYTES):
            await w.partials_topic.send(value=value, partition=partition)


class MetricsStage:
    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.watermark = 0
        self.dirty: set[str] = set()
        self.published: dict[str, Figures] = {}  # "channel|window|campaign" -> last figures sent
        self.latest: dict[str, dict[int, dict[str, Any]]] = {}  # channel -> window -> message
        self.latest_dirty = False
        self.store_down = False  # the outage is logged once, when it starts, and once when it ends

    def absorb_batch(self, batch: list[Any]) -> None:
        """Messages of partial snapshots: a list of them, or one alone (the form before lists, still read)."""
        s = self.w.settings
        windows: dict[str, ChannelWindow] = {}
        for event in batch:
            value = orjson.loads(event.message.value)
            for snapshot in value if isinstance(value, list) else [value]:
                self.watermark = max(self.watermark, snapshot["wm"])
                if is_closed(snapshot["w"], s.metrics_window_ms, self.watermark, s.allowed_lateness_ms):
                    continue  # that window has closed: a late snapshot changes nothing
                key = f"{snapshot['c']}|{snapshot['w']}"
                window = windows.get(key)
                if window is None:
                    window = windows[key] = ChannelWindow.from_row(self.w.channel_windows.get(key))
                if not window.offer(str(snapshot["p"]), snapshot.get("m"), snapshot["f"]):
                    self.w.metrics.stale_snapshots.inc()
        self.w.channel_windows.put_rows({key: window.to_row() for key, window in windows.items()})
        self.dirty.update(windows)

    def republish(self, partitions: set[int]) -> None:
        """After recovery: publish every restored window once more, in case a crash came between
        the table write and the message (a later message for a key and window replaces the earlier)."""
        for key in list(self.w.channel_windows.data.keys()):
            if self.w.partition_of(key.rsplit("|", 1)[0]) in partitions:
                self.dirty.add(key)

    def owned_keys(self) -> Callable[[str], bool]:
        """Whether a channel window ("channel|window") is on a metrics partition this worker owns now. Rows of a
        partition given away stay in memory (Faust's memory store drops only the rows it recovered), and a worker
        that was paused past its session (a zombie) marks windows dirty from the old snapshots it reads on waking:
        neither may be published, or an older figure would become the latest message of its key."""
        owned, partition_of = self.w.assigned(self.w.partials_topic.get_topic_name()), self.w.partition_of
        return lambda key: partition_of(key.rsplit("|", 1)[0]) in owned

    async def publish(self) -> None:
        if not may_write(self.w):  # figures of a worker that may have lost its partitions stay unpublished
            return
        s, owned = self.w.settings, self.owned_keys()
        closing = [
            key for key in self.w.channel_windows.data
            if is_closed(int(key.rsplit("|", 1)[1]), s.metrics_window_ms, self.watermark, s.allowed_lateness_ms)
            and owned(key)
        ]
        dirty, self.dirty = {key for key in self.dirty if owned(key)} - set(closing), set()
        for key in sorted(dirty):
            await self.publish_window(key, final=False)
        for key in closing:
            await self.publish_window(key, final=True)
        self.w.channel_windows.put_rows(dict.fromkeys(closing))
        await self.w.channel_windows.send_changes()
        await self.save_latest()

    async def publish_window(self, key: str, final: bool) -> None:
        row = self.w.channel_windows.get(key)
        if row is None:
            return
        channel, window = key.rsplit("|", 1)
        start, window_ms = int(window), self.w.settings.metrics_window_ms
        campaigns = ChannelWindow.from_row(row).campaign_figures()
        for campaign, figures in sorted(campaigns.items()):
            seen_key = f"{key}|{campaign}"
            if final or self.published.get(seen_key) != figures:
                message = metrics_message(channel, campaign, start, window_ms, final, figures)
                await self.w.metrics_campaign.send(key=f"{channel}/{campaign}".encode(), value=orjson.dumps(message))
                self.published[seen_key] = figures
        total = channel_figures(campaigns)
        if final or self.published.get(key) != total:
            message = metrics_message(channel, None, start, window_ms, final, total)
            await self.w.metrics_channel.send(key=channel.encode(), value=orjson.dumps(message))
            self.published[key] = total
            self.remember_latest(channel, start, message)
        if final:
            for seen_key in [k for k in self.published if k == key or k.startswith(key + "|")]:
                del self.published[seen_key]

    def remember_latest(self, channel: str, start: int, message: dict[str, Any]) -> None:
        windows = self.latest.setdefault(channel, {})
        windows[start] = message
        for old in sorted(windows)[:-2]:
            del windows[old]
        self.latest_dirty = True

    async def save_latest(self) -> None:
        if not self.latest_dirty:
            return
        self.latest_dirty = False
        items = {
            channel: orjson.dumps([windows[w] for w in sorted(windows)]) for channel, windows in self.latest.items()
        }
        try:
            await self.w.store.put_latest(KPI_NAMESPACE, items)
        except Exception as exc:  # noqa: BLE001 - the read API is stale until the store is back
            if not self.store_down:
                log.warning("could not save the latest KPIs to the store (%s): retrying until it is back", exc)
            self.store_down = True
            self.latest_dirty = True
            return
        if self.store_down:
            log.warning("store is back: the latest KPIs are saved again")
            self.store_down = False


def register(w: Wiring) -> None:
    stage = MetricsStage(w)
    w.state["metrics"] = stage
    w.channel_windows.recovered_callbacks.append(stage.republish)

    guard = SkippedRecordGuard(w.app, w.bootstrap, w.partials_topic.get_topic_name(), APP_ID)

    @w.app.agent(w.partials_topic, name="metrics")
    async def metrics(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                stage.absorb_batch(await guard(batch))
                await w.channel_windows.send_changes()  # before the batch's snapshots are acknowledged

    @w.app.timer(PUBLISH_INTERVAL_S, name="publish-metrics")
    async def publish() -> None:
        await stage.publish()
