"""KPI definitions (CONTRACT.md sections 4 and 7): one function per ratio, null on a 0 denominator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import kpis
from streams.core.kpis import KPIS, ZERO, Figures, metrics_message

# Fractional credits: a third of a lead, two thirds of an order, and so on.
F = Figures(impressions=1200, clicks=30, leads=2.5, orders=4 / 3, new_customers=2 / 3, revenue=160.0, spend=48.0,
            gross_profit=64.0)

# kpi -> (its value on F by the contract's definition, the figure whose 0 makes it null)
DEFINITIONS = {
    "ctr": (30 / 1200, "impressions"),
    "cpc": (48.0 / 30, "clicks"),
    "cpm": (1000 * 48.0 / 1200, "impressions"),
    "cpl": (48.0 / 2.5, "leads"),
    "cpa": (48.0 / (4 / 3), "orders"),
    "cac": (48.0 / (2 / 3), "new_customers"),
    "conversion_rate": ((4 / 3) / 30, "clicks"),
    "aov": (160.0 / (4 / 3), "orders"),
    "roas": (160.0 / 48.0, "spend"),
    "roi": ((160.0 - 48.0) / 48.0, "spend"),
    "romi": ((64.0 - 48.0) / 48.0, "spend"),
}


def test_there_is_one_function_per_ratio_of_the_contract() -> None:
    assert set(KPIS) == set(DEFINITIONS)
    for name, function in KPIS.items():
        assert function is getattr(kpis, name)


@pytest.mark.parametrize("name", DEFINITIONS)
def test_each_kpi_follows_its_definition_with_fractional_credits(name: str) -> None:
    assert KPIS[name](F) == pytest.approx(DEFINITIONS[name][0])


@pytest.mark.parametrize("name", DEFINITIONS)
def test_each_kpi_is_none_when_its_denominator_is_0(name: str) -> None:
    denominator = DEFINITIONS[name][1]
    assert KPIS[name](F._replace(**{denominator: 0})) is None


@pytest.mark.parametrize("name", DEFINITIONS)
def test_each_kpi_of_nothing_at_all_is_none(name: str) -> None:
    assert KPIS[name](ZERO) is None


def test_a_zero_numerator_is_zero_not_none() -> None:
    spend_only = Figures(impressions=10, clicks=2, spend=5.0)
    assert kpis.ctr(spend_only._replace(clicks=0)) == 0.0
    assert kpis.roas(spend_only) == 0.0
    assert kpis.roi(spend_only) == -1.0
    assert kpis.romi(spend_only) == -1.0


def test_romi_uses_gross_profit_where_roi_uses_revenue() -> None:
    f = Figures(revenue=200.0, gross_profit=50.0, spend=100.0)
    assert kpis.roi(f) == pytest.approx(1.0)
    assert kpis.romi(f) == pytest.approx(-0.5)


def test_roi_is_roas_minus_one() -> None:
    assert kpis.roi(F) == pytest.approx(kpis.roas(F) - 1)


def test_ratio_scales_and_is_none_on_a_0_denominator() -> None:
    assert kpis.ratio(3, 4) == 0.75
    assert kpis.ratio(3, 4, 1000.0) == 750.0
    assert kpis.ratio(3, 0) is None
    assert kpis.ratio(0, 0.0) is None


def test_figures_add_up_field_by_field() -> None:
    doubled = F + F
    assert doubled == Figures(2400, 60, 5.0, 8 / 3, 4 / 3, 320.0, 96.0, 128.0)
    assert ZERO + F == F


def test_figures_do_not_add_to_other_tuples() -> None:
    with pytest.raises(TypeError):
        F + (1, 2, 3, 4, 5, 6, 7, 8)  # noqa: B018


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.builds(Figures, st.integers(0, 10**6), st.integers(0, 10**6), *[st.floats(0, 1e6)] * 6,
                                st.integers(0, 10**6), *[st.floats(0, 1e6)] * 2), min_size=1, max_size=6))
def test_figures_are_additive_so_partials_sum_in_any_order(parts: list[Figures]) -> None:
    forward, backward = ZERO, ZERO
    for part in parts:
        forward = forward + part
    for part in reversed(parts):
        backward = backward + part
    for a, b, field in zip(forward, backward, Figures._fields, strict=True):
        assert a == pytest.approx(b), field
        assert a == pytest.approx(sum(getattr(p, field) for p in parts)), field


def test_a_metrics_message_has_the_contract_fields_in_order() -> None:
    message = metrics_message("google_ads", None, 1763800000000, 60_000, False, F)
    assert list(message) == [
        "channel", "campaign", "window_start", "window_end", "final",
        "impressions", "clicks", "leads", "orders", "new_customers", "revenue", "spend", "gross_profit",
        "suspect_clicks", "ctr", "cpc", "cpm", "cpl", "cpa", "cac", "conversion_rate", "aov", "roas", "roi", "romi",
        "refunds", "refunded_revenue",
    ]


def test_a_metrics_message_window_ends_one_window_after_it_starts() -> None:
    message = metrics_message("email", "newsletter", 1763800000000, 60_000, True, F)
    assert (message["window_start"], message["window_end"], message["final"]) == (1763800000000, 1763800060000, True)
    assert (message["channel"], message["campaign"]) == ("email", "newsletter")


def test_a_metrics_message_carries_the_figures_and_every_kpi() -> None:
    message = metrics_message("google_ads", None, 0, 60_000, False, F)
    for field in Figures._fields:
        assert message[field] == pytest.approx(getattr(F, field))
    for name, (value, _) in DEFINITIONS.items():
        assert message[name] == pytest.approx(value)


def test_a_metrics_message_counts_impressions_and_clicks_as_integers() -> None:
    message = metrics_message("google_ads", None, 0, 60_000, False, F._replace(impressions=3.0, clicks=1.0))
    assert type(message["impressions"]) is int and type(message["clicks"]) is int


def test_a_metrics_message_of_an_empty_window_has_null_ratios() -> None:
    message = metrics_message("google_ads", None, 0, 60_000, False, ZERO)
    assert all(message[name] is None for name in KPIS)


def test_the_contract_metrics_example_is_consistent_with_the_definitions() -> None:
    example = Figures(1000, 42, 5.0, 2.0, 1.0, 240.0, 50.0)
    message = metrics_message("google_ads", None, 1763800000000, 60_000, False, example)
    expected = {"ctr": 0.042, "cpc": 1.19, "cpm": 50.0, "cpl": 10.0, "cpa": 25.0, "cac": 50.0,
                "conversion_rate": 0.0476, "aov": 120.0, "roas": 4.8, "roi": 3.8}
    for name, value in expected.items():
        assert message[name] == pytest.approx(value, abs=0.005), name
