"""The fraud guards of CONTRACT.md section 9 in the journeys stage, without Kafka: CLICK_FLOOD keeps a tracking ID's
clicks beyond the limit out of `clicks` and out of every journey; MIN_CLICK_GAP keeps a click just before a conversion
out of its credit. Both count in `attribution_suspect_total`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streams.config import Settings
from streams.core.events import parse_message
from streams.core.journeys import Journey
from streams.core.windows import CLICKS, SPEND, SUSPECT_CLICKS
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.journeys import JourneyStage
from tests.fakes import FakeTable, journey_message

T0 = 1_763_800_020_000
MINUTE = 60_000


def stage(**env: str) -> JourneyStage:
    settings = Settings.from_env({"TOPIC_PARTITIONS": "4", **env})
    registry = CollectorRegistry()
    w = SimpleNamespace(settings=settings, metrics=WorkerMetrics(registry, 10), registry=registry,
                        journeys=FakeTable(), partials=FakeTable(),
                        partition_of=lambda key: partition_of(key, settings.topic_partitions))
    return JourneyStage(w)  # type: ignore[arg-type]


def clicks(tid: str, *times: int, channel: str = "display", prefix: str = "c") -> list[Any]:
    objs = [{"event_id": f"{prefix}{i}", "type": "click", "ts": ts, "tracking_id": tid, "channel": channel,
             "campaign": "retarget", "cost": 0.5} for i, ts in enumerate(times)]
    valid, rejections = parse_message(orjson.dumps(objs), "clicks", stage().w.settings)
    assert rejections == []
    return valid


def channel_figures(journeys: JourneyStage, channel: str) -> list[float]:
    total: list[float] = []
    for key, (_, _, campaigns) in journeys.w.partials.items():
        if key.split("|", 2)[2] == channel:
            for values in campaigns.values():
                total = [a + b for a, b in zip(total or [0.0] * len(values), values, strict=True)]
    return total


def suspect(journeys: JourneyStage, channel: str, reason: str) -> float:
    return journeys.w.registry.get_sample_value("attribution_suspect_total",
                                                {"channel": channel, "reason": reason}) or 0.0


def test_a_tracking_ids_clicks_beyond_the_flood_limit_count_as_suspect_not_as_clicks() -> None:
    journeys = stage()  # CLICK_FLOOD=30/1h by default
    bot = clicks("bot", *(T0 + i * MINUTE for i in range(45)))  # 45 clicks in 45 minutes
    journeys.absorb_batch([journey_message(0, bot)])
    figures = channel_figures(journeys, "display")
    assert (figures[CLICKS], figures[SUSPECT_CLICKS]) == (30, 15)
    assert figures[SPEND] == 45 * 0.5  # a suspect click's cost was still paid
    assert Journey.from_row(journeys.w.journeys.row("bot")).touch_count() == 30
    assert suspect(journeys, "display", "flood") == 15
    assert journeys.w.registry.get_sample_value("attribution_clicks_total",
                                                {"channel": "display", "campaign": "retarget"}) == 30


def test_clicks_spread_wider_than_the_span_are_never_suspect() -> None:
    journeys = stage()
    journeys.absorb_batch([journey_message(0, clicks("fan", *(T0 + i * 3 * MINUTE for i in range(60))))])  # 20 an hour
    figures = channel_figures(journeys, "display")
    assert (figures[CLICKS], figures[SUSPECT_CLICKS]) == (60, 0)


def test_a_replayed_suspect_click_is_not_counted_again_and_a_repeat_is_a_duplicate() -> None:
    journeys = stage()
    bot = clicks("bot", *(T0 + i * 1000 for i in range(32)))
    journeys.absorb_batch([journey_message(0, bot)])
    before = channel_figures(journeys, "display")
    journeys.absorb_batch([journey_message(0, bot)])  # the same input again, as after a restart
    assert channel_figures(journeys, "display") == before
    journeys.absorb_batch([journey_message(1, bot[-1:])])  # the suspect click sent twice
    assert channel_figures(journeys, "display") == before
    assert journeys.w.registry.get_sample_value(
        "attribution_events_total", {"type": "click", "outcome": "duplicate"}) == 1


def test_a_replay_after_the_partials_were_lost_counts_the_suspect_clicks_as_suspect_again() -> None:
    journeys = stage()
    bot = clicks("bot", *(T0 + i * 1000 for i in range(32)))
    journeys.absorb_batch([journey_message(0, bot)])
    expected = channel_figures(journeys, "display")
    journeys.w.partials.clear()  # the journey rows reached the changelog, the partials did not
    journeys.absorb_batch([journey_message(0, bot)])
    assert channel_figures(journeys, "display") == expected


def test_the_flood_rule_off_keeps_every_click() -> None:
    journeys = stage(CLICK_FLOOD="off")
    journeys.absorb_batch([journey_message(0, clicks("bot", *(T0 + i * 1000 for i in range(40))))])
    figures = channel_figures(journeys, "display")
    assert (figures[CLICKS], figures[SUSPECT_CLICKS]) == (40, 0)


def order(tid: str, ts: int, event_id: str = "o1") -> Any:
    obj = {"event_id": event_id, "type": "order", "ts": ts, "tracking_id": tid, "order_id": f"A-{event_id}",
           "revenue": 100.0}
    valid, rejections = parse_message(orjson.dumps([obj]), "orders", stage().w.settings)
    assert rejections == []
    return valid[0]


def credited_channels(journeys: JourneyStage, tid: str, conversion: Any) -> dict[str, float]:
    journey = Journey.from_row(journeys.w.journeys.row(tid))
    message, _ = journeys.attribute(journey, conversion, None, {}, False)
    journeys.publish_counts()
    return {c["channel"]: c["weight"] for c in message["credits"]}


def test_a_click_less_than_min_click_gap_before_the_order_takes_no_credit_and_counts_as_suspect() -> None:
    journeys = stage()  # MIN_CLICK_GAP=10s by default
    journeys.absorb_batch([journey_message(0, [*clicks("v", T0, channel="search", prefix="s"),
                                       *clicks("v", T0 + 55_001, channel="coupons", prefix="k")])])
    assert credited_channels(journeys, "v", order("v", T0 + 65_000)) == {"search": 1.0}  # 9.999 s: too close
    assert suspect(journeys, "coupons", "click_gap") == 1
    assert channel_figures(journeys, "coupons")[CLICKS] == 1  # it is still a click


def test_a_click_exactly_min_click_gap_before_the_order_is_credited() -> None:
    journeys = stage()
    journeys.absorb_batch([journey_message(0, clicks("v", T0, channel="coupons"))])
    assert credited_channels(journeys, "v", order("v", T0 + 10_000)) == {"coupons": 1.0}
    assert suspect(journeys, "coupons", "click_gap") == 0


def test_with_min_click_gap_off_the_last_click_wins_however_close() -> None:
    journeys = stage(MIN_CLICK_GAP="0")
    journeys.absorb_batch([journey_message(0, [*clicks("v", T0, channel="search", prefix="s"),
                                       *clicks("v", T0 + 59_999, channel="coupons", prefix="k")])])
    assert credited_channels(journeys, "v", order("v", T0 + 60_000)) == {"coupons": 1.0}
