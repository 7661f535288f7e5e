"""Events sent with `"consent": false` (CONTRACT.md section 10), from the intake through the journeys stage without
Kafka: counted in their window's figures, stored nowhere, conversions to (direct), a replay not counted twice."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.events import ANONYMOUS, parse_message
from streams.core.journeys import ANONYMOUS_KEY_PREFIX
from streams.core.windows import CLICKS, GROSS_PROFIT, IMPRESSIONS, LEADS, NEW_CUSTOMERS, ORDERS, REVENUE, SPEND
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.intake import route_key
from streams.stages.journeys import JourneyStage
from tests.fakes import FakeTable, journey_message

T0 = 1_763_800_020_000
SETTINGS = Settings.from_env({"TOPIC_PARTITIONS": "4", "DEFAULT_MARGIN": "0.5"})


def stage() -> JourneyStage:
    registry = CollectorRegistry()
    w = SimpleNamespace(settings=SETTINGS, metrics=WorkerMetrics(registry, 10), registry=registry,
                        journeys=FakeTable(), partials=FakeTable(),
                        partition_of=lambda key: partition_of(key, SETTINGS.topic_partitions))
    return JourneyStage(w)  # type: ignore[arg-type]


def events(topic: str, *objs: dict[str, Any]) -> list[Any]:
    valid, rejections = parse_message(orjson.dumps(list(objs)), topic, SETTINGS)
    assert rejections == []
    return valid


def figures(journeys: JourneyStage) -> dict[tuple[str, str], list[float]]:
    """(channel, campaign) -> figures, summed over the partials."""
    out: dict[tuple[str, str], list[float]] = {}
    for key, (_, _, campaigns) in journeys.w.partials.items():
        channel = key.split("|", 2)[2]
        for campaign, values in campaigns.items():
            total = out.setdefault((channel, campaign), [0.0] * len(values))
            for i, value in enumerate(values):
                total[i] += value
    return out


def counter(journeys: JourneyStage, name: str, **labels: str) -> float:
    return journeys.w.registry.get_sample_value(name, labels) or 0.0


def without_consent() -> list[Any]:
    touch = {"ts": T0, "tracking_id": "visitor-1", "consent": False, "channel": "facebook", "campaign": "ugc"}
    return [
        *events("impressions", {**touch, "event_id": "i1", "type": "impression"},
                {**touch, "event_id": "i1", "type": "impression"}),  # a repeat: nothing remembers the first
        *events("clicks", {**touch, "event_id": "c1", "type": "click", "cost": 0.4}),
        *events("leads", {"event_id": "l1", "type": "lead", "ts": T0, "tracking_id": "visitor-1", "consent": False,
                          "customer_id": "cust-1"}),
        *events("orders", {"event_id": "o1", "type": "order", "ts": T0, "tracking_id": "visitor-1", "consent": False,
                           "order_id": "A-1", "revenue": 80.0, "customer_id": "cust-1"}),
    ]


def test_the_intake_keys_them_by_a_shard_not_by_the_visitor() -> None:
    keys = {route_key(event) for event in without_consent()}
    assert all(key.startswith(ANONYMOUS_KEY_PREFIX) for key in keys)
    assert all(event.tracking_id == ANONYMOUS for event in without_consent())
    assert not any("visitor-1" in key or "cust-1" in key for key in keys)


def test_they_are_counted_in_their_window_and_stored_nowhere() -> None:
    journeys = stage()
    journeys.absorb_batch([journey_message(0, without_consent())])

    assert dict(journeys.w.journeys) == {}, "a journey row was kept"
    assert len(journeys.grace) == 0, "a conversion waits for touchpoints it must not look up"
    got = figures(journeys)
    assert got[("facebook", "ugc")][IMPRESSIONS] == 2 and got[("facebook", "ugc")][CLICKS] == 1
    assert got[("facebook", "ugc")][SPEND] == 0.4
    direct = got[("(direct)", "(none)")]
    assert (direct[LEADS], direct[ORDERS], direct[REVENUE], direct[GROSS_PROFIT]) == (1, 1, 80.0, 40.0)
    assert direct[NEW_CUSTOMERS] == 0
    assert counter(journeys, "attribution_impressions_total", channel="facebook", campaign="ugc") == 2
    assert counter(journeys, "attribution_revenue_total", channel="(direct)", campaign="(none)") == 80.0
    assert counter(journeys, "attribution_events_total", type="order", outcome="ok") == 1
    assert counter(journeys, "attribution_events_total", type="impression", outcome="duplicate") == 0


def test_a_replay_after_a_restart_is_not_counted_twice_and_new_ones_are() -> None:
    journeys = stage()
    journeys.absorb_batch([journey_message(0, without_consent())])
    before = figures(journeys)
    journeys.absorb_batch([journey_message(0, without_consent())])  # the same message read again
    assert figures(journeys) == before
    journeys.absorb_batch([journey_message(1, without_consent())])  # sent again: a new message, counted again
    after = figures(journeys)
    assert after[("facebook", "ugc")][IMPRESSIONS] == 2 * before[("facebook", "ugc")][IMPRESSIONS]
    assert after[("(direct)", "(none)")][REVENUE] == 160.0


def test_with_consent_the_same_events_join_the_visitor_s_journey_and_conversions_wait() -> None:
    journeys = stage()
    consented = [event._replace(tracking_id="visitor-1") for event in without_consent()]
    consented[-1] = consented[-1]._replace(order_id="A-1")
    journeys.absorb_batch([journey_message(0, consented)])
    assert set(journeys.w.journeys) == {"visitor-1"}
    assert len(journeys.grace) == 2  # the lead and the order wait out the grace for their touchpoints
    assert counter(journeys, "attribution_events_total", type="impression", outcome="duplicate") == 1
    assert ("(direct)", "(none)") not in figures(journeys)
