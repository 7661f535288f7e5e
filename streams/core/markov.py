"""The data-driven model (CONTRACT.md section 8): an order-1 Markov chain over paths, removal effects
computed exactly with absorbing-chain algebra, and the per-conversion credit they give. Pure.

States: `start`, one per channel, and the two absorbing ends `conversion` and `null`. With Q the
transition probabilities between transient states (start and channels) and r those into `conversion`,
the probabilities x of ending in `conversion` solve (I - Q) x = r; P = x[start]. Removing channel c
sends every transition into c to `null`: its row and column leave Q and r (the rows that led into c
keep their totals, so that share of them now ends in `null`), and P_c = x'[start] of the smaller system.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.core.attribution import Credit, Touchpoint, credits

START = "\x00start"  # a channel name is 1-64 printable characters: these never collide with one
CONVERSION = "\x00conversion"
NULL = "\x00null"
ENDS = (CONVERSION, NULL)
Transition = tuple[str, str]


def path_transitions(channels: Sequence[str], converted: bool) -> list[Transition]:
    """start -> first channel, each consecutive pair (a channel to itself included), last -> conversion or null."""
    if not channels:
        return []
    states = [START, *channels, CONVERSION if converted else NULL]
    return list(zip(states, states[1:], strict=False))


@dataclass
class PathCounts:
    """Transitions of a set of paths, and how many of them there were, converting or null, with their revenue;
    per channel, the converting paths whose last click (`last_click` of section 3) was in it."""

    transitions: Counter[Transition] = field(default_factory=Counter)
    converting: int = 0
    null: int = 0
    revenue: float = 0.0
    last_click: Counter[str] = field(default_factory=Counter)

    @property
    def paths(self) -> int:
        return self.converting + self.null

    def add_path(self, channels: Sequence[str], converted: bool, revenue: float = 0.0, sign: int = 1,
                 last_click: str | None = None) -> None:
        """Add a path (sign -1: take it away again); `last_click` defaults to its last channel."""
        if not channels:
            return
        for transition in path_transitions(channels, converted):
            self.transitions[transition] += sign
        if converted:
            self.converting += sign
            self.revenue += sign * revenue
            self.last_click[last_click or channels[-1]] += sign
        else:
            self.null += sign

    def add(self, other: PathCounts, sign: int = 1) -> None:
        for transition, n in other.transitions.items():
            self.transitions[transition] += sign * n
        self.converting += sign * other.converting
        self.null += sign * other.null
        self.revenue += sign * other.revenue
        for channel, n in other.last_click.items():
            self.last_click[channel] += sign * n

    def is_empty(self) -> bool:
        return self.paths == 0 and not any(self.transitions.values())

    def to_json(self) -> dict[str, Any]:
        return {"t": [[a, b, n] for (a, b), n in sorted(self.transitions.items()) if n],
                "c": self.converting, "n": self.null, "r": self.revenue,
                "l": {channel: n for channel, n in sorted(self.last_click.items()) if n}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> PathCounts:
        if not value:
            return cls()
        return cls(Counter({(a, b): n for a, b, n in value["t"]}), value["c"], value["n"], value["r"],
                   Counter(value.get("l", {})))


def channels_of(transitions: Mapping[Transition, int]) -> list[str]:
    """The channels of the chain, sorted."""
    found = {state for pair in transitions for state in pair if pair and transitions[pair] > 0}
    return sorted(found - {START, *ENDS})


def conversion_probability(transitions: Mapping[Transition, int], channels: Sequence[str],
                           removed: str | None = None) -> float:
    """P (or P_c with `removed`): the probability of reaching `conversion` from `start`, solved exactly."""
    states = [START, *(c for c in channels if c != removed)]
    index = {state: i for i, state in enumerate(states)}
    n = len(states)
    totals = np.zeros(n)
    q = np.zeros((n, n))
    r = np.zeros(n)
    for (source, target), count in transitions.items():
        if count <= 0:
            continue
        if source == removed or source not in index:
            continue
        i = index[source]
        totals[i] += count
        if target == CONVERSION:
            r[i] += count
        elif target in index:
            q[i, index[target]] += count
        # into `null`, or into the removed channel (sent to `null`): only the row total counts it
    if totals[0] == 0:
        return 0.0
    live = totals > 0
    q[live] /= totals[live, None]
    r[live] /= totals[live]
    system = np.eye(n) - q
    try:
        x = np.linalg.solve(system, r)
    except np.linalg.LinAlgError:  # a closed loop of channels with no way out: it never converts
        x = np.linalg.lstsq(system, r, rcond=None)[0]
    return float(min(1.0, max(0.0, x[0])))


def removal_effects(transitions: Mapping[Transition, int]) -> dict[str, float]:
    """RE(c) = 1 - P_c / P for every channel of the chain (0 for all when nothing converts)."""
    channels = channels_of(transitions)
    p = conversion_probability(transitions, channels)
    if p <= 0.0:
        return dict.fromkeys(channels, 0.0)
    return {c: min(1.0, max(0.0, 1.0 - conversion_probability(transitions, channels, c) / p)) for c in channels}


def shares(effects: Mapping[str, float]) -> dict[str, float]:
    """share(c) = RE(c) / sum of RE over channels (0 for all when the sum is 0)."""
    total = sum(effects.values())
    return {c: (re / total if total > 0 else 0.0) for c, re in effects.items()}


def markov_messages(counts: PathCounts, computed_at: int) -> list[dict[str, Any]]:
    """One `metrics.markov` message per channel of the chain, ordered by channel; beside the contract's figures,
    `last_click_share`: the share of the same converting paths whose last click was in the channel."""
    effects = removal_effects(counts.transitions)
    by_share = shares(effects)
    return [
        {"channel": channel, "removal_effect": effects[channel], "share": by_share[channel],
         "conversions": counts.converting * by_share[channel], "revenue": counts.revenue * by_share[channel],
         "paths": counts.paths, "converting_paths": counts.converting, "null_paths": counts.null,
         "computed_at": computed_at,
         "last_click_share": counts.last_click[channel] / counts.converting if counts.converting > 0 else 0.0}
        for channel in sorted(effects)
    ]


def markov_credits(journey: Sequence[Touchpoint], effects: Mapping[str, float], conversion_ts: int,
                   half_life_ms: int) -> list[Credit]:
    """Each channel of the journey gets RE(c) / (sum of RE over the journey's distinct channels), split evenly
    over its touchpoints; with no removal effect known, or all 0, the journey is credited as `linear`."""
    if not journey:
        return credits("linear", journey, conversion_ts, half_life_ms)
    touches_of = Counter(t.channel for t in journey)
    total = sum(effects.get(channel, 0.0) for channel in touches_of)
    if total <= 0.0:
        return credits("linear", journey, conversion_ts, half_life_ms)
    merged: dict[tuple[str, str, str | None], float] = {}
    for touch in journey:
        weight = effects.get(touch.channel, 0.0) / total / touches_of[touch.channel]
        if weight > 0.0:
            key = (touch.channel, touch.campaign, touch.affiliate_id)
            merged[key] = merged.get(key, 0.0) + weight
    return [Credit(channel, campaign, affiliate, weight) for (channel, campaign, affiliate), weight in merged.items()]


def counts_of(paths: Iterable[tuple[Sequence[str], bool, float]]) -> PathCounts:
    """The counts of (channels, converted, revenue) paths."""
    counts = PathCounts()
    for channels, converted, revenue in paths:
        counts.add_path(channels, converted, revenue)
    return counts
