"""The fraud guards (CONTRACT.md section 9) end to end: real Apache Kafka, real Redis, a worker with the contract's
defaults `MIN_CLICK_GAP=10s` and `CLICK_FLOOD=30/1h`, killed with SIGKILL mid-run and restarted.

The campaign is the reliability scenario (tests/integration/reliability_support.py), whose conversions often come a
few seconds after a click, plus bots: tracking IDs that click 60 times within a few minutes, one of which orders at
the end. The truth is computed here, from the contract's words and not the engine's code: a click less than 10 s
before a conversion is no touchpoint of it (it still counts in `clicks`); a tracking ID's clicks beyond 30 within an
hour are no touchpoints and count in `suspect_clicks`, not in `clicks` (their cost is still spend).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.integration.reliability_support import (
    CAMPAIGNS,
    WINDOW_MS,
    S,
    Scenario,
    assert_exact_on,
    produce_steps,
    scrape,
    started,
    wait_processed,
    window_of,
)
from tests.integration.services import KafkaBroker, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

GAP_MS = 10 * S
FLOOD_LIMIT = 30
BOTS, BOT_CLICKS = 3, 60
EVENTS = 3_000


@dataclass
class GuardedScenario(Scenario):
    too_close: int = 0  # clicks kept out of a conversion's credit by MIN_CLICK_GAP
    flooded: int = 0  # bot clicks beyond CLICK_FLOOD

    def expect(self, conversion: dict[str, Any], path: list[tuple[int, str, str, str]], revenue: float,
               margin: float, new_customer: bool) -> None:
        ts = conversion["ts"]
        kept = [t for t in path if not (t[1] == "click" and ts - GAP_MS < t[0] <= ts)]
        self.too_close += len(path) - len(kept)
        super().expect(conversion, kept, revenue, margin, new_customer)

    def plan(self, rng: random.Random, touches: list[dict[str, Any]], spend: list[dict[str, Any]],
             conversions: list[tuple[int, list[dict[str, Any]]]], repeats: list[dict[str, Any]]) -> None:
        """The scenario's plan, with each bot's clicks in one array of the first step: CLICK_FLOOD judges a
        tracking ID's clicks as they arrive, and one array arrives in order (as the collector's events of one
        tracking ID do, on their partition), while the scenario's arrays go to any partition."""
        end = self.now - 5 * S
        start = window_of(end) - (self.windows - 1) * WINDOW_MS
        pairs = [(channel, campaign) for channel, campaigns in CAMPAIGNS.items() for campaign in campaigns]
        bots: list[list[dict[str, Any]]] = []
        for b in range(BOTS):
            tid = f"{self.run}-bot{b}"
            step = (end - 60 * S - start) // BOT_CLICKS
            accepted: list[tuple[int, str, str, str]] = []
            bots.append([])
            for k in range(BOT_CLICKS):  # all within minutes: every hour that holds one holds them all
                ts = start + b * 7 + k * step
                channel, campaign = rng.choice(pairs)
                bots[-1].append({"event_id": f"{tid}-c{k}", "type": "click", "ts": ts, "tracking_id": tid,
                                 "channel": channel, "campaign": campaign, "cost": 0.25})
                self.outcomes["click", "ok"] += 1
                if len(accepted) < FLOOD_LIMIT:
                    accepted.append((ts, "click", channel, campaign))
                    self.add(channel, campaign, ts, clicks=1, spend=0.25)
                else:
                    self.flooded += 1
                    self.add(channel, campaign, ts, suspect_clicks=1, spend=0.25)
            if b == 0:  # credited to its 30th click, the last one it kept, not to the clicks that flooded
                order = {"event_id": f"{tid}-o", "type": "order", "ts": end - 30 * S, "tracking_id": tid,
                         "order_id": f"{tid}-order", "revenue": 99.0}
                self.expect(order, accepted, 99.0, 1.0, False)
                conversions.append((order["ts"], [order]))
        super().plan(rng, touches, spend, conversions, repeats)
        for clicks in bots:
            self.steps[0].append(("clicks", orjson.dumps(clicks)))
            self.sent["click"] += len(clicks)


@pytest.fixture
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started_broker = kafka_broker_factory()
    yield started_broker
    started_broker.stop()


async def test_the_scenario_exercises_both_guards() -> None:
    scenario = GuardedScenario(seed=5, events=EVENTS)
    assert scenario.flooded == BOTS * (BOT_CLICKS - FLOOD_LIMIT)
    assert scenario.too_close > 50  # many conversions come seconds after their last click
    bot_order = scenario.conversions[f"{scenario.run}-bot0-o"]
    assert bot_order.credits != (("(direct)", "(none)"),)


async def test_guards_hold_exactly_through_a_kill_9(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    env = {"TOPIC_PARTITIONS": "4", "ATTRIBUTION_GRACE": "500ms", "FX_RATES": "EUR=1.1", "REDIS_URL": redis_url,
           "KAFKA_SESSION_TIMEOUT": "6s", "MIN_CLICK_GAP": "10s", "CLICK_FLOOD": "30/1h"}
    worker = await started(make_worker(bootstrap=broker.bootstrap, env=env, name="guarded"))
    scenario = GuardedScenario(seed=5, events=EVENTS)
    producing = asyncio.create_task(produce_steps(broker.bootstrap, scenario.steps, pause=0.05))

    at_kill = await wait_processed(worker, int(scenario.total_sent * 0.5), timeout=120)
    worker.kill()
    await asyncio.sleep(1.0)
    worker.restart()
    await producing

    report = {"test": "fraud guards, kill -9", "events": scenario.total_sent, "judged_at_kill": at_kill,
              "flooded": scenario.flooded, "too_close": scenario.too_close}
    await assert_exact_on(broker.bootstrap, scenario, report, 90.0, worker)
    samples = await asyncio.to_thread(scrape, worker)
    reasons = {dict(labels)["reason"] for (name, labels), value in samples.items()
               if name == "attribution_suspect_total" and value > 0}
    assert "click_gap" in reasons  # the restarted worker attributed conversions with clicks too close
