"""Touchpoints + a conversion -> credits and commissions (CONTRACT.md section 3). Pure.

A touchpoint is a small tuple so that a journey of many of them stays compact in state:
`(ts, kind, channel, campaign, affiliate_id, event_id)` with kind "c" (click), "i"
(impression) or "p" (the click a registered promo code adds at the order's own ts).
Touchpoints are ordered by `(ts, promo last, event_id)`: ties in ts are broken the same
way whatever order they arrived in, and a promo code's click is the latest at its ts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from streams.config import MODELS, Model

DIRECT = "(direct)"
NONE_CAMPAIGN = "(none)"
CLICK_KINDS = ("c", "p")


class Touchpoint(NamedTuple):
    ts: int
    kind: str  # "c" click, "i" impression, "p" promo-code click
    channel: str
    campaign: str
    affiliate_id: str | None
    event_id: str | int  # or the 63-bit hash of it that journey state keeps: it only breaks ties in ts


class ChannelTouch(NamedTuple):
    """A touchpoint as a path of the Markov model sees it (streams.core.paths): when, and on which channel."""

    ts: int
    channel: str


class Credit(NamedTuple):
    channel: str
    campaign: str
    affiliate_id: str | None
    weight: float


class Commission(NamedTuple):
    affiliate_id: str
    role: str  # "converter" or "assist"
    amount: float


class Affiliate(NamedTuple):
    affiliate_id: str
    channel: str
    promo_codes: tuple[str, ...]
    commission_rate: float
    assist_fee: float


class Lookback(NamedTuple):
    click_ms: int
    view_ms: int
    min_click_gap_ms: int = 0  # MIN_CLICK_GAP: a click closer than this to the conversion is not its touchpoint


def order_key(touch: Touchpoint) -> tuple[int, bool, str | int]:
    return (touch.ts, touch.kind == "p", touch.event_id)


def in_lookback(touch: Touchpoint, conversion_ts: int, lookback: Lookback) -> bool:
    """At or before the conversion, and no older than its kind's lookback (the edge is inclusive); a click
    (not a promo code's) no closer to it than MIN_CLICK_GAP."""
    if touch.kind in CLICK_KINDS:
        latest = conversion_ts - lookback.min_click_gap_ms if touch.kind == "c" else conversion_ts
        return conversion_ts - lookback.click_ms <= touch.ts <= latest
    return conversion_ts - lookback.view_ms <= touch.ts <= conversion_ts


def too_close_clicks(touches: Iterable[Touchpoint], conversion_ts: int, lookback: Lookback) -> list[Touchpoint]:
    """The clicks MIN_CLICK_GAP keeps out of the conversion's touchpoints: less than the gap before it (click
    injection). A click exactly the gap before it still counts."""
    gap = lookback.min_click_gap_ms
    return [t for t in touches if t.kind == "c" and conversion_ts - gap < t.ts <= conversion_ts]


def journey_for(
    touches: Iterable[Touchpoint],
    conversion_ts: int,
    lookback: Lookback,
    promo: Affiliate | None = None,
    conversion_id: str = "",
) -> list[Touchpoint]:
    """The conversion's touchpoints, ordered, with the promo code's click when it has one."""
    journey = [t for t in touches if in_lookback(t, conversion_ts, lookback)]
    if promo is not None:
        journey.append(Touchpoint(conversion_ts, "p", promo.channel, NONE_CAMPAIGN, promo.affiliate_id, conversion_id))
    journey.sort(key=order_key)
    return journey


def weights(model: Model, journey: Sequence[Touchpoint], conversion_ts: int, half_life_ms: int) -> list[float]:
    """Credit per touchpoint of an ordered, non-empty journey; they sum to 1."""
    n = len(journey)
    if model in ("last_click", "first_click"):
        pool = [i for i, t in enumerate(journey) if t.kind in CLICK_KINDS] or list(range(n))
        chosen = pool[-1] if model == "last_click" else pool[0]
        return [1.0 if i == chosen else 0.0 for i in range(n)]
    if model == "linear":
        return [1.0 / n] * n
    if model == "time_decay":
        # 2^(-age/half-life) scaled by 2^(age of the newest touchpoint/half-life): the same shares once
        # normalised, but the newest weighs 1, so old journeys and short half-lives cannot underflow to 0/0.
        newest = max(t.ts for t in journey)
        raw = [2.0 ** (-(newest - t.ts) / half_life_ms) for t in journey]
        total = sum(raw)
        return [w / total for w in raw]
    if model == "position_based":
        if n <= 2:
            return [1.0 / n] * n
        middle = 0.2 / (n - 2)
        return [0.4, *([middle] * (n - 2)), 0.4]
    raise ValueError(f"unknown attribution model {model!r}; expected one of {', '.join(MODELS)}")


def credits(model: Model, journey: Sequence[Touchpoint], conversion_ts: int, half_life_ms: int) -> list[Credit]:
    """Credits per (channel, campaign, affiliate), in journey order; `(direct)` for an empty journey."""
    if not journey:
        return [Credit(DIRECT, NONE_CAMPAIGN, None, 1.0)]
    merged: dict[tuple[str, str, str | None], float] = {}
    for touch, weight in zip(journey, weights(model, journey, conversion_ts, half_life_ms), strict=True):
        if weight > 0.0:
            key = (touch.channel, touch.campaign, touch.affiliate_id)
            merged[key] = merged.get(key, 0.0) + weight
    return [Credit(channel, campaign, affiliate, weight) for (channel, campaign, affiliate), weight in merged.items()]


def commissions(
    journey: Sequence[Touchpoint], revenue: float, affiliates: Mapping[str, Affiliate]
) -> list[Commission]:
    """The latest click's affiliate converts (rate x revenue); every other affiliate assisted (its fee, once)."""
    clicks = [t for t in journey if t.kind in CLICK_KINDS]
    converter = clicks[-1].affiliate_id if clicks else None
    out: list[Commission] = []
    if converter is not None and converter in affiliates:
        out.append(Commission(converter, "converter", affiliates[converter].commission_rate * revenue))
    assisted = {converter}
    for touch in journey:
        affiliate = touch.affiliate_id
        if affiliate is not None and affiliate not in assisted and affiliate in affiliates:
            assisted.add(affiliate)
            out.append(Commission(affiliate, "assist", affiliates[affiliate].assist_fee))
    return out
