"""Refunds and cancellations (CONTRACT.md section 9) end to end on the real Apache Kafka broker.

A seeded campaign (`reliability_support.Scenario`) plus refunds of about a fifth of its orders (partial,
whole, partial then the rest, some in EUR), refunds of orders that carry an affiliate's promo code after an
assisting affiliate's click (commission reversals), a repeated refund, refunds of unknown orders and
refunds beyond what is left. The test computes on its own, without the engine's code, what the metric
topics (net revenue and gross profit, `refunds`, `refunded_revenue`, and so the ratios), every refund
message on `attributions` and the dead letters must end with, and requires the engine to match exactly,
also when its only worker is killed with SIGKILL mid-run and restarted.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema
import orjson
import pytest

from streams.core.events import load_schema
from tests.integration.reliability_support import (
    EUR,
    S,
    Scenario,
    assert_exact_on,
    close,
    outcomes,
    poll,
    produce_steps,
    read_attributions,
    read_latest,
    scrape,
    started,
)
from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 3000
PARTITIONS = 4
CONVERGE_S = 90.0
ANNA = {"affiliate_id": "anna", "channel": "influencer", "promo_codes": ["ANNA10"], "commission_rate": 0.1,
        "assist_fee": 2.0}
BOB = {"affiliate_id": "bob", "channel": "affiliate", "promo_codes": [], "commission_rate": 0.05, "assist_fee": 1.5}


@dataclass
class ExpectedRefund:
    conversion_id: str
    order_id: str
    ts: int
    amount: float  # USD
    credits: tuple[tuple[str, str, str | None], ...]
    commissions: dict[tuple[str, str], float]  # (affiliate_id, role) -> amount reversed (negative)


@dataclass
class RefundScenario(Scenario):
    refunds: dict[str, ExpectedRefund] = field(default_factory=dict)
    dead: Counter = field(default_factory=Counter)  # error -> refunds that must go to events.dlq
    ltv: dict[str, list[float]] = field(default_factory=dict)  # channel -> [lifetime revenue, gross profit]
    affiliate_orders: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        rng = random.Random(self.seed + 1000)
        self.add_affiliate_orders(rng)
        step_of, orders = {}, {}
        for index, step in enumerate(self.steps):
            for topic, value in step:
                if topic == "orders":
                    for order in orjson.loads(value):
                        if not order["event_id"].endswith("-reload"):
                            step_of[order["event_id"]], orders[order["event_id"]] = index, order
        for event_id, order in orders.items():  # every order of a customer, refunds taken off below
            if order.get("customer_id"):  # a customer's orders share one visitor's path: one acquiring channel
                expected = self.conversions[event_id]
                sums = self.ltv.setdefault(expected.credits[0][0], [0.0, 0.0])
                sums[0] += expected.revenue
                sums[1] += expected.revenue * order.get("margin", 1.0)
        later: dict[int, list[dict[str, Any]]] = {}
        n = 0
        for event_id, order in sorted(orders.items()):
            if rng.random() >= (0.6 if order.get("promo_code") else 0.2):
                continue
            expected = self.conversions[event_id]
            revenue, eur = expected.revenue, order.get("currency") == "EUR"
            margin = order.get("margin", 1.0)
            touch = (*expected.credits[0], "anna" if order.get("promo_code") else None)
            refunds: list[dict[str, Any]] = []
            ts = order["ts"]

            def refund(amount: float | None, usd: float, ts: int, *, eur: bool, touch: Any = touch,
                       order: dict[str, Any] = order, margin: float = margin, revenue: float = revenue,
                       refunds: list[dict[str, Any]] = refunds) -> None:
                nonlocal n
                n += 1
                rid = f"refund-{self.run}-{n}"
                message: dict[str, Any] = {"event_id": rid, "type": "refund", "ts": ts, "order_id": order["order_id"],
                                           "reason": "returned"}
                if amount is not None:
                    message["amount"] = amount
                    if eur:
                        message["currency"] = "EUR"
                refunds.append(message)
                if usd < 0:  # a rejection
                    return
                full = close(self.left[order["order_id"]] - usd, 0.0)
                self.left[order["order_id"]] -= usd
                commissions = {}
                if order.get("promo_code"):
                    commissions["anna", "converter"] = -ANNA["commission_rate"] * usd
                    if full:
                        commissions["bob", "assist"] = -BOB["assist_fee"]
                self.refunds[rid] = ExpectedRefund(order["event_id"], order["order_id"], ts, usd, (touch,),
                                                   commissions)
                self.add(touch[0], touch[1], ts, revenue=-usd, gross_profit=-usd * margin,
                         refunds=usd / revenue, refunded_revenue=usd)
                if order.get("customer_id"):
                    self.ltv[touch[0]][0] -= usd
                    self.ltv[touch[0]][1] -= usd * margin

            self.left[order["order_id"]] = revenue
            shape = rng.choice(("whole", "part", "part+rest", "exceeds+part"))
            ts = min(ts + rng.randint(1 * S, 20 * S), max(ts, self.now - 8 * S))  # in the past, as a rule
            if shape == "whole":
                refund(None, revenue, ts, eur=eur)
            elif shape == "exceeds+part":
                refund(round(revenue * 2 + 1, 2), -1, ts, eur=False)
                self.dead["refund exceeds order"] += 1
                if rng.random() < 0.5:  # a rejected refund sent again: a duplicate, not a second dead letter
                    refunds.append(dict(refunds[-1]))
                part = round(order["revenue"] / 3, 2)
                refund(part, part * EUR if eur else part, ts + 1, eur=eur)
            else:
                part = round(order["revenue"] * rng.uniform(0.1, 0.6), 2)
                refund(part, part * EUR if eur else part, ts, eur=eur)
                if shape == "part+rest":
                    refund(None, self.left[order["order_id"]], ts + rng.randint(1, 5 * S), eur=eur)
                    if rng.random() < 0.3:  # a second cancellation of a refunded order: nothing left
                        refund(None, -1, ts + 6 * S, eur=eur)
                        self.dead["refund exceeds order"] += 1
            if rng.random() < 0.1:  # the same refund event again: counted once
                refunds.append(dict(refunds[-1]))
            later.setdefault(step_of[event_id] + 1, []).extend(refunds)
        for k in range(3):  # orders nobody knows
            refunds = [{"event_id": f"refund-{self.run}-unknown{k}", "type": "refund", "ts": self.now - 10 * S,
                        "order_id": f"{self.run}-no-such-order{k}", "amount": 5.0}]
            later.setdefault(len(self.steps) - 1, []).extend(refunds)
            self.dead["unknown order_id"] += 1
        for index, refunds in sorted(later.items()):
            while index >= len(self.steps):
                self.steps.append([])
            self.steps[index].append(("refunds", orjson.dumps(refunds)))
            self.sent["refund"] += len(refunds)

    @property
    def left(self) -> dict[str, float]:
        if not hasattr(self, "_left"):
            self._left: dict[str, float] = {}
        return self._left

    def add_affiliate_orders(self, rng: random.Random) -> None:
        """Visitors who clicked Bob's link, then ordered with Anna's promo code: Anna converts (last click at the
        order's ts, channel influencer), Bob assisted."""
        half = len(self.steps) // 2
        for k in range(self.affiliate_orders):
            tid = f"{self.run}-aff{k}"
            ts = self.now - 150 * S + k * 3 * S
            click = {"event_id": f"{tid}-click", "type": "click", "ts": ts, "tracking_id": tid,
                     "channel": "affiliate", "campaign": "partners", "affiliate_id": "bob"}
            revenue = round(rng.uniform(20, 200), 2)
            order = {"event_id": f"{tid}-o", "type": "order", "ts": ts + 2 * S, "tracking_id": tid,
                     "order_id": f"{tid}-order", "revenue": revenue, "promo_code": "ANNA10", "margin": 0.5}
            self.add("affiliate", "partners", ts, clicks=1)
            self.outcomes["click", "ok"] += 1
            self.expect(order, [(ts, "click", "affiliate", "partners"), (ts + 2 * S, "click", "influencer", "(none)")],
                        revenue, 0.5, False)
            self.steps[half - 1].append(("clicks", orjson.dumps([click])))
            self.steps[half].append(("orders", orjson.dumps([order])))
            self.sent.update(("click", "order"))


@pytest.fixture
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started_broker = kafka_broker_factory()
    yield started_broker
    started_broker.stop()


def check_refund_messages(by_key: dict[str, list[dict[str, Any]]], scenario: RefundScenario) -> list[str]:
    validate = fastjsonschema.compile(load_schema("attribution"))
    problems = []
    mine = {key: messages for key, messages in by_key.items() if key.startswith(f"refund-{scenario.run}")}
    if missing := sorted(scenario.refunds.keys() - mine.keys()):
        problems.append(f"{len(missing)} refunds without a message, e.g. {missing[:5]}")
    if extra := sorted(mine.keys() - scenario.refunds.keys()):
        problems.append(f"{len(extra)} unexpected refund messages, e.g. {extra[:5]}")
    for key in sorted(scenario.refunds.keys() & mine.keys()):
        expected = scenario.refunds[key]
        for message in mine[key]:  # a repeat after a crash must say the same
            validate(message)
            credits = tuple((c["channel"], c["campaign"], c["affiliate_id"]) for c in message["credits"])
            commissions = {(c["affiliate_id"], c["role"]): c["amount"] for c in message["commissions"]}
            ok = (message["type"] == "refund" and message["conversion_id"] == expected.conversion_id
                  and message["order_id"] == expected.order_id and message["ts"] == expected.ts
                  and close(message["revenue"], -expected.amount) and credits == expected.credits
                  and all(close(c["revenue"], -expected.amount) and close(c["weight"], 1.0)
                          for c in message["credits"])
                  and commissions.keys() == expected.commissions.keys()
                  and all(close(commissions[k], v) for k, v in expected.commissions.items())
                  and message["model"] == "last_click" and message["currency"] == "USD"
                  and set(message["models"]) >= {"last_click", "first_click", "linear", "markov"})
            if not ok:
                problems.append(f"{key}: {message} != {expected}")
    return problems


async def check_dead_letters(bootstrap: str, scenario: RefundScenario) -> list[str]:
    seen: dict[tuple[int, int, int | None], str] = {}  # at least once: the same input may come twice
    for record in await consume_all(bootstrap, "events.dlq", timeout=20):
        dead = orjson.loads(record.value)
        if dead["topic"] == "refunds" and f"refund-{scenario.run}" in dead["value"]:
            seen[dead["partition"], dead["offset"], dead["index"]] = dead["error"]
    found = Counter(seen.values())
    return [] if found == scenario.dead else [f"dead letters {dict(found)} != {dict(scenario.dead)}"]


async def check_lifetime_value(bootstrap: str, scenario: RefundScenario) -> list[str]:
    """metrics.ltv: every customer's orders on the acquiring channel, less what was refunded of them."""
    latest = {}
    for record in await consume_all(bootstrap, "metrics.ltv", timeout=20):
        latest[record.key.decode()] = orjson.loads(record.value)
    problems = []
    for channel, (revenue, gross_profit) in sorted(scenario.ltv.items()):
        got = latest.get(channel, {})
        if not (close(got.get("revenue"), revenue) and close(got.get("gross_profit"), gross_profit)):
            problems.append(f"metrics.ltv {channel}: revenue {got.get('revenue')} != {revenue}, gross_profit "
                            f"{got.get('gross_profit')} != {gross_profit}")
    return problems


def check_ratios(latest: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """Ratios use the net figures: aov = net revenue / orders, roas, roi and romi likewise."""
    validate = fastjsonschema.compile(load_schema("metrics"))
    problems = []
    for key, m in latest.items():
        validate(m)
        expect = {"aov": (m["revenue"], m["orders"]), "roas": (m["revenue"], m["spend"]),
                  "roi": (m["revenue"] - m["spend"], m["spend"]), "romi": (m["gross_profit"] - m["spend"], m["spend"])}
        for name, (num, den) in expect.items():
            if (m[name] is None) != (den == 0) or den and not close(m[name], num / den):
                problems.append(f"{key}: {name} {m[name]} != {num}/{den}")
    return problems


@pytest.mark.parametrize("kill", [False, True], ids=["clean", "kill_9"])
async def test_refunds_net_every_figure_reverse_commissions_and_stay_exact(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess], kill: bool
) -> None:
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "FX_RATES": "EUR=1.1",
           "REDIS_URL": redis_url, "KAFKA_SESSION_TIMEOUT": "6s"}
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=env, name="refunds"))
    for record in (ANNA, BOB):
        await produce(broker.bootstrap, "affiliates", [orjson.dumps(record)], key=record["affiliate_id"].encode())
    await asyncio.sleep(1.5)
    scenario = RefundScenario(seed=7, events=EVENTS)
    assert len(scenario.refunds) > 30 and scenario.dead["refund exceeds order"] > 2
    assert any(("bob", "assist") in r.commissions for r in scenario.refunds.values())
    assert any(("anna", "converter") in r.commissions and ("bob", "assist") not in r.commissions
               for r in scenario.refunds.values())
    # Slow enough that the kill comes while refunds are being judged (they come in the later steps).
    producing = asyncio.create_task(produce_steps(broker.bootstrap, scenario.steps, pause=2.0 if kill else 0.05))
    report: dict[str, object] = {"test": "refunds", "kill": kill, "refunds": len(scenario.refunds)}
    if kill:
        async def some_refunds_judged() -> int:
            judged = await asyncio.to_thread(outcomes, worker)
            return judged["refund", "ok"] >= 10 and judged["refund", "ok"]

        report["refunds_judged_at_kill"] = await poll(some_refunds_judged, timeout=120, interval=0.1)
        worker.kill()
        await asyncio.sleep(1.0)
        worker.restart()
    await producing

    await assert_exact_on(broker.bootstrap, scenario, report, CONVERGE_S, worker)
    problems = check_refund_messages(await read_attributions(broker.bootstrap), scenario)
    for _ in range(30):  # an unknown order_id is a dead letter only once the refund has waited a while
        dead = await check_dead_letters(broker.bootstrap, scenario)
        if not dead:
            break
        await asyncio.sleep(1.0)
    problems += dead
    problems += check_ratios(await read_latest(broker.bootstrap, "metrics.channel"))
    for _ in range(20):  # metrics.ltv is published about once a second per channel
        ltv_problems = await check_lifetime_value(broker.bootstrap, scenario)
        if not ltv_problems:
            break
        await asyncio.sleep(1.0)
    assert problems + ltv_problems == [], "\n".join((problems + ltv_problems)[:30])
    assert sum(m["refunds"] for m in (await read_latest(broker.bootstrap, "metrics.channel")).values()) > 10
    if not kill:  # a worker's counters hold what it judged: every refund, in the clean run
        samples = await asyncio.to_thread(scrape, worker)
        refunded = sum(value for (name, _), value in samples.items() if name == "attribution_refunded_revenue_total")
        assert refunded == pytest.approx(sum(r.amount for r in scenario.refunds.values()))
