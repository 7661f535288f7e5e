"""`attribution simulate`: a seeded, realistic synthetic campaign on the input topics.

Two parts:

* `Campaign` is pure generation: given a seed and clock values it returns contract-shaped
  event dicts (CONTRACT.md section 2); no I/O, no clock of its own, so tests drive it.
* `run` is the producing loop: it asks the campaign for `--rate` events a second, sends them
  as JSON arrays of up to `BATCH` events per message per topic, and shows progress on stderr.

What the campaign looks like (per channel: buying, click-through, conversion, order value
and gross margin, so the channels differ the way real ones do):

| channel    | buying                      | story                                               |
|------------|-----------------------------|-----------------------------------------------------|
| google_ads | CPC, `cost` on each click   | brand search very profitable, generic about even    |
| facebook   | CPM, `spend` rows           | prospecting middling, retargeting good              |
| tiktok     | CPM, `spend` rows           | cheap reach, few and small orders: loses money      |
| email      | CPM on sends, `spend` rows  | cheap; brings returning customers back              |
| affiliate  | network fees, `spend` rows  | partner clicks carry `affiliate_id`; coupon sites   |
|            |                             | sometimes take the last click after a Google click  |
| influencer | flat fees, `spend` rows     | posts per influencer (campaign = handle); tracked   |
|            |                             | links, and promo codes (ANNA10) used after a Google |
|            |                             | brand search, which take the credit                 |

A visitor's journey is impressions, maybe a click, maybe a lead and an order, with `ts`
increasing; some journeys start with an impression of another channel (multi-touch).
Customers (`customer_id`) come back some time later for repeat orders through email or
direct (a new device: no touchpoint). About 1% of events are sent twice (an order also as
a reloaded thank-you page: new `event_id`, same `order_id`) and 0.5% are malformed, so the
dead-letter topic is used. `ts` is the clock's value when an event is due: the demo's
windows are live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from streams.config import Settings, parse_duration_ms
from streams.core.affiliates import Affiliate, parse_affiliate
from streams.core.events import INPUT_TOPICS

BATCH = 50  # events per Kafka message (one JSON array) per topic
SPEND_INTERVAL_MS = 5_000  # a spend row per channel/campaign every this much event time

Kind = Literal["event", "duplicate", "malformed", "flood"]  # flood: a bot's click beyond any real visitor's


class SimEvent(NamedTuple):
    """One generated message element: its topic, its JSON value, and whether it is a repeat, malformed or a bot's."""

    topic: str
    body: Any
    kind: Kind


@dataclass(frozen=True)
class CampaignProfile:
    name: str
    share: float  # share of the channel's new visitors
    price: float  # CPC (per click) for cpc, per 1000 impressions for cpm, per click for fee
    ctr: float  # clicks per impression
    lead_rate: float  # leads per click
    order_rate: float  # orders per click
    aov: float  # mean order value
    margin: float  # mean gross margin of its orders


@dataclass(frozen=True)
class ChannelProfile:
    name: str
    weight: float  # share of new visitors
    buying: Literal["cpc", "cpm", "fee"]
    impressions: float  # mean impressions a visitor sees
    campaigns: tuple[CampaignProfile, ...]
    repeat_rate: float  # chance that a customer acquired here comes back


C = CampaignProfile
PROFILES: tuple[ChannelProfile, ...] = (
    ChannelProfile("google_ads", 0.24, "cpc", 1.3, (
        C("brand", 0.45, 0.70, 0.090, 0.12, 0.100, 95.0, 0.45),
        C("generic", 0.55, 1.60, 0.045, 0.08, 0.050, 110.0, 0.42),
    ), 0.35),
    ChannelProfile("facebook", 0.22, "cpm", 2.0, (
        C("prospecting", 0.75, 9.0, 0.012, 0.06, 0.030, 80.0, 0.45),
        C("retargeting", 0.25, 14.0, 0.022, 0.05, 0.060, 85.0, 0.45),
    ), 0.30),
    ChannelProfile("tiktok", 0.22, "cpm", 2.5, (
        C("ugc", 0.60, 7.0, 0.010, 0.03, 0.008, 45.0, 0.35),
        C("spark_ads", 0.40, 10.0, 0.013, 0.03, 0.012, 50.0, 0.35),
    ), 0.20),
    ChannelProfile("email", 0.12, "cpm", 1.0, (
        C("newsletter", 1.0, 8.0, 0.050, 0.04, 0.080, 70.0, 0.50),
        C("winback", 0.0, 8.0, 0.080, 0.00, 0.300, 75.0, 0.50),  # returning customers only
    ), 0.50),
    ChannelProfile("affiliate", 0.09, "fee", 1.5, (
        C("partners", 1.0, 1.20, 0.050, 0.05, 0.060, 90.0, 0.40),
    ), 0.30),
    ChannelProfile("influencer", 0.11, "cpm", 1.5, (
        C("anna_fit", 0.5, 40.0, 0.035, 0.05, 0.060, 75.0, 0.50),
        C("max_outdoors", 0.3, 40.0, 0.035, 0.05, 0.060, 120.0, 0.45),
        C("lena_cooks", 0.2, 40.0, 0.035, 0.05, 0.060, 60.0, 0.55),
    ), 0.35),
)
del C
CHANNELS: tuple[str, ...] = tuple(p.name for p in PROFILES)

#: the simulator's affiliates and influencers (the same as deploy/affiliates.sample.json)
AFFILIATE_RECORDS: tuple[dict[str, Any], ...] = (
    {"affiliate_id": "dealspot", "channel": "affiliate", "promo_codes": ["DEALSPOT"],
     "commission_rate": 0.08, "assist_fee": 1.0},
    {"affiliate_id": "gearlab_blog", "channel": "affiliate", "promo_codes": [],
     "commission_rate": 0.10, "assist_fee": 2.0},
    {"affiliate_id": "cashback_club", "channel": "affiliate", "promo_codes": [],
     "commission_rate": 0.05, "assist_fee": 0.5},
    {"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
     "commission_rate": 0.10, "assist_fee": 2.0},
    {"affiliate_id": "max_outdoors", "channel": "influencer", "promo_codes": ["MAX15"],
     "commission_rate": 0.12, "assist_fee": 1.5},
    {"affiliate_id": "lena_cooks", "channel": "influencer", "promo_codes": ["LENA5", "LENACOOKS"],
     "commission_rate": 0.08, "assist_fee": 1.0},
)
AFFILIATE_WEIGHTS = {"dealspot": 0.5, "gearlab_blog": 0.3, "cashback_club": 0.2}  # of affiliate-channel clicks
SITE_PROMO_CODES = ("WELCOME10", "SPRING")  # codes of the shop itself: registered to no affiliate


def affiliates() -> list[Affiliate]:
    """The simulator's affiliates as records the worker reads."""
    parsed = [parse_affiliate(record) for record in AFFILIATE_RECORDS]
    assert all(isinstance(a, Affiliate) for a in parsed), parsed
    return parsed  # type: ignore[return-value]


def _promo_code(affiliate_id: str) -> str:
    return next(r["promo_codes"][0] for r in AFFILIATE_RECORDS if r["affiliate_id"] == affiliate_id)


# ts of a journey's steps: (low, high) seconds after the step before
IMPRESSION_GAP = (0.3, 3.0)
CLICK_DELAY = (0.5, 4.0)
LEAD_DELAY = (1.0, 8.0)
ORDER_DELAY = (2.0, 12.0)
REPEAT_DELAY_MEAN_S = 40.0  # returning customers come back after ~40 s in the demo's compressed time
REPEAT_DELAY_RANGE = (8.0, 180.0)
DUPLICATE_RATE = 0.01
REFUND_RATE = 0.08  # share of orders refunded (`attribution simulate --refunds`); Campaign's default is none
REFUND_DELAY_S = (20.0, 240.0)  # order to refund
MALFORMED_RATE = 0.005
# Now and then a bot floods the affiliate channel with clicks from one tracking ID (CLICK_FLOOD's prey)
FLOOD_RATE = 1 / 3_000  # per new visitor
FLOOD_CLICKS = (60, 150)
FLOOD_GAP = (0.1, 1.0)
ASSIST_RATE = 0.25  # journeys that start with an impression of another channel
POACH_RATE = 0.30  # affiliate journeys whose visitor clicked a Google ad first
GUEST_RATE = 0.15  # orders without a customer account (no customer_id)
SITE_CODE_RATE = 0.05  # orders with one of the shop's own promo codes


class Campaign:
    """Pure, seeded generation of a campaign's events.

    `step(now_ms, n)` returns the events due at `now_ms` (later steps of journeys already
    under way, spend rows, re-sends) and starts new visitors until there are at least `n`.
    The same seed, start and sequence of `step` calls give the same events.
    """

    def __init__(
        self,
        seed: int = 7,
        channels: Sequence[str] | None = None,
        start_ms: int = 0,
        *,
        spend_interval_ms: int = SPEND_INTERVAL_MS,
        duplicate_rate: float = DUPLICATE_RATE,
        malformed_rate: float = MALFORMED_RATE,
        flood_rate: float = FLOOD_RATE,
        refund_rate: float = 0.0,
    ) -> None:
        chosen = list(channels) if channels else list(CHANNELS)
        unknown = [c for c in chosen if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown channel(s) {', '.join(unknown)}; known: {', '.join(CHANNELS)}")
        self.profiles = {p.name: p for p in PROFILES if p.name in chosen}
        self._rng = random.Random(seed)
        self._prefix = f"s{seed}-{_base36(start_ms)}-"
        self._next_id = 0
        self._heap: list[tuple[int, int, str, Any, Kind, tuple[str, str] | None, float]] = []
        self._seq = 0
        self._spend: dict[tuple[str, str], float] = {}
        self._next_spend_ms = start_ms + spend_interval_ms
        self._spend_interval_ms = spend_interval_ms
        self._duplicate_rate = duplicate_rate
        self._malformed_rate = malformed_rate
        self._channel_names = list(self.profiles)
        self._channel_weights = _cumulative([self.profiles[c].weight for c in self._channel_names])
        self._campaign_weights = {
            c: _cumulative([k.share for k in p.campaigns]) for c, p in self.profiles.items()
        }
        self._affiliate_ids = list(AFFILIATE_WEIGHTS)
        self._affiliate_weights = _cumulative(list(AFFILIATE_WEIGHTS.values()))
        self._malformers = _MALFORMERS
        self._flood_rate = flood_rate
        self._flood_rng = random.Random(seed * 7919 + 1)  # its own: the floods leave the visitors' draws as they were
        # Refunds draw from a generator of their own, so that the rest of the campaign is the same without them.
        self._refund_rate = refund_rate
        self._refund_rng = random.Random(seed * 7919 + 22)
        self._next_refund = 0

    # --- the public surface -------------------------------------------------------------------------

    def step(self, now_ms: int, n: int) -> list[SimEvent]:
        """The events due at `now_ms`, topped up with new visitors' first events to at least `n`."""
        out: list[SimEvent] = []
        if now_ms >= self._next_spend_ms:
            self._emit_spend(now_ms, out)
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, _, topic, body, kind, key, cost = heapq.heappop(heap)
            if topic == "_repeat":
                self._start_repeat(due, body)
                continue
            self._out(out, topic, body, kind, key, cost, now_ms)
        while len(out) < n:
            self._new_visitor(now_ms, out)
            if self._flood_rng.random() < self._flood_rate:
                self._click_flood(now_ms, out)
        return out

    def pending(self) -> int:
        """Events and returning customers scheduled for later."""
        return len(self._heap)

    # --- journeys -----------------------------------------------------------------------------------

    def _new_visitor(self, now_ms: int, out: list[SimEvent]) -> None:
        rng = self._rng
        channel = self._channel_names[_pick(rng, self._channel_weights)]
        profile = self.profiles[channel]
        campaign = profile.campaigns[_pick(rng, self._campaign_weights[channel])]
        tid = self._id("v")
        t = now_ms
        # sometimes the journey starts with an impression of another channel
        if len(self._channel_names) > 1 and rng.random() < ASSIST_RATE:
            other = self._channel_names[_pick(rng, self._channel_weights)]
            if other != channel:
                other_profile = self.profiles[other]
                other_campaign = other_profile.campaigns[_pick(rng, self._campaign_weights[other])]
                t = self._impression(t, now_ms, tid, other_profile, other_campaign, out) + _ms(rng, IMPRESSION_GAP)
        n_impressions = 1 + int(rng.expovariate(1.0 / max(profile.impressions - 1.0, 1e-9)))
        if profile.impressions <= 1.0:
            n_impressions = 1
        for i in range(n_impressions):
            if i:
                t += _ms(rng, IMPRESSION_GAP)
            t = self._impression(t, now_ms, tid, profile, campaign, out)
        if rng.random() >= min(0.95, campaign.ctr * n_impressions):
            return
        t += _ms(rng, CLICK_DELAY)
        affiliate_id = None
        promo = None
        if channel == "affiliate":
            if "google_ads" in self.profiles and rng.random() < POACH_RATE:  # a Google click, then the coupon site
                t = self._google_click(t, now_ms, tid, "generic", out) + _ms(rng, CLICK_DELAY)
            affiliate_id = self._affiliate_ids[_pick(rng, self._affiliate_weights)]
            if affiliate_id == "dealspot" and rng.random() < 0.5:
                promo = "DEALSPOT"
        elif channel == "influencer":
            affiliate_id = campaign.name
            # half the followers search the brand on Google instead of using the tracked link
            if "google_ads" in self.profiles and rng.random() < 0.5:
                t = self._google_click(t, now_ms, tid, "brand", out)
                affiliate_id = None
                promo = _promo_code(campaign.name) if rng.random() < 0.7 else None
            elif rng.random() < 0.5:
                promo = _promo_code(campaign.name)
        if channel != "influencer" or affiliate_id is not None:
            t = self._click(t, now_ms, tid, profile, campaign, affiliate_id, out)
        self._conversions(t, now_ms, tid, channel, campaign, promo, out)

    def _click_flood(self, now_ms: int, out: list[SimEvent]) -> None:
        """Click flooding, the classic affiliate fraud: a bot fires an affiliate's tracking link from one tracking ID
        again and again, seconds apart, to be the last click before any order of that visitor. The clicks cost
        nothing; the commissions they would steal do."""
        if "affiliate" not in self.profiles:
            return
        rng = self._flood_rng
        profile = self.profiles["affiliate"]
        campaign = profile.campaigns[rng.randrange(len(profile.campaigns))]
        affiliate_id = self._affiliate_ids[rng.randrange(len(self._affiliate_ids))]
        tid = self._id("bot")
        t = now_ms
        for _ in range(rng.randint(*FLOOD_CLICKS)):
            body = {"event_id": self._id("e"), "type": "click", "ts": t, "tracking_id": tid,
                    "channel": profile.name, "campaign": campaign.name, "affiliate_id": affiliate_id}
            if t <= now_ms:
                out.append(SimEvent("clicks", body, "flood"))
            else:
                self._push(t, "clicks", body, "flood", None, 0.0)
            t += _ms(rng, FLOOD_GAP)

    def _conversions(
        self, t: int, now_ms: int, tid: str, channel: str, campaign: CampaignProfile, promo: str | None,
        out: list[SimEvent],
    ) -> None:
        rng = self._rng
        customer = None
        if rng.random() < campaign.lead_rate:
            customer = self._id("c")
            t += _ms(rng, LEAD_DELAY)
            self._schedule(t, now_ms, "leads", {
                "event_id": self._id("e"), "type": "lead", "ts": t, "tracking_id": tid, "customer_id": customer,
            }, out)
        if rng.random() < campaign.order_rate:
            if customer is None and rng.random() >= GUEST_RATE:
                customer = self._id("c")
            t += _ms(rng, ORDER_DELAY)
            if promo is None and rng.random() < SITE_CODE_RATE:
                promo = rng.choice(SITE_PROMO_CODES)
            self._order(t, now_ms, tid, campaign.aov, campaign.margin, customer, promo, out)
            if customer is not None and rng.random() < self.profiles[channel].repeat_rate:
                self._schedule_repeat(t, customer, tid, 1)

    def _schedule_repeat(self, t: int, customer: str, tid: str, visits: int) -> None:
        delay_s = min(max(self._rng.expovariate(1.0 / REPEAT_DELAY_MEAN_S), REPEAT_DELAY_RANGE[0]),
                      REPEAT_DELAY_RANGE[1])
        self._push(t + int(delay_s * 1000), "_repeat", (customer, tid, visits), "event", None, 0.0)

    def _start_repeat(self, t: int, customer_state: tuple[str, str, int]) -> None:
        """A returning customer orders again: through an email or directly, on a new device."""
        rng = self._rng
        customer, tid, visits = customer_state
        email = self.profiles.get("email")
        if email is not None and rng.random() < 0.6:
            winback = email.campaigns[-1]
            t = self._impression(t, -1, tid, email, winback, None) + _ms(rng, CLICK_DELAY)
            t = self._click(t, -1, tid, email, winback, None, None)
            aov, margin = winback.aov, winback.margin
        else:
            tid = self._id("v")  # direct: typed the address on another device, no touchpoint
            aov, margin = 85.0, 0.48
        t += _ms(rng, ORDER_DELAY)
        self._order(t, -1, tid, aov, margin, customer, None, None)
        if rng.random() < 0.5 ** visits:
            self._schedule_repeat(t, customer, tid, visits + 1)

    # --- single events ------------------------------------------------------------------------------

    def _impression(
        self, t: int, now_ms: int, tid: str, profile: ChannelProfile, campaign: CampaignProfile,
        out: list[SimEvent] | None,
    ) -> int:
        body = {"event_id": self._id("e"), "type": "impression", "ts": t, "tracking_id": tid,
                "channel": profile.name, "campaign": campaign.name}
        cost = campaign.price / 1000.0 if profile.buying == "cpm" else 0.0
        self._schedule(t, now_ms, "impressions", body, out, (profile.name, campaign.name) if cost else None, cost)
        return t + 1

    def _click(
        self, t: int, now_ms: int, tid: str, profile: ChannelProfile, campaign: CampaignProfile,
        affiliate_id: str | None, out: list[SimEvent] | None,
    ) -> int:
        body = {"event_id": self._id("e"), "type": "click", "ts": t, "tracking_id": tid,
                "channel": profile.name, "campaign": campaign.name}
        if affiliate_id is not None:
            body["affiliate_id"] = affiliate_id
        key = None
        fee = 0.0
        if profile.buying == "cpc":
            body["cost"] = round(campaign.price * self._rng.uniform(0.6, 1.4), 2)
        elif profile.buying == "fee":
            key, fee = (profile.name, campaign.name), campaign.price
        self._schedule(t, now_ms, "clicks", body, out, key, fee)
        return t + 1

    def _google_click(self, t: int, now_ms: int, tid: str, campaign_name: str, out: list[SimEvent]) -> int:
        google = self.profiles["google_ads"]
        campaign = next(c for c in google.campaigns if c.name == campaign_name)
        return self._click(t, now_ms, tid, google, campaign, None, out)

    def _order(
        self, t: int, now_ms: int, tid: str, aov: float, margin: float, customer: str | None, promo: str | None,
        out: list[SimEvent] | None,
    ) -> None:
        rng = self._rng
        body: dict[str, Any] = {
            "event_id": self._id("e"), "type": "order", "ts": t, "tracking_id": tid, "order_id": self._id("o"),
            # log-normal order values around the mean, in cents
            "revenue": round(aov * rng.lognormvariate(-0.18, 0.6), 2),
            "margin": round(min(0.9, max(0.05, rng.gauss(margin, 0.06))), 2),
        }
        if customer is not None:
            body["customer_id"] = customer
        if promo is not None:
            body["promo_code"] = promo
        self._schedule(t, now_ms, "orders", body, out)
        if self._refund_rate and self._refund_rng.random() < self._refund_rate:
            self._refunds(t, body)

    def _refunds(self, t: int, order: dict[str, Any]) -> None:
        """A refund of the order some minutes later: a cancellation (no amount), a partial return, or a
        partial return and later the rest."""
        rng = self._refund_rng
        shape = rng.random()
        t += _ms(rng, REFUND_DELAY_S)
        if shape < 0.4:
            self._push(t, "refunds", self._refund(t, order, None, "cancelled"), "event", None, 0.0)
            return
        part = round(order["revenue"] * rng.uniform(0.15, 0.7), 2)
        self._push(t, "refunds", self._refund(t, order, part, "returned"), "event", None, 0.0)
        if shape >= 0.8:
            later = t + _ms(rng, REFUND_DELAY_S)
            self._push(later, "refunds", self._refund(later, order, None, "returned"), "event", None, 0.0)

    def _refund(self, t: int, order: dict[str, Any], amount: float | None, reason: str) -> dict[str, Any]:
        self._next_refund += 1
        body: dict[str, Any] = {"event_id": f"r{self._prefix}{self._next_refund}", "type": "refund", "ts": t,
                                "order_id": order["order_id"], "reason": reason}
        if amount is not None:
            body["amount"] = amount
        return body

    def _emit_spend(self, now_ms: int, out: list[SimEvent]) -> None:
        """Spend rows of what each channel/campaign cost since its last row (cents carried over)."""
        for (channel, campaign), amount in self._spend.items():
            cents = int(amount * 100)
            if cents <= 0:
                continue
            self._spend[(channel, campaign)] = amount - cents / 100
            body = {"event_id": self._id("e"), "type": "spend", "ts": now_ms, "channel": channel,
                    "campaign": campaign, "amount": cents / 100}
            self._out(out, "spend", body, "event", None, 0.0, now_ms)
        while self._next_spend_ms <= now_ms:
            self._next_spend_ms += self._spend_interval_ms

    # --- plumbing -----------------------------------------------------------------------------------

    def _schedule(
        self, t: int, now_ms: int, topic: str, body: dict[str, Any], out: list[SimEvent] | None,
        key: tuple[str, str] | None = None, cost: float = 0.0,
    ) -> None:
        """Out now when due now (a journey's first event), else onto the schedule."""
        if t <= now_ms and out is not None:
            self._out(out, topic, body, "event", key, cost, now_ms)
        else:
            self._push(t, topic, body, "event", key, cost)

    def _push(self, t: int, topic: str, body: Any, kind: Kind, key: tuple[str, str] | None, cost: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, topic, body, kind, key, cost))

    def _out(
        self, out: list[SimEvent], topic: str, body: Any, kind: Kind, key: tuple[str, str] | None, cost: float,
        now_ms: int,
    ) -> None:
        out.append(SimEvent(topic, body, kind))
        if key is not None:
            self._spend[key] = self._spend.get(key, 0.0) + cost
        if kind != "event":
            return
        rng = self._rng
        if rng.random() < self._duplicate_rate:
            self._duplicate(topic, body, now_ms)
        if rng.random() < self._malformed_rate:
            out.append(self._malformed(now_ms))

    def _duplicate(self, topic: str, body: dict[str, Any], now_ms: int) -> None:
        rng = self._rng
        later = now_ms + _ms(rng, (0.2, 5.0))
        if topic == "orders" and rng.random() < 0.5:  # a reloaded thank-you page: new event, same order
            body = {**body, "event_id": self._id("e"), "ts": later}
        self._push(later, topic, body, "duplicate", None, 0.0)

    def _malformed(self, now_ms: int) -> SimEvent:
        rng = self._rng
        topic, make = self._malformers[rng.randrange(len(self._malformers))]
        return SimEvent(topic, make(self._id("e"), now_ms, self._id("v")), "malformed")

    def _id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self._prefix}{self._next_id}"


# every one of these breaks a rule of CONTRACT.md section 2, each a different one
_MALFORMERS: tuple[tuple[str, Callable[[str, int, str], Any]], ...] = (
    ("clicks", lambda e, ts, v: {"event_id": e, "type": "click", "ts": ts, "channel": "google_ads"}),
    ("orders", lambda e, ts, v: {"event_id": e, "type": "order", "ts": ts, "tracking_id": v, "order_id": "o" + e,
                                 "revenue": -19.99}),
    ("impressions", lambda e, ts, v: {"event_id": e, "type": "click", "ts": ts, "tracking_id": v,
                                      "channel": "facebook"}),
    ("leads", lambda e, ts, v: {"event_id": e, "type": "lead", "ts": "yesterday", "tracking_id": v}),
    ("orders", lambda e, ts, v: {"event_id": e, "type": "order", "ts": ts, "tracking_id": v, "order_id": "o" + e,
                                 "revenue": 40.0, "margin": 1.7}),
    ("clicks", lambda e, ts, v: "click " + v),
    ("impressions", lambda e, ts, v: {"event_id": e, "type": "impression", "ts": ts, "tracking_id": v,
                                      "channel": ""}),
    ("spend", lambda e, ts, v: {"event_id": e, "type": "spend", "ts": ts, "channel": "tiktok", "amount": "12.50"}),
)


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights) or 1.0
    acc = 0.0
    out = []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    u = rng.random()
    for i, edge in enumerate(cumulative):
        if u < edge:
            return i
    return len(cumulative) - 1


def _ms(rng: random.Random, bounds: tuple[float, float]) -> int:
    return max(1, int(rng.uniform(*bounds) * 1000))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    n = abs(n)
    text = ""
    while True:
        n, r = divmod(n, 36)
        text = digits[r] + text
        if not n:
            return text


def batches(events: Iterable[SimEvent], size: int = BATCH) -> list[tuple[str, bytes, int]]:
    """Events -> (topic, JSON array of up to `size` bodies, count) per topic, in order within a topic."""
    by_topic: dict[str, list[Any]] = {}
    for event in events:
        by_topic.setdefault(event.topic, []).append(event.body)
    out = []
    for topic, bodies in by_topic.items():
        for i in range(0, len(bodies), size):
            chunk = bodies[i:i + size]
            out.append((topic, orjson.dumps(chunk), len(chunk)))
    return out


# --- the producing loop -------------------------------------------------------------------------------


def parse_duration_s(text: str) -> float:
    """`--duration`: `0` (forever), seconds as a plain number, or a duration like `30s`, `5m`."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration_ms(text) / 1000.0


class Progress:
    """Counts of what was sent, and a one-line summary of them."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.sent = 0
        self.by_topic: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self._last_sent = 0
        self._last_time = started

    def add(self, events: Sequence[SimEvent]) -> None:
        self.sent += len(events)
        for event in events:
            self.by_topic[event.topic] += 1
            if event.kind != "event":
                self.by_kind[event.kind] += 1

    def line(self, now: float, final: bool = False) -> str:
        if final:
            rate = self.sent / max(now - self.started, 1e-9)
        else:
            rate = (self.sent - self._last_sent) / max(now - self._last_time, 1e-9)
            self._last_sent, self._last_time = self.sent, now
        topics = " ".join(f"{t} {self.by_topic[t]:,}" for t in INPUT_TOPICS)
        return (f"simulate: {self.sent:,} events in {now - self.started:,.0f}s, {rate:,.0f}/s | {topics} | "
                f"re-sent {self.by_kind['duplicate']:,} malformed {self.by_kind['malformed']:,}")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`attribution simulate`."""
    try:
        duration_s = parse_duration_s(args.duration)
    except ValueError as exc:
        print(f"attribution simulate: --duration: {exc}", file=sys.stderr)
        return 2
    if not args.rate > 0 or duration_s < 0:
        print(f"attribution simulate: --rate must be > 0 and --duration >= 0, got {args.rate} and {args.duration}",
              file=sys.stderr)
        return 2
    channels = [c.strip() for c in (args.channels or "").split(",") if c.strip()]
    try:
        Campaign(args.seed, channels)
    except ValueError as exc:
        print(f"attribution simulate: --channels: {exc}", file=sys.stderr)
        return 2
    from streams.kafka.embedded_broker import resolve_for_producer

    bootstrap, owned = resolve_for_producer(settings, "simulate")
    try:
        return asyncio.run(simulate(bootstrap, settings, args.seed, channels, args.rate, duration_s,
                                    refund_rate=getattr(args, "refunds", REFUND_RATE)))
    finally:
        if owned is not None:
            owned.stop()


async def simulate(
    bootstrap: str,
    settings: Settings,
    seed: int,
    channels: Sequence[str],
    rate: float,
    duration_s: float,
    *,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
    out: Any = None,
    refund_rate: float = 0.0,
) -> int:
    """Produce the campaign at `rate` events/s for `duration_s` seconds (0: until SIGINT/SIGTERM or `stop`)."""
    from streams.commands.affiliates import publish
    from streams.kafka.topics import ensure_topics, make_producer, wait_for_broker

    out = out or sys.stderr
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings)
    producer = make_producer(bootstrap, linger_ms=10)
    await producer.start()
    tty = out.isatty() if hasattr(out, "isatty") else False
    try:
        await publish(producer, affiliates())
        started = clock()
        campaign = Campaign(seed, channels, int(started * 1000), refund_rate=refund_rate)
        progress = Progress(started)
        futures: list[asyncio.Future[Any]] = []
        budget_start, budget_sent = started, 0
        next_report = started + (1.0 if tty else 10.0)
        tick = 0.05
        while not stop.is_set():
            now = clock()
            if duration_s and now - started >= duration_s:
                break
            owed = rate * (now - budget_start) - budget_sent
            if owed > rate:  # more than a second behind: do not try to catch up
                budget_start, budget_sent, owed = now, 0, rate * tick
            if owed >= 1:
                events = campaign.step(int(now * 1000), int(owed))
                budget_sent += len(events)
                progress.add(events)
                for topic, payload, _ in batches(events):
                    futures.append(await producer.send(topic, payload))
            if now >= next_report:
                await _settle(futures)
                if tty:
                    out.write("\r\x1b[2K" + progress.line(now))
                else:
                    out.write(progress.line(now) + "\n")
                out.flush()
                next_report = now + (1.0 if tty else 10.0)
            delay = tick - (clock() - now)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                await asyncio.sleep(0)
        await producer.flush()
        await _settle(futures)
        out.write(("\r\x1b[2K" if tty else "") + progress.line(clock(), final=True) + "\n")
        out.flush()
    finally:
        await producer.stop()
    return 0


async def _settle(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for the acks of what was sent so far; a failed send raises here."""
    if futures:
        pending = list(futures)
        futures.clear()
        await asyncio.gather(*pending)
