"""Switch-off signals (CONTRACT.md section 7). Pure: no Kafka, no clock.

Every channel and every `channel/campaign` is judged on the trailing SIGNAL_WINDOW of event
time: the metric windows that end after the key's latest event time minus SIGNAL_WINDOW. The
key's latest event time is the end of the newest metric window it has figures in (a window's
events are at or before its end), so the span is `(latest window end - SIGNAL_WINDOW, latest
window end]`. Where the span's spend is at least SIGNAL_MIN_SPEND, ROMI = (gross profit -
spend) / spend decides: under ROMI_FLOOR `pause`, at or over ROMI_SCALE `scale`, else `keep`.
Under the minimum spend there is no judgement and the key keeps its last action (a paused
campaign that stops spending stays paused). A message goes out only when the action changes.

A key's state is one small row (`KeyState.to_row`): its latest figures per metric window inside
the span (a later message for a window replaces the earlier), its action, and the input offset
of the last metric message it absorbed, so a replay after a restart changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from streams.core.kpis import ratio

Action = Literal["pause", "keep", "scale"]
ACTIONS: tuple[Action, ...] = ("pause", "keep", "scale")
ROUND_DIGITS = 9
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


class Thresholds(NamedTuple):
    window_ms: int  # SIGNAL_WINDOW
    min_spend: float  # SIGNAL_MIN_SPEND
    romi_floor: float  # ROMI_FLOOR
    romi_scale: float  # ROMI_SCALE

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        return cls(settings.signal_window_ms, settings.signal_min_spend, settings.romi_floor, settings.romi_scale)


class Span(NamedTuple):
    start: int
    end: int
    spend: float
    revenue: float
    gross_profit: float

    @property
    def roi(self) -> float | None:
        return ratio(self.revenue - self.spend, self.spend)

    @property
    def romi(self) -> float | None:
        return ratio(self.gross_profit - self.spend, self.spend)


class KeyState(NamedTuple):
    channel: str
    campaign: str | None  # None for a channel-level key
    action: Action | None = None
    latest_end: int = 0
    windows: dict[str, list[float]] = {}  # str(window_start) -> [window_end, spend, revenue, gross_profit]
    offset: tuple[int, int] | None = None  # (partition, offset) of the last metric message absorbed

    @property
    def key(self) -> str:
        """The key on topic `signals`: `channel` or `channel/campaign`."""
        return self.channel if self.campaign is None else f"{self.channel}/{self.campaign}"

    def to_row(self) -> list[Any]:
        return [self.channel, self.campaign, self.action, self.latest_end, self.windows,
                list(self.offset) if self.offset else None]

    @classmethod
    def from_row(cls, row: list[Any]) -> KeyState:
        channel, campaign, action, latest_end, windows, offset = row
        return cls(channel, campaign, action, latest_end, dict(windows), tuple(offset) if offset else None)

    def seen(self, partition: int, offset: int) -> bool:
        """This metric message (or a later one of its partition) was absorbed before."""
        return self.offset is not None and self.offset[0] == partition and offset <= self.offset[1]

    def absorb(self, message: Mapping[str, Any], window_ms: int, position: tuple[int, int] | None = None) -> KeyState:
        """Take a `metrics.channel` / `metrics.campaign` message: it replaces the figures of its window."""
        end = int(message["window_end"])
        latest = max(self.latest_end, end)
        span_start = latest - window_ms
        windows = {k: v for k, v in self.windows.items() if v[0] > span_start}
        if end > span_start:
            windows[str(int(message["window_start"]))] = [
                end, float(message["spend"]), float(message["revenue"]), float(message.get("gross_profit") or 0.0)
            ]
        return self._replace(latest_end=latest, windows=windows, offset=position or self.offset)

    def span(self, window_ms: int) -> Span:
        start = self.latest_end - window_ms
        inside = [v for v in self.windows.values() if v[0] > start]
        return Span(start, self.latest_end, *(_clean(sum(v[i] for v in inside)) for i in (1, 2, 3)))


def decide(span: Span, t: Thresholds) -> Action | None:
    """The action the span calls for, or None where its spend is under the minimum (no signal)."""
    romi = span.romi
    if romi is None or span.spend < t.min_spend:
        return None
    if romi < t.romi_floor:
        return "pause"
    if romi >= t.romi_scale:
        return "scale"
    return "keep"


def reason(action: Action, span: Span, t: Thresholds) -> str:
    romi = span.romi or 0.0
    if action == "pause":
        why = f"under floor {t.romi_floor:g}"
    elif action == "scale":
        why = f"at or over scale {t.romi_scale:g}"
    else:
        why = f"between floor {t.romi_floor:g} and scale {t.romi_scale:g}"
    return f"romi {romi:.2f} {why} on spend {span.spend:.2f} over {format_duration(t.window_ms)}"


class Verdict(NamedTuple):
    state: KeyState  # with the new action when it changed
    message: dict[str, Any] | None  # the `signals` message; None while the action is unchanged


def judge(state: KeyState, t: Thresholds) -> Verdict:
    span = state.span(t.window_ms)
    action = decide(span, t)
    if action is None or action == state.action:
        return Verdict(state, None)
    message = {
        "channel": state.channel,
        "campaign": state.campaign,
        "action": action,
        "reason": reason(action, span, t),
        "span_start": span.start,
        "span_end": span.end,
        "spend": span.spend,
        "revenue": span.revenue,
        "gross_profit": span.gross_profit,
        "roi": span.roi,
        "romi": span.romi,
    }
    return Verdict(state._replace(action=action), message)


class Settling:
    """A new action is announced only once the judgement has called for it for `settle_s` of wall
    clock. Spend is counted as it arrives, the orders it paid for only after ATTRIBUTION_GRACE, so
    a channel's figures can call for `pause` for a second or two and then for `keep` again; a budget
    decision must not follow that. In memory: after a restart a change just settles again."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.since: dict[str, tuple[Action, float]] = {}  # key -> (the action called for, since when)

    def settled(self, key: str, wanted: Action | None, current: Action | None, now: float) -> bool:
        """Whether `wanted` (the judgement now) is to be announced in place of `current`."""
        if wanted is None or wanted == current:
            self.since.pop(key, None)
            return False
        action, since = self.since.get(key, (None, now))
        if action != wanted:
            self.since[key] = (wanted, now)
            return self.settle_s <= 0
        return now - since >= self.settle_s

    def waiting(self) -> set[str]:
        """Keys with a change still settling: they are judged again even when no figures change."""
        return set(self.since)

    def forget(self, key: str) -> None:
        self.since.pop(key, None)


def format_duration(ms: int) -> str:
    """Milliseconds -> the largest unit that divides them: 3600000 -> `1h`, 90000 -> `90s`."""
    for unit, size in _UNITS:
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _clean(value: float) -> float:
    return round(value, ROUND_DIGITS) + 0.0
