"""Event-time tumbling windows and the two-stage sums behind the metric topics. Pure.

Stage one (the journeys agent) keeps one `Partial` per (source partition, window, channel):
figures per campaign plus the highest input sequence it has absorbed, separately for
touchpoints/spend and for conversions (they are absorbed at different times: conversions
after the grace). A contribution whose sequence is not above the mark was absorbed before
a restart and is skipped, so a replay never counts twice.

Stage two (the metrics agent) keeps, per (channel, window), the latest snapshot of every
source partition's Partial and sums them: snapshots overwrite, they never add up twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.core.kpis import Figures

FIGURE_COUNT = len(Figures._fields)
(IMPRESSIONS, CLICKS, LEADS, ORDERS, NEW_CUSTOMERS, REVENUE, SPEND, GROSS_PROFIT, SUSPECT_CLICKS, REFUNDS,
 REFUNDED_REVENUE) = range(FIGURE_COUNT)
WHOLE_COUNTS = frozenset((IMPRESSIONS, CLICKS, SUSPECT_CLICKS))  # events, not credit: published as integers


def window_start(ts: int, window_ms: int) -> int:
    return ts - ts % window_ms


def is_closed(window: int, window_ms: int, watermark: int, allowed_lateness_ms: int) -> bool:
    """Event time has passed the window's end by the allowed lateness: it takes nothing more."""
    return watermark >= window + window_ms + allowed_lateness_ms


@dataclass
class Partial:
    touch_seq: int = -1
    conversion_seq: int = -1
    campaigns: dict[str, list[float]] = field(default_factory=dict)

    def to_row(self) -> list[Any]:
        return [self.touch_seq, self.conversion_seq, self.campaigns]

    @classmethod
    def from_row(cls, row: list[Any] | None) -> Partial:
        if not row:
            return cls()
        partial = cls(*row)
        for figures in partial.campaigns.values():  # a row written before figures were added (suspect clicks, refunds)
            if len(figures) < FIGURE_COUNT:
                figures.extend([0.0] * (FIGURE_COUNT - len(figures)))
        return partial

    def add(self, campaign: str, index: int, amount: float) -> None:
        figures = self.campaigns.get(campaign)
        if figures is None:
            figures = self.campaigns[campaign] = [0.0] * FIGURE_COUNT
        figures[index] += amount

    def add_touch(self, campaign: str, index: int, cost: float) -> None:
        """An impression or click (`index`) and its cost: `add` twice, in one call."""
        figures = self.campaigns.get(campaign)
        if figures is None:
            figures = self.campaigns[campaign] = [0.0] * FIGURE_COUNT
        figures[index] += 1
        figures[SPEND] += cost


def partial_key(partition: int, window: int, channel: str) -> str:
    return f"{partition}|{window}|{channel}"


def parse_partial_key(key: str) -> tuple[int, int, str]:
    partition, window, channel = key.split("|", 2)
    return int(partition), int(window), channel


@dataclass
class ChannelWindow:
    """Stage two: the latest snapshot per source partition of one channel in one window, with the partial's
    sequence marks (touchpoints, conversions) it was taken at.

    A partial's marks only grow, so a snapshot with a mark below the one held is older than it: a worker paused past
    its session (a zombie) that wakes and sends what it had, or a restarted one before its replay caught up. It is
    ignored (`offer`), so figures never go back. Snapshots without marks (written before they had them) are taken.
    """

    sources: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    marks: dict[str, list[int]] = field(default_factory=dict)  # source partition -> [touch_seq, conversion_seq]

    def to_row(self) -> list[Any]:
        return [self.sources, self.marks]

    @classmethod
    def from_row(cls, row: list[Any] | dict[str, Any] | None) -> ChannelWindow:
        if isinstance(row, list):
            return cls(row[0], row[1])
        return cls(row or {})  # the form before marks: the sources alone

    def offer(self, source: str, marks: list[int] | None, campaigns: dict[str, list[float]]) -> bool:
        """Hold this snapshot of `source` unless it is older than the one held; False when ignored."""
        held = self.marks.get(source)
        if marks is not None and held is not None and (marks[0] < held[0] or marks[1] < held[1]):
            return False
        self.sources[source] = campaigns
        if marks is None:
            self.marks.pop(source, None)
        else:
            self.marks[source] = marks
        return True

    def campaign_figures(self) -> dict[str, Figures]:
        totals: dict[str, list[float]] = {}
        for campaigns in self.sources.values():
            for campaign, figures in campaigns.items():
                total = totals.setdefault(campaign, [0.0] * FIGURE_COUNT)
                for i, value in enumerate(figures):
                    total[i] += value
        return {campaign: _figures(values) for campaign, values in totals.items()}


def partial_row_older(held: list[Any], row: list[Any]) -> bool:
    """A partial's row made from older state than the one held (a mark below it): a zombie's late changelog record.
    A partial's marks only grow, so a later row of the same partial never has a lower one."""
    return bool(held) and bool(row) and (row[0] < held[0] or row[1] < held[1])


def channel_window_row_older(held: Any, row: Any) -> bool:
    """A channel window's row that holds a source at lower marks than the one held, or lacks one held (a source
    is never taken out): made from older state, a zombie's late changelog record (`ChannelWindow.offer`)."""
    held_marks, marks = ChannelWindow.from_row(held).marks, ChannelWindow.from_row(row).marks
    for source, mark in held_marks.items():
        now = marks.get(source)
        if now is None or now[0] < mark[0] or now[1] < mark[1]:
            return True
    return False


def channel_figures(campaigns: dict[str, Figures]) -> Figures:
    total = Figures()
    for figures in campaigns.values():
        total = total + figures
    return total


def _figures(values: list[float]) -> Figures:
    return Figures(*(int(round(value)) if i in WHOLE_COUNTS else value for i, value in enumerate(values)))
