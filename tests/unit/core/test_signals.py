"""Switch-off signals and ROMI (CONTRACT.md section 7), one test per rule."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streams.commands.top import Board
from streams.config import Settings
from streams.core.kpis import Figures, metrics_message, romi
from streams.core.signals import KeyState, Settling, Span, Thresholds, decide, format_duration, judge, reason
from streams.serving.prometheus import WorkerMetrics
from streams.stages.signals import CAMPAIGN_PREFIX, CHANNEL_PREFIX, SignalStage
from tests.fakes import FakeFence, FakeTable, KeyedTopic

H = 3_600_000
W = 60_000
T0 = 1_763_796_400_000
T = Thresholds(window_ms=H, min_spend=50.0, romi_floor=0.0, romi_scale=1.0)


def window(start: int, spend: float, revenue: float, gross_profit: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"channel": "tiktok", "campaign": None, "window_start": start, "window_end": start + W, "final": False,
            "spend": spend, "revenue": revenue, "gross_profit": revenue if gross_profit is None else gross_profit,
            **extra}


def state_with(*messages: dict[str, Any], campaign: str | None = None) -> KeyState:
    state = KeyState("tiktok", campaign)
    for message in messages:
        state = state.absorb(message, H)
    return state


def span(spend: float, gross_profit: float, revenue: float | None = None) -> Span:
    return Span(T0, T0 + H, spend, gross_profit if revenue is None else revenue, gross_profit)


# --- ROMI ------------------------------------------------------------------------------------------------


def test_romi_is_gross_profit_minus_spend_over_spend_with_a_margin() -> None:
    revenue, margin, spend = 200.0, 0.4, 50.0
    figures = Figures(revenue=revenue, spend=spend, gross_profit=revenue * margin)
    assert romi(figures) == pytest.approx((80.0 - 50.0) / 50.0)
    assert metrics_message("tiktok", None, T0, W, False, figures)["romi"] == pytest.approx(0.6)
    assert span(spend, revenue * margin, revenue).romi == pytest.approx(0.6)
    assert span(spend, revenue * margin, revenue).roi == pytest.approx(3.0)


@pytest.mark.parametrize(("margin", "default_margin", "gross_profit"), [
    (0.4, 1.0, 80.0),  # the order's own margin
    (None, 1.0, 200.0),  # no margin: DEFAULT_MARGIN, 1 unless set
    (None, 0.25, 50.0),  # DEFAULT_MARGIN=0.25
])
async def test_gross_profit_is_revenue_times_margin_else_default_margin(
    margin: float | None, default_margin: float, gross_profit: float
) -> None:
    """As the journeys stage hands an order to the lifetime-value stage (and to the metric partials)."""
    from streams.core.events import Order
    from streams.core.journeys import Journey
    from streams.stages.journeys import JourneyStage

    settings = Settings.from_env({"DEFAULT_MARGIN": str(default_margin)} if default_margin != 1.0 else {})
    assert settings.default_margin == default_margin
    sent: list[tuple[int, Any]] = []

    async def send(value: bytes, partition: int) -> None:
        sent.append((partition, orjson.loads(value)))

    w = SimpleNamespace(settings=settings, metrics=WorkerMetrics(CollectorRegistry(), 10),
                        customer_orders=SimpleNamespace(send=send), partition_of=lambda key: len(key))
    journeys = JourneyStage(w)  # type: ignore[arg-type]
    order = Order("o", "order-1", T0, "tid-1", "order-1", 200.0, margin, None, "cust-1")

    message, _ = journeys.attribute(Journey(), order, None, {}, True)
    journeys.send_customer_order(0, 7, order, message)
    await journeys.send_customer_orders()

    [(partition, [record])] = sent
    assert partition == len("cust-1") and record["cid"] == "cust-1" and record["gross_profit"] == gross_profit
    assert record["credits"] == [["(direct)", 1.0]] and record["ts"] == T0
    assert span(50.0, record["gross_profit"], 200.0).romi == pytest.approx((gross_profit - 50.0) / 50.0)


def test_romi_is_null_on_zero_spend() -> None:
    assert romi(Figures(revenue=10.0, gross_profit=10.0)) is None
    assert span(0.0, 10.0).romi is None


# --- the thresholds -------------------------------------------------------------------------------------


def test_romi_under_the_floor_is_pause() -> None:
    assert decide(span(100.0, 99.99), T) == "pause"


def test_romi_exactly_at_the_floor_is_keep_not_pause() -> None:
    assert span(100.0, 100.0).romi == 0.0
    assert decide(span(100.0, 100.0), T) == "keep"


def test_romi_between_floor_and_scale_is_keep() -> None:
    assert decide(span(100.0, 150.0), T) == "keep"


def test_romi_exactly_at_scale_is_scale() -> None:
    assert span(100.0, 200.0).romi == 1.0
    assert decide(span(100.0, 200.0), T) == "scale"
    assert decide(span(100.0, 500.0), T) == "scale"


def test_no_signal_under_the_minimum_spend() -> None:
    assert decide(span(49.99, 0.0), T) is None
    assert decide(span(50.0, 0.0), T) == "pause"
    state = state_with(window(T0, 30.0, 0.0), window(T0 + W, 19.0, 0.0))
    assert judge(state, T).message is None


def test_other_thresholds_from_the_settings() -> None:
    t = Thresholds.from_settings(Settings.from_env({"SIGNAL_WINDOW": "30m", "SIGNAL_MIN_SPEND": "10",
                                                    "ROMI_FLOOR": "-0.5", "ROMI_SCALE": "2"}))
    assert t == Thresholds(30 * W, 10.0, -0.5, 2.0)
    assert decide(span(10.0, 6.0), t) == "keep"  # romi -0.4
    assert decide(span(10.0, 4.0), t) == "pause"  # romi -0.6
    assert decide(span(10.0, 30.0), t) == "scale"  # romi 2


# --- the message ------------------------------------------------------------------------------------------


def test_the_message_and_its_reason() -> None:
    state = state_with(window(T0, 212.0, 100.0, 80.0), window(T0 + H - W, 200.0, 90.0, 76.6))

    verdict = judge(state, T)

    assert verdict.message == {
        "channel": "tiktok", "campaign": None, "action": "pause",
        "reason": "romi -0.62 under floor 0 on spend 412.00 over 1h",
        "span_start": T0, "span_end": T0 + H, "spend": 412.0, "revenue": 190.0, "gross_profit": 156.6,
        "roi": pytest.approx((190.0 - 412.0) / 412.0), "romi": pytest.approx((156.6 - 412.0) / 412.0),
    }
    assert verdict.state.action == "pause"


def test_reasons_of_keep_and_scale() -> None:
    assert reason("scale", span(100.0, 250.0), T) == "romi 1.50 at or over scale 1 on spend 100.00 over 1h"
    assert reason("keep", span(100.0, 150.0), T) == "romi 0.50 between floor 0 and scale 1 on spend 100.00 over 1h"
    assert [format_duration(ms) for ms in (H, 90_000, 2 * 86_400_000, 1500)] == ["1h", "90s", "2d", "1500ms"]


def test_a_campaign_key_is_channel_slash_campaign() -> None:
    state = state_with(window(T0, 100.0, 10.0, campaign="ugc"), campaign="ugc")
    verdict = judge(state, T)
    assert verdict.state.key == "tiktok/ugc" and verdict.message["campaign"] == "ugc"
    assert KeyState("tiktok", None).key == "tiktok"


def test_no_message_while_the_action_is_unchanged() -> None:
    state = state_with(window(T0, 100.0, 10.0))
    first = judge(state, T)
    assert first.message is not None and first.message["action"] == "pause"

    worse = first.state.absorb(window(T0 + W, 100.0, 5.0), H)
    assert judge(worse, T).message is None

    better = worse.absorb(window(T0 + 2 * W, 10.0, 600.0), H)
    changed = judge(better, T)
    assert changed.message is not None and changed.message["action"] == "scale"
    assert judge(changed.state, T).message is None


def test_under_the_minimum_spend_the_last_action_stays() -> None:
    paused = judge(state_with(window(T0, 100.0, 10.0)), T).state
    quiet = paused.absorb(window(T0 + 2 * H, 5.0, 0.0), H)  # the old window left the span
    assert quiet.span(H).spend == 5.0
    verdict = judge(quiet, T)
    assert verdict.message is None and verdict.state.action == "pause"


# --- the span ---------------------------------------------------------------------------------------------


def test_the_span_is_the_windows_that_end_after_the_latest_event_time_minus_the_signal_window() -> None:
    state = state_with(
        window(T0 - W, 1000.0, 0.0),  # ends at T0: before the span
        window(T0, 60.0, 0.0),  # ends at T0 + W: exactly at the span's start, so not after it
        window(T0 + H, 40.0, 200.0),  # ends at T0 + H + W: the key's latest event time
    )
    s = state.span(H)
    assert (s.start, s.end) == (T0 + W, T0 + H + W)
    assert s.spend == 40.0
    assert set(state.windows) == {str(T0 + H)}


def test_a_later_message_for_a_window_replaces_the_earlier() -> None:
    state = state_with(window(T0, 100.0, 10.0), window(T0, 100.0, 300.0))
    assert state.span(H).revenue == 300.0
    assert judge(state, T).message["action"] == "scale"


def test_a_message_for_a_window_older_than_the_span_changes_nothing() -> None:
    state = state_with(window(T0 + 2 * H, 100.0, 300.0))
    assert state.absorb(window(T0, 999.0, 0.0), H).span(H) == state.span(H)


def test_state_round_trips_through_json_and_remembers_its_offset() -> None:
    state = state_with(window(T0, 100.0, 10.0)).absorb(window(T0 + W, 1.0, 1.0), H, (3, 41))
    again = KeyState.from_row(orjson.loads(orjson.dumps(state.to_row())))
    assert again == state
    assert again.seen(3, 41) and again.seen(3, 7) and not again.seen(3, 42) and not again.seen(2, 1)


# --- the stage: judged once per tick, gauges, replays -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stage(settle: bool = False) -> SignalStage:
    """A stage on fake wiring; unless `settle`, a change is announced at its first judgement."""
    registry = CollectorRegistry()
    w = SimpleNamespace(settings=Settings(), signal_keys=FakeTable(), signals=KeyedTopic(),
                        metrics=WorkerMetrics(registry, 10), registry=registry,
                        partition_of=lambda key: 0, assigned=lambda topic: {0})
    s = SignalStage(w, clock=Clock())  # type: ignore[arg-type]
    if not settle:
        s.settling.settle_s = 0.0
    return s


def batch(*items: tuple[str, int, dict[str, Any]]) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset, value=orjson.dumps(v)))
            for topic, offset, v in items]


def gauge(s: SignalStage, channel: str, campaign: str, action: str) -> float | None:
    return s.w.registry.get_sample_value("attribution_signal", {"channel": channel, "campaign": campaign,
                                                                 "action": action})


async def test_the_stage_announces_each_change_once_and_sets_the_gauges() -> None:
    s = stage()
    losing = window(T0, 100.0, 10.0)
    campaign = window(T0, 100.0, 300.0, campaign="ugc")
    s.absorb_batch(batch(("metrics.channel", 0, losing), ("metrics.campaign", 0, campaign)))
    await s.judge()
    s.absorb_batch(batch(("metrics.channel", 0, losing), ("metrics.channel", 1, losing)))  # replay, then same
    await s.judge()
    await s.judge()

    assert [(k, m["action"]) for k, m in s.w.signals.sent] == [(b"tiktok", "pause"), (b"tiktok/ugc", "scale")]
    assert [gauge(s, "tiktok", "", a) for a in ("pause", "keep", "scale")] == [1.0, 0.0, 0.0]
    assert [gauge(s, "tiktok", "ugc", a) for a in ("pause", "keep", "scale")] == [0.0, 0.0, 1.0]
    assert set(s.table) == {CHANNEL_PREFIX + "tiktok", CAMPAIGN_PREFIX + "tiktok/ugc"}

    s.recovered(set())  # this worker no longer owns the keys
    assert gauge(s, "tiktok", "", "pause") is None


async def test_nothing_is_announced_while_the_fence_is_shut_nor_for_a_key_owned_by_another_worker_now() -> None:
    """A worker paused past its session wakes with its keys gone to another worker: it reads figures older than
    the new owner's, and must not announce what they say."""
    s = stage()
    s.w.fence = FakeFence(is_open=False)
    s.absorb_batch(batch(("metrics.channel", 0, window(T0, 100.0, 10.0))))
    await s.judge()
    assert s.w.signals.sent == []
    s.w.fence.open = True  # its membership confirmed: the change is announced then
    await s.judge()
    assert [(k, m["action"]) for k, m in s.w.signals.sent] == [(b"tiktok", "pause")]
    s.w.assigned = lambda topic: set()  # tiktok's partition went to another worker
    s.absorb_batch(batch(("metrics.channel", 1, window(T0, 100.0, 300.0))))
    await s.judge()
    assert [k for k, _ in s.w.signals.sent] == [b"tiktok"]


def test_attribution_top_marks_a_channel_row_with_its_action() -> None:
    message = judge(state_with(window(T0, 100.0, 10.0)), T).message
    campaign = judge(state_with(window(T0, 100.0, 300.0, campaign="ugc"), campaign="ugc"), T).message
    board = Board()

    assert board.add_signal(b"tiktok", message, (0, 1))
    assert not board.add_signal(b"tiktok/ugc", campaign, (0, 2))
    assert board.view().actions == {"tiktok": "pause"}


async def test_a_key_silent_for_the_signal_window_plus_the_lateness_is_forgotten() -> None:
    s = stage()
    horizon = H + Settings().allowed_lateness_ms
    old = window(T0, 100.0, 10.0, channel="bing")
    s.absorb_batch(batch(("metrics.channel", 0, old), ("metrics.channel", 1, window(T0 + horizon - W, 100.0, 10.0))))
    await s.judge()
    s.sweep()
    assert set(s.table) == {CHANNEL_PREFIX + "bing", CHANNEL_PREFIX + "tiktok"}  # bing ends one window inside

    s.absorb_batch(batch(("metrics.channel", 2, window(T0 + horizon + W, 100.0, 10.0))))
    s.sweep()

    assert set(s.table) == {CHANNEL_PREFIX + "tiktok"}
    assert gauge(s, "bing", "", "pause") is None and gauge(s, "tiktok", "", "pause") == 1.0


# --- settling: a change of action is announced once it has held for the settle time ---


def test_a_new_action_is_announced_only_after_it_held_for_the_settle_time() -> None:
    settling = Settling(6.0)
    assert not settling.settled("tiktok", "pause", None, now=100.0)
    assert not settling.settled("tiktok", "pause", None, now=105.9)
    assert settling.settled("tiktok", "pause", None, now=106.0)


def test_a_change_that_goes_back_before_it_settles_is_never_announced() -> None:
    settling = Settling(6.0)
    assert not settling.settled("email", "pause", "scale", now=100.0)  # spend in, its orders still in the grace
    assert not settling.settled("email", "scale", "scale", now=102.0)  # the orders came: back to scale
    assert not settling.settled("email", "pause", "scale", now=107.0)  # a new pause starts its own settle time
    assert settling.waiting() == {"email"}
    assert settling.settled("email", "pause", "scale", now=113.0)


def test_a_judgement_that_changes_its_mind_restarts_the_settle_time() -> None:
    settling = Settling(6.0)
    assert not settling.settled("bing", "pause", "keep", now=100.0)
    assert not settling.settled("bing", "scale", "keep", now=104.0)
    assert not settling.settled("bing", "scale", "keep", now=109.0)
    assert settling.settled("bing", "scale", "keep", now=110.0)


def test_no_judgement_under_the_minimum_spend_clears_a_settling_change() -> None:
    settling = Settling(6.0)
    settling.settled("bing", "pause", "keep", now=100.0)
    assert not settling.settled("bing", None, "keep", now=101.0)
    assert settling.waiting() == set()


async def test_the_stage_judges_a_settling_key_again_without_new_figures_and_announces_once() -> None:
    s = stage(settle=True)
    clock = s.clock
    s.absorb_batch(batch(("metrics.channel", 0, window(T0, 100.0, 10.0))))
    await s.judge()
    assert s.w.signals.sent == []
    clock.now += s.settling.settle_s  # type: ignore[attr-defined]
    await s.judge()  # no metric message in between: the settling key is judged all the same
    await s.judge()

    assert [(k, m["action"]) for k, m in s.w.signals.sent] == [(b"tiktok", "pause")]
    assert s.settling.settle_s == pytest.approx(2 * Settings().attribution_grace_ms / 1000 + 2.0)


async def test_the_stage_says_nothing_when_a_pause_is_withdrawn_within_the_settle_time() -> None:
    s = stage(settle=True)
    clock = s.clock
    s.absorb_batch(batch(("metrics.channel", 0, window(T0, 100.0, 300.0))))
    await s.judge()
    clock.now += s.settling.settle_s  # type: ignore[attr-defined]
    await s.judge()
    assert [m["action"] for _, m in s.w.signals.sent] == ["scale"]

    s.absorb_batch(batch(("metrics.channel", 1, window(T0 + W, 1000.0, 0.0))))  # new spend, its orders not yet in
    await s.judge()
    clock.now += 2.0  # type: ignore[attr-defined]
    s.absorb_batch(batch(("metrics.channel", 2, window(T0 + W, 1000.0, 3000.0))))  # its orders are attributed
    await s.judge()
    clock.now += s.settling.settle_s  # type: ignore[attr-defined]
    await s.judge()

    assert [m["action"] for _, m in s.w.signals.sent] == ["scale"]
    assert s.settling.waiting() == set()
