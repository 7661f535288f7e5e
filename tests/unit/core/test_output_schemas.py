"""The section 7 outputs validate against their schemas in schemas/ (the single source of truth)."""

from __future__ import annotations

import fastjsonschema
import pytest

from streams.core.events import load_schema
from streams.core.ltv import ltv_message
from streams.core.signals import KeyState, Thresholds, judge

THRESHOLDS = Thresholds(window_ms=3_600_000, min_spend=50.0, romi_floor=0.0, romi_scale=1.0)


def validator(name: str):
    return fastjsonschema.compile(load_schema(name))


def metrics(spend: float, revenue: float, gross_profit: float, start: int = 0) -> dict:
    return {"window_start": start, "window_end": start + 60_000, "spend": spend, "revenue": revenue,
            "gross_profit": gross_profit}


@pytest.mark.parametrize("figures, spend", [([41.5, 63.0, 21.5, 5210.0, 2084.0], 1900.0), ([0.0] * 5, 0.0)])
def test_ltv_messages_follow_the_ltv_schema(figures: list[float], spend: float) -> None:
    validator("ltv")(ltv_message("google_ads", figures, spend))


@pytest.mark.parametrize("campaign", [None, "ugc"])
@pytest.mark.parametrize("revenue, action", [(10.0, "pause"), (600.0, "keep"), (900.0, "scale")])
def test_signal_messages_follow_the_signal_schema(campaign: str | None, revenue: float, action: str) -> None:
    state = KeyState("tiktok", campaign).absorb(metrics(400.0, revenue, revenue), THRESHOLDS.window_ms)
    verdict = judge(state, THRESHOLDS)
    assert verdict.message is not None and verdict.message["action"] == action
    validator("signal")(verdict.message)


def test_the_signal_schema_rejects_an_unknown_action() -> None:
    state = KeyState("tiktok", None).absorb(metrics(400.0, 10.0, 10.0), THRESHOLDS.window_ms)
    message = {**judge(state, THRESHOLDS).message, "action": "stop"}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator("signal")(message)
