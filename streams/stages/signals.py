"""Switch-off signals: judge every channel and channel/campaign on its trailing SIGNAL_WINDOW.

    metrics.channel (by channel) · metrics.campaign (by channel/campaign)
            │ signals: latest figures per key and window (streams.core.signals), one table row per key
            ▼
    signals (key = channel or channel/campaign), attribution_signal{channel,campaign,action}

The table is keyed like the metric topics, so each worker judges the keys whose partitions it
reads. Keys are judged at most once a second, and only when a metric message changed them; a
message goes to `signals` only when the key's action changes and the new one has held for the
settle time (`streams.core.signals.Settling`: twice the grace plus two seconds). The action is kept in the key's
row, so a restarted worker does not announce again what it already announced. A key with no
figures for SIGNAL_WINDOW + ALLOWED_LATENESS of event time is forgotten, with its gauge.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from streams.core.signals import ACTIONS, KeyState, Settling, Thresholds, judge
from streams.kafka.skipped_records import SkippedRecordGuards
from streams.kafka.topics import METRICS_CAMPAIGN_TOPIC, METRICS_CHANNEL_TOPIC
from streams.stages.topology import APP_ID, Wiring, may_write

log = logging.getLogger(__name__)
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.05
JUDGE_INTERVAL_S = 1.0
SWEEP_INTERVAL_S = 30.0
CHANNEL_PREFIX = "c|"  # table key of a channel-level key: c|<channel>
CAMPAIGN_PREFIX = "k|"  # table key of a campaign-level key: k|<channel>/<campaign>


def key_partition(key: str, partition_of: Any) -> int:
    """A `signal-keys` row lives on the partition of its metric topic key."""
    return partition_of(key[2:])


class SignalStage:
    def __init__(self, w: Wiring, clock: Callable[[], float] = time.monotonic) -> None:
        self.w = w
        self.clock = clock
        self.settling = Settling(2 * w.settings.attribution_grace_ms / 1000 + 2 * JUDGE_INTERVAL_S)
        self.table = w.signal_keys
        self.thresholds = Thresholds.from_settings(w.settings)
        self.allowed_lateness_ms = w.settings.allowed_lateness_ms
        self.dirty: set[str] = set()
        self.gauged: dict[str, tuple[str, str]] = {}  # table key -> (channel, campaign label)

    def absorb_batch(self, batch: list[Any]) -> None:
        states: dict[str, KeyState] = {}
        window_ms = self.thresholds.window_ms
        for event in batch:
            message = event.message
            value = orjson.loads(message.value)
            if message.topic == METRICS_CHANNEL_TOPIC:
                key, campaign = CHANNEL_PREFIX + value["channel"], None
            else:
                campaign = value["campaign"]
                key = f"{CAMPAIGN_PREFIX}{value['channel']}/{campaign}"
            state = states.get(key)
            if state is None:
                row = self.table.get(key)
                state = KeyState.from_row(row) if row else KeyState(value["channel"], campaign)
            if state.seen(message.partition, message.offset):
                continue  # absorbed before a restart
            states[key] = state.absorb(value, window_ms, (message.partition, message.offset))
        self.table.put_rows({key: state.to_row() for key, state in states.items()})
        self.dirty.update(states)

    def owned(self) -> set[int]:
        return self.w.assigned(METRICS_CHANNEL_TOPIC) | self.w.assigned(METRICS_CAMPAIGN_TOPIC)

    async def judge(self) -> None:
        """Announce the settled changes of the keys this worker owns now; nothing while the zombie fence is shut
        (`may_write`): a woken worker judges from figures older than its keys' new owner's."""
        if not may_write(self.w):
            return
        owned, partition_of = self.owned(), self.w.partition_of
        changed, self.dirty = self.dirty | self.settling.waiting(), set()
        dirty = set()
        for key in changed:
            if key_partition(key, partition_of) in owned:
                dirty.add(key)
            else:
                self.settling.forget(key)
        now = self.clock()
        for key in sorted(dirty):
            row = self.table.get(key)
            if not row:
                self.settling.forget(key)
                continue
            state = KeyState.from_row(row)
            verdict = judge(state, self.thresholds)
            wanted = None if verdict.message is None else verdict.message["action"]
            if not self.settling.settled(key, wanted, state.action, now) or verdict.message is None:
                continue
            self.settling.forget(key)
            # Announce first, then remember: a crash in between announces again rather than never.
            await self.w.signals.send(key=state.key.encode(), value=orjson.dumps(verdict.message))
            self.table.put_rows({key: verdict.state.to_row()})
            await self.table.send_changes()
            self.set_gauge(key, verdict.state)
            log.info("signal %s: %s (%s)", state.key, verdict.message["action"], verdict.message["reason"])

    def sweep(self) -> None:
        """Forget keys that had no figures for SIGNAL_WINDOW + ALLOWED_LATENESS of event time behind the
        newest key this worker judges (no message can change their span any more): campaigns come and
        go, and the table must not keep every one ever seen. Their gauges go with them."""
        owned = self.owned()
        rows = {key: row for key, row in self.table.data.items() if row and key_partition(key, self.w.partition_of)
                in owned}
        if not rows:
            return
        horizon = max(row[3] for row in rows.values()) - self.thresholds.window_ms - self.allowed_lateness_ms
        for key, row in rows.items():
            if row[3] < horizon:
                self.table.put_rows({key: None})
                self.dirty.discard(key)
                self.settling.forget(key)
                self.remove_gauge(key)

    def remove_gauge(self, key: str) -> None:
        labels = self.gauged.pop(key, None)
        if labels is not None:
            for action in ACTIONS:
                with contextlib.suppress(KeyError):
                    self.w.metrics.signal.remove(*labels, action)

    def set_gauge(self, key: str, state: KeyState) -> None:
        """Campaign labels are capped per channel like the counters' (CAMPAIGN_LABEL_CAP, then `(other)`)."""
        m = self.w.metrics
        labels = (state.channel, "" if state.campaign is None else m.campaign(state.channel, state.campaign))
        for action in ACTIONS:
            m.signal.labels(*labels, action).set(1.0 if action == state.action else 0.0)
        self.gauged[key] = labels

    def recovered(self, partitions: set[int]) -> None:
        """After a rebalance: gauges for the keys this worker owns now, none for the others."""
        owned = {}
        for key, row in list(self.table.data.items()):
            if self.w.partition_of(key[2:]) in partitions and row:
                owned[key] = KeyState.from_row(row)
        for key in [k for k in self.gauged if k not in owned]:
            self.remove_gauge(key)
        for key, state in owned.items():
            if state.action is not None:
                self.set_gauge(key, state)


def register(w: Wiring) -> None:
    stage = SignalStage(w)
    w.state["signals"] = stage
    w.signal_keys.recovered_callbacks.append(stage.recovered)

    guard = SkippedRecordGuards(w.app, w.bootstrap, w.signal_inputs.topics, APP_ID)

    @w.app.agent(w.signal_inputs, name="signals")
    async def signals(stream: Any) -> None:
        async with guard:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                stage.absorb_batch(await guard(batch))
                await w.signal_keys.send_changes()  # before the batch's events are acknowledged

    @w.app.timer(JUDGE_INTERVAL_S, name="judge-signals")
    async def judge_signals() -> None:
        await stage.judge()

    @w.app.timer(SWEEP_INTERVAL_S, name="sweep-signal-keys")
    async def sweep() -> None:
        stage.sweep()
        await w.signal_keys.send_changes()
