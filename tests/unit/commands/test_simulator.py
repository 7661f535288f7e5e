"""The simulator's pure generation: seeded, contract-shaped and realistic (streams/commands/simulator.py)."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.commands.simulator import (
    AFFILIATE_RECORDS,
    AFFILIATE_WEIGHTS,
    BATCH,
    CHANNELS,
    Campaign,
    SimEvent,
    affiliates,
    batches,
    parse_duration_s,
)
from streams.config import Settings
from streams.core.affiliates import parse_affiliate
from streams.core.events import INPUT_TOPICS, validate

START = 1_763_800_000_000
TICK_MS = 50
SETTINGS = Settings()
SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "affiliates.sample.json"


def drive(campaign: Campaign, seconds: float, rate: float, start: int = START) -> list[tuple[int, SimEvent]]:
    """Run a campaign on a simulated clock: (clock value at emission, event) pairs."""
    out = []
    per_tick = rate * TICK_MS / 1000
    owed = 0.0
    now = start
    for _ in range(int(seconds * 1000 / TICK_MS)):
        now += TICK_MS
        owed += per_tick
        events = campaign.step(now, int(owed))
        owed -= len(events)
        out.extend((now, event) for event in events)
    return out


SECONDS = 300
RATE = 1000


@cache
def five_minutes() -> tuple[tuple[int, SimEvent], ...]:
    """Five minutes at 1,000 events/s."""
    return tuple(drive(Campaign(seed=11, start_ms=START), SECONDS, RATE))


def events_of(kind: str = "event") -> list[SimEvent]:
    return [event for _, event in five_minutes() if event.kind == kind]


def test_the_same_seed_and_clock_give_the_same_events() -> None:
    first = drive(Campaign(seed=5, start_ms=START), 20, 500)
    second = drive(Campaign(seed=5, start_ms=START), 20, 500)
    assert first == second
    assert first != drive(Campaign(seed=6, start_ms=START), 20, 500)


def test_ids_differ_between_runs_started_at_different_times() -> None:
    first = {e.body["event_id"] for _, e in drive(Campaign(seed=5, start_ms=START), 5, 200) if e.kind == "event"}
    later = {e.body["event_id"] for _, e in drive(Campaign(seed=5, start_ms=START + 1), 5, 200) if e.kind == "event"}
    assert first and later and not first & later


def test_it_sends_the_rate_asked_for() -> None:
    assert len(five_minutes()) == pytest.approx(SECONDS * RATE, rel=0.01)
    per_second = Counter((now - START - 1) // 1000 for now, _ in five_minutes())
    assert min(per_second.values()) > 0.9 * RATE and max(per_second.values()) < 1.1 * RATE


def test_ts_is_the_clock_when_an_event_is_due() -> None:
    for now, event in five_minutes():
        if event.kind == "event":
            assert now - TICK_MS < event.body["ts"] <= now


def test_every_generated_event_is_valid() -> None:
    first_minute = [e for now, e in five_minutes() if now <= START + 60_000 and e.kind != "malformed"]
    assert len(first_minute) > 50_000
    for event in first_minute:
        result = validate(event.body, event.topic, SETTINGS)
        assert not isinstance(result, str), (result, event)


def test_malformed_events_are_rejected_and_about_half_a_percent() -> None:
    malformed = events_of("malformed")
    assert all(isinstance(validate(e.body, e.topic, SETTINGS), str) for e in malformed)
    assert 0.002 < len(malformed) / len(five_minutes()) < 0.01
    # the dead-letter topic sees every kind the campaign sends without refunds (whose rejections are the ledger's)
    assert {e.topic for e in malformed} == set(INPUT_TOPICS) - {"refunds"}


def test_about_one_percent_is_sent_twice() -> None:
    duplicates = events_of("duplicate")
    assert 0.005 < len(duplicates) / len(five_minutes()) < 0.02
    first_ids = {e.body["event_id"] for e in events_of("event")}
    order_ids = {e.body["order_id"] for e in events_of("event") if e.topic == "orders"}
    for event in duplicates:
        assert event.body["event_id"] in first_ids or event.body.get("order_id") in order_ids
    reloads = [e for e in duplicates if e.topic == "orders" and e.body["event_id"] not in first_ids]
    assert reloads, "a reloaded thank-you page: same order_id, new event_id"


def test_ts_increases_along_each_visitors_journey() -> None:
    last: dict[str, int] = {}
    for event in events_of("event"):
        tid = event.body.get("tracking_id")
        if tid is None:
            continue
        assert event.body["ts"] > last.get(tid, -1), event
        last[tid] = event.body["ts"]


def test_orders_come_after_a_click_or_from_a_returning_customer() -> None:
    clicks: dict[str, int] = {}
    seen: set[str] = set()
    customers_with_orders: set[str] = set()
    direct = 0
    for event in events_of("event"):
        body = event.body
        if event.topic == "clicks":
            clicks.setdefault(body["tracking_id"], body["ts"])
        if event.topic == "orders":
            if body["tracking_id"] in seen:
                assert clicks.get(body["tracking_id"], body["ts"]) < body["ts"], body
            else:  # direct: a returning customer on a new device, no touchpoint
                assert body.get("customer_id") in customers_with_orders, body
                direct += 1
            if body.get("customer_id"):
                customers_with_orders.add(body["customer_id"])
        if "tracking_id" in body:
            seen.add(body["tracking_id"])
    assert direct > 0


def test_returning_customers_order_again_through_email_or_direct() -> None:
    orders_by_customer: dict[str, list[dict]] = defaultdict(list)
    channel_of_click: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for event in events_of("event"):
        if event.topic == "orders" and "customer_id" in event.body:
            orders_by_customer[event.body["customer_id"]].append(event.body)
        if event.topic == "clicks":
            body = event.body
            channel_of_click[body["tracking_id"]].append((body["ts"], body["channel"], body["campaign"]))
    returning = {c: orders for c, orders in orders_by_customer.items() if len(orders) > 1}
    assert len(returning) > 20
    via = Counter()
    for orders in returning.values():
        for order in orders[1:]:
            before = [c for c in channel_of_click.get(order["tracking_id"], []) if c[0] < order["ts"]]
            via["email" if before and before[-1][1:] == ("email", "winback") else
                "direct" if not before else "other"] += 1
    assert via["email"] > 0 and via["direct"] > 0 and via["other"] == 0
    assert all(o["ts"] < p["ts"] for orders in returning.values() for o, p in zip(orders, orders[1:], strict=False))


def _last_click_economics() -> dict[str, dict[str, float]]:
    """Spend, revenue and gross profit per channel under last click (promo codes take the credit)."""
    code_channel = {code: r["channel"] for r in AFFILIATE_RECORDS for code in r["promo_codes"]}
    last: dict[str, str] = {}
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events_of("event"):
        body = event.body
        if event.topic == "clicks":
            last[body["tracking_id"]] = body["channel"]
            out[body["channel"]]["spend"] += body.get("cost", 0.0)
            out[body["channel"]]["clicks"] += 1
        elif event.topic == "impressions":
            out[body["channel"]]["impressions"] += 1
        elif event.topic == "spend":
            out[body["channel"]]["spend"] += body["amount"]
        elif event.topic == "orders":
            channel = code_channel.get(body.get("promo_code")) or last.get(body["tracking_id"], "(direct)")
            out[channel]["revenue"] += body["revenue"]
            out[channel]["gross_profit"] += body["revenue"] * body["margin"]
    return out


def test_channels_differ_the_way_real_ones_do() -> None:
    economics = _last_click_economics()

    def romi(channel: str) -> float:
        figures = economics[channel]
        return (figures["gross_profit"] - figures["spend"]) / figures["spend"]

    def ctr(channel: str) -> float:
        return economics[channel]["clicks"] / economics[channel]["impressions"]

    assert romi("google_ads") > 1.0  # profitable: scale
    assert romi("email") > 5.0  # cheap
    assert romi("tiktok") < -0.5  # loses money: pause
    assert 0.0 < romi("facebook") < 1.5
    assert economics["(direct)"]["revenue"] > 0
    assert ctr("google_ads") > 3 * ctr("tiktok")
    assert all(economics[c]["spend"] > 0 for c in CHANNELS)


def test_spend_comes_as_rows_every_few_seconds_and_as_cost_on_cpc_clicks() -> None:
    rows = [e.body for e in events_of("event") if e.topic == "spend"]
    by_key = Counter((r["channel"], r["campaign"]) for r in rows)
    assert "google_ads" not in {channel for channel, _ in by_key}  # CPC: per-click cost instead
    assert by_key[("tiktok", "ugc")] == pytest.approx(SECONDS / 5, abs=2)
    assert all(r["amount"] > 0 and round(r["amount"], 2) == r["amount"] for r in rows)
    google_clicks = [e.body for e in events_of("event") if e.topic == "clicks" and e.body["channel"] == "google_ads"]
    assert google_clicks and all(c["cost"] > 0 for c in google_clicks)


def test_affiliate_and_influencer_clicks_and_promo_codes() -> None:
    clicks = [e.body for e in events_of("event") if e.topic == "clicks"]
    affiliate_ids = {c.get("affiliate_id") for c in clicks if c["channel"] == "affiliate"}
    assert affiliate_ids == set(AFFILIATE_WEIGHTS)
    influencer_ids = {c.get("affiliate_id") for c in clicks if c["channel"] == "influencer"}
    assert influencer_ids == {"anna_fit", "max_outdoors", "lena_cooks"}
    assert all("affiliate_id" not in c for c in clicks if c["channel"] not in ("affiliate", "influencer"))
    codes = Counter(e.body.get("promo_code") for e in events_of("event") if e.topic == "orders")
    assert codes["ANNA10"] > 0 and codes["WELCOME10"] + codes["SPRING"] > 0


def test_orders_carry_margins_and_some_are_guest_orders() -> None:
    orders = [e.body for e in events_of("event") if e.topic == "orders"]
    assert all(0 < o["margin"] < 1 for o in orders)
    assert any("customer_id" not in o for o in orders)
    assert len({o["order_id"] for o in orders}) == len(orders)


def test_channels_can_be_chosen() -> None:
    events = drive(Campaign(seed=3, channels=["google_ads", "email"], start_ms=START), 30, 500)
    channels = {e.body["channel"] for _, e in events if e.kind == "event" and isinstance(e.body, dict)
                and "channel" in e.body}
    assert channels == {"google_ads", "email"}
    with pytest.raises(ValueError, match="unknown channel.*snapchat"):
        Campaign(channels=["snapchat"])


def test_state_stays_bounded() -> None:
    campaign = Campaign(seed=2, start_ms=START)
    sizes = []
    for minute in range(4):
        drive(campaign, 60, 1000, START + minute * 60_000)
        sizes.append(campaign.pending())
    assert max(sizes) < 1000 * 30  # events due within seconds, returning customers within minutes
    assert sizes[-1] < 1.5 * sizes[1]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), rate=st.integers(1, 3000))
def test_any_seed_and_rate_give_valid_journeys(seed: int, rate: int) -> None:
    last: dict[str, int] = {}
    for _, event in drive(Campaign(seed=seed, start_ms=START), 5, rate):
        result = validate(event.body, event.topic, SETTINGS)
        assert isinstance(result, str) == (event.kind == "malformed")
        if event.kind == "event" and "tracking_id" in event.body:
            assert event.body["ts"] > last.get(event.body["tracking_id"], -1)
            last[event.body["tracking_id"]] = event.body["ts"]


def test_batches_are_json_arrays_of_at_most_fifty_per_topic_in_order() -> None:
    events = [event for _, event in drive(Campaign(seed=1, start_ms=START), 2, 3000)]
    sent = batches(events)
    assert all(count <= BATCH and len(orjson.loads(payload)) == count for _, payload, count in sent)
    for topic in INPUT_TOPICS:
        bodies = [body for t, payload, _ in sent if t == topic for body in orjson.loads(payload)]
        assert bodies == [orjson.loads(orjson.dumps(e.body)) for e in events if e.topic == topic]


def test_the_affiliates_it_publishes_are_the_sample_file() -> None:
    assert orjson.loads(SAMPLE.read_bytes()) == list(AFFILIATE_RECORDS)
    assert [parse_affiliate(r) for r in AFFILIATE_RECORDS] == affiliates()


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("30", 30.0), ("30s", 30.0), ("5m", 300.0),
                                               ("1.5", 1.5), ("500ms", 0.5)])
def test_duration_parsing(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_a_bad_duration_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unit"):
        parse_duration_s("ten minutes")


def clicks_per_tracking_id(campaign: Campaign) -> Counter:
    return Counter(e.body["tracking_id"] for _, e in drive(campaign, 60, 500) if e.topic == "clicks"
                   and e.kind in ("event", "flood"))


def test_now_and_then_a_bot_floods_the_affiliate_channel_with_clicks_from_one_tracking_id() -> None:
    campaign = Campaign(seed=4, start_ms=START, flood_rate=0.01)
    bots = {tid: n for tid, n in clicks_per_tracking_id(campaign).items() if n > 30}  # past CLICK_FLOOD's 30 an hour
    assert bots and all(tid.startswith("bot") and n <= 150 for tid, n in bots.items())
    assert {e.body["tracking_id"][:3] for e in events_of("flood")} == {"bot"}  # the default rate floods too


def test_without_floods_no_tracking_id_clicks_more_than_a_few_times() -> None:
    assert max(clicks_per_tracking_id(Campaign(seed=4, start_ms=START, flood_rate=0.0)).values()) < 10


@cache
def five_minutes_with_refunds() -> tuple[tuple[int, SimEvent], ...]:
    return tuple(drive(Campaign(seed=11, start_ms=START, refund_rate=0.08), SECONDS, RATE))


def test_without_refunds_the_campaign_is_what_it_was_and_sends_none() -> None:
    assert not [e for _, e in five_minutes() if e.topic == "refunds"]
    with_refunds = [(t, e) for t, e in five_minutes_with_refunds() if e.topic != "refunds"]
    plain = list(five_minutes())
    # The refunds draw from a generator of their own: the orders before the first refund is due are the same.
    first_refund = min(t for t, e in five_minutes_with_refunds() if e.topic == "refunds")
    assert [x for x in with_refunds if x[0] < first_refund] == [x for x in plain if x[0] < first_refund]


def test_about_eight_percent_of_orders_are_refunded_some_partly_some_cancelled() -> None:
    campaign = Campaign(seed=11, start_ms=START, refund_rate=0.08)
    sent = [e for _, e in drive(campaign, SECONDS, RATE)]
    sent += campaign.step(START + SECONDS * 1000 + 3_600_000, 0)  # what was still due: refunds come minutes later
    events = [e for e in sent if e.kind == "event"]
    orders = {e.body["order_id"]: e.body for e in events if e.topic == "orders"}
    refunds = [e.body for e in events if e.topic == "refunds"]
    assert all(not isinstance(validate(r, "refunds", SETTINGS), str) for r in refunds)
    refunded = {r["order_id"] for r in refunds if r["order_id"] in orders}
    assert 0.05 < len(refunded) / len(orders) < 0.11
    cancellations = [r for r in refunds if "amount" not in r]
    partial = [r for r in refunds if "amount" in r]
    assert cancellations and partial
    assert all(0 < r["amount"] < orders[r["order_id"]]["revenue"] for r in partial if r["order_id"] in orders)
    assert all(r["ts"] > orders[r["order_id"]]["ts"] for r in refunds if r["order_id"] in orders)
    assert len({r["event_id"] for r in refunds}) == len(refunds)
