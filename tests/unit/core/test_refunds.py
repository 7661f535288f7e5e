"""The order ledger's rules (CONTRACT.md section 9), one test per rule, on the pure core
(`streams.core.refunds`), the wait for the orders (`streams.stages.refunds.JourneyMarks` with the journeys'
`GraceQueue`) and the lifetime value's side (`streams.core.ltv.absorb_refund`)."""

from __future__ import annotations

import math
from typing import Any

import fastjsonschema
import pytest

from streams.config import METRIC_MODELS, MODELS
from streams.core.attribution import Affiliate, Lookback, Touchpoint, commissions, credits, journey_for
from streams.core.events import Refund, load_schema
from streams.core.journeys import GraceQueue
from streams.core.ltv import Customer, CustomerOrder, absorb, absorb_refund, id_hash
from streams.core.refunds import (
    EXCEEDS_ORDER,
    PENDING,
    REFUNDED,
    UNKNOWN_ORDER,
    LedgerOrder,
    Taken,
    add_pending,
    has_refund,
    is_expired,
    judge,
    ledger_bytes,
    order_of,
    refund_effects,
    remember_order,
    take,
    without_customer,
)
from streams.stages.refunds import JourneyMarks

DAY = 86_400_000
TS = 1_763_800_000_000
WINDOW = 90 * DAY
HALF_LIFE = 7 * DAY
ANNA = Affiliate("anna", "influencer", ("ANNA10",), 0.10, 2.0)
BOB = Affiliate("bob", "affiliate", (), 0.05, 1.5)
AFFILIATES = {"anna": ANNA, "bob": BOB}


def attribution(revenue: float = 120.0, margin: float = 0.5, promo: Affiliate | None = ANNA) -> dict[str, Any]:
    """An order's `attributions` message as the journeys stage builds it: an impression, Bob's click, a Google
    click, then the promo code (Anna converts, Bob assisted)."""
    touches = [
        Touchpoint(TS - 3 * DAY, "i", "facebook", "prospecting", None, "t1"),
        Touchpoint(TS - 2 * 3_600_000, "c", "affiliate", "(none)", "bob", "t2"),
        Touchpoint(TS - 3_600_000, "c", "google_ads", "brand", None, "t3"),
    ]
    path = journey_for(touches, TS, Lookback(30 * DAY, 3 * DAY), promo, "o-1")
    by_model = {m: credits(m, path, TS, HALF_LIFE) for m in MODELS}
    by_model["markov"] = credits("linear", path, TS, HALF_LIFE)

    def as_json(cs: Any) -> list[dict[str, Any]]:
        return [{"channel": c.channel, "campaign": c.campaign, "affiliate_id": c.affiliate_id, "weight": c.weight,
                 "revenue": c.weight * revenue} for c in cs]

    return {
        "conversion_id": "o-1", "type": "order", "tracking_id": "t", "ts": TS, "revenue": revenue, "currency": "USD",
        "model": "last_click", "credits": as_json(by_model["last_click"]),
        "commissions": [{"affiliate_id": a, "role": r, "amount": x} for a, r, x in commissions(path, revenue,
                                                                                            AFFILIATES)],
        "models": {m: as_json(cs) for m, cs in by_model.items()}, "customer_id": "cust-1", "new_customer": True,
        "order_id": "A-1", "margin": margin,
    }


def ledger(revenue: float = 120.0, margin: float = 0.5) -> list[Any]:
    row, new = remember_order(None, LedgerOrder.from_attribution(attribution(revenue, margin)))
    assert new
    return row


def refund(amount: float | None, event_id: str = "r-1", ts: int = TS + DAY) -> Refund:
    return Refund("r", event_id, ts, "A-1", amount)


def taken(row: list[Any], r: Refund) -> Taken:
    verdict = judge(row, r, WINDOW)
    assert isinstance(verdict, Taken), verdict
    take(row, 0, r, verdict)
    return verdict


def test_the_ledger_row_round_trips_every_model_s_credits_and_the_commissions() -> None:
    message = attribution()
    order = LedgerOrder.from_row(LedgerOrder.from_attribution(message).to_row())
    for model in METRIC_MODELS:
        got = sorted((c, cmp, a, round(w, 12)) for c, cmp, a, w in order.credits(model))
        want = sorted((c["channel"], c["campaign"], c["affiliate_id"], round(c["weight"], 12))
                      for c in message["models"][model])
        assert got == want, model
    assert order.commissions == (("anna", "converter", 12.0), ("bob", "assist", 1.5))
    assert (order.revenue, order.margin, order.customer_id) == (120.0, 0.5, "cust-1")


def test_erasure_takes_the_customer_out_of_a_ledger_row_and_a_refund_of_the_order_still_works() -> None:
    row = ledger()
    erased = without_customer(row)
    assert erased is not None and "cust-1" not in str(erased)
    kept, gone = order_of(row), order_of(erased)
    assert gone is not None and kept is not None and gone == kept._replace(customer_id=None)
    assert without_customer(erased) is None and without_customer(None) is None  # nothing left to erase
    verdict = judge(erased, refund(40.0), WINDOW)
    assert verdict == judge(row, refund(40.0), WINDOW) and isinstance(verdict, Taken)
    assert "cust-1" not in str(refund_effects(gone, refund(40.0), verdict, "last_click", "USD").message)


def test_an_order_sent_twice_is_remembered_once() -> None:
    row = ledger()
    again, new = remember_order(row, LedgerOrder.from_attribution(attribution(revenue=999.0)))
    order = order_of(again)
    assert not new and order is not None and order.revenue == 120.0


def test_a_partial_then_a_full_refund_leave_nothing_and_only_the_last_is_full() -> None:
    row = ledger()
    first = taken(row, refund(40.0, "r-1"))
    assert (first.amount, first.share, first.full) == (40.0, pytest.approx(1 / 3), False)
    rest = taken(row, refund(None, "r-2"))  # no amount: the whole remainder
    assert (rest.amount, rest.share, rest.full) == (80.0, pytest.approx(2 / 3), True)
    assert judge(row, refund(None, "r-3"), WINDOW) == EXCEEDS_ORDER  # nothing left to cancel
    assert judge(row, refund(0.01, "r-4"), WINDOW) == EXCEEDS_ORDER


def test_a_refund_beyond_what_is_left_is_rejected_and_changes_nothing() -> None:
    row = ledger()
    assert judge(row, refund(120.01), WINDOW) == EXCEEDS_ORDER
    taken(row, refund(100.0, "r-1"))
    assert judge(row, refund(20.5, "r-2"), WINDOW) == EXCEEDS_ORDER
    assert taken(row, refund(20.0, "r-3")).full  # exactly what is left
    assert math.isclose(row[REFUNDED], 120.0)


def test_partial_refunds_that_add_up_to_the_order_leave_float_dust_as_nothing() -> None:
    row = ledger(revenue=0.3)
    taken(row, refund(0.1, "r-1"))
    taken(row, refund(0.1, "r-2"))
    assert taken(row, refund(0.1, "r-3")).full


def test_an_unknown_order_id_or_one_older_than_the_refund_window_is_unknown() -> None:
    assert judge(None, refund(10.0), WINDOW) == UNKNOWN_ORDER
    only_refunds = add_pending(None, 5, refund(10.0), ["refunds", 0, 5, None, "{}"])
    assert judge(only_refunds, refund(10.0), WINDOW) == UNKNOWN_ORDER
    row = ledger()
    assert isinstance(judge(row, refund(10.0, ts=TS + WINDOW), WINDOW), Taken)
    assert judge(row, refund(10.0, ts=TS + WINDOW + 1), WINDOW) == UNKNOWN_ORDER


def test_a_repeated_refund_event_id_is_a_duplicate_while_waiting_and_once_taken() -> None:
    row = ledger()
    assert not has_refund(row, "r-1")
    add_pending(row, 7, refund(10.0, "r-1"), ["refunds", 0, 7, None, "{}"])
    assert has_refund(row, "r-1")
    verdict = judge(row, refund(10.0, "r-1"), WINDOW)
    assert isinstance(verdict, Taken)
    take(row, 7, refund(10.0, "r-1"), verdict)
    assert row[PENDING] == [] and has_refund(row, "r-1") and not has_refund(row, "r-2")


def test_a_rejected_refund_leaves_the_order_as_it_was_and_its_repeat_is_a_duplicate() -> None:
    row = ledger()
    add_pending(row, 3, refund(500.0), ["refunds", 0, 3, None, "{}"])
    take(row, 3, refund(500.0), None)
    assert (row[REFUNDED], row[PENDING]) == (0.0, [])
    assert has_refund(row, "r-1")
    assert taken(row, refund(None, "r-2")).amount == 120.0


def test_the_converter_gives_back_its_rate_of_a_partial_refund_and_the_assist_fee_stays() -> None:
    row = ledger()
    r = refund(40.0)
    effects = refund_effects(order_of(row), r, taken(row, r), "last_click", "USD")
    assert effects.commissions == [("anna", "converter", pytest.approx(-4.0))]


def test_a_refund_in_full_takes_back_the_assist_fee_too() -> None:
    row = ledger()
    taken(row, refund(40.0, "r-1"))
    r = refund(None, "r-2")
    effects = refund_effects(order_of(row), r, taken(row, r), "last_click", "USD")
    assert effects.commissions == [("anna", "converter", pytest.approx(-8.0)), ("bob", "assist", -1.5)]


@pytest.mark.parametrize("model", METRIC_MODELS)
def test_a_refund_is_credited_like_its_order_under_each_model(model: str) -> None:
    message = attribution()
    row = ledger()
    r = refund(30.0)
    effects = refund_effects(order_of(row), r, taken(row, r), model, "USD")
    order_credits = {(c["channel"], c["campaign"]): c["weight"] for c in message["models"][model]}
    got = {(channel, campaign): (refunds, refunded, gp) for channel, campaign, refunds, refunded, gp in effects.figures}
    assert got.keys() == order_credits.keys()
    for key, weight in order_credits.items():
        assert got[key] == pytest.approx((weight * 0.25, weight * 30.0, weight * 30.0 * 0.5))
    assert sum(f[3] for f in effects.figures) == pytest.approx(30.0)
    m = effects.message
    assert (m["type"], m["conversion_id"], m["order_id"], m["ts"], m["revenue"], m["model"]) == (
        "refund", "o-1", "A-1", TS + DAY, -30.0, model)
    assert [c["revenue"] for c in m["credits"]] == pytest.approx([-c["weight"] * 30.0 for c in m["credits"]])
    assert set(m["models"]) == set(METRIC_MODELS)
    assert effects.gross_profit == pytest.approx(15.0)


def test_a_ledger_row_is_forgotten_past_the_refund_window_unless_a_refund_waits() -> None:
    row = ledger()
    assert not is_expired(row, TS + WINDOW, WINDOW)
    assert is_expired(row, TS + WINDOW + 1, WINDOW)
    add_pending(row, 1, refund(1.0), ["refunds", 0, 1, None, "{}"])
    assert not is_expired(row, TS + WINDOW + 1, WINDOW)


def test_a_remembered_order_with_four_credited_touches_and_two_commissions_takes_under_900_bytes() -> None:
    assert ledger_bytes("A-1", ledger()) < 900


def test_a_refund_read_before_its_order_waits_until_every_journey_partition_is_past_its_ts() -> None:
    marks = JourneyMarks(partitions=2)
    queue = GraceQueue(0.0, 60.0, marks)  # type: ignore[arg-type]
    queue.add(0, "A-1", 10, TS, now=100.0)
    assert queue.ready(100.1, {0}) == []  # no journey partition has said anything
    marks.report(0, TS + 5, 100.2)
    assert queue.ready(100.3, {0}) == []  # partition 1 may still hold the order
    marks.report(1, TS - 1, 100.4)
    assert queue.ready(100.5, {0}) == []  # partition 1 has not attributed its orders up to ts
    marks.report(1, TS, 100.6)
    assert queue.ready(100.7, {0}) == [(0, "A-1", 10)]


def test_a_mark_reported_before_the_refund_arrived_does_not_release_it() -> None:
    marks = JourneyMarks(partitions=1)
    queue = GraceQueue(0.0, 60.0, marks)  # type: ignore[arg-type]
    marks.report(0, TS + 1_000, 99.0)
    queue.add(0, "A-1", 10, TS, now=100.0)
    assert queue.ready(100.1, {0}) == []
    marks.report(0, TS + 1_000, 100.2)
    assert queue.ready(100.3, {0}) == [(0, "A-1", 10)]


def test_refunds_of_a_partition_are_judged_in_sequence_order() -> None:
    marks = JourneyMarks(partitions=1)
    queue = GraceQueue(0.0, 60.0, marks)  # type: ignore[arg-type]
    queue.add(0, "A-1", 10, TS + 50, now=100.0)
    queue.add(0, "A-2", 11, TS, now=100.0)
    marks.report(0, TS + 10, 100.1)
    assert queue.ready(100.2, {0}) == []  # the later refund waits behind the earlier one
    marks.report(0, TS + 50, 100.3)
    assert queue.ready(100.4, {0}) == [(0, "A-1", 10), (0, "A-2", 11)]


def test_a_refund_lowers_the_customer_s_lifetime_revenue_on_the_acquiring_channels_once() -> None:
    first = CustomerOrder("o-1", TS, 100.0, 40.0, (("google_ads", 0.75), ("email", 0.25)))
    customer = absorb(None, first, 400 * DAY).customer
    assert customer is not None
    result = absorb_refund(customer, "r-1", 20.0, 8.0)
    assert result.outcome == "repeat" and result.customer is not None
    assert result.delta == {"google_ads": [0.0, 0.0, 0.0, -15.0, -6.0], "email": [0.0, 0.0, 0.0, -5.0, -2.0]}
    after: Customer = result.customer
    assert (after.orders, after.revenue, after.gross_profit) == (1, 80.0, 32.0)
    assert absorb_refund(after, "r-1", 20.0, 8.0).outcome == "duplicate"
    assert after.has(id_hash("r-1"))
    assert absorb_refund(None, "r-2", 5.0, 1.0).outcome == "late"


def test_the_refund_message_follows_the_published_attribution_schema() -> None:
    validate = fastjsonschema.compile(load_schema("attribution"))
    row = ledger()
    r = refund(None)
    effects = refund_effects(order_of(row), r, taken(row, r), "linear", "USD")
    validate(effects.message)
    without_order = {k: v for k, v in effects.message.items() if k != "order_id"}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate(without_order)
    validate(attribution())  # an order still needs its tracking_id, and has it
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({k: v for k, v in attribution().items() if k != "tracking_id"})
