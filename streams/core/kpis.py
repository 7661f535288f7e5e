"""Counts -> KPIs (CONTRACT.md sections 4 and 7). Pure: one function per ratio, None on a 0 denominator."""

from __future__ import annotations

from typing import NamedTuple


class Figures(NamedTuple):
    """Additive figures of one key in one window; sums of partials are figures too."""

    impressions: int = 0
    clicks: int = 0
    leads: float = 0.0
    orders: float = 0.0
    new_customers: float = 0.0
    revenue: float = 0.0
    spend: float = 0.0
    gross_profit: float = 0.0
    suspect_clicks: int = 0  # clicks beyond CLICK_FLOOD: not in `clicks`, no touchpoints
    refunds: float = 0.0  # credit x refunded share of the order (CONTRACT.md section 9); revenue is net of them
    refunded_revenue: float = 0.0

    def __add__(self, other: object) -> Figures:  # type: ignore[override]
        if not isinstance(other, Figures):
            return NotImplemented
        return Figures(*(a + b for a, b in zip(self, other, strict=True)))


ZERO = Figures()


def ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return None if denominator == 0 else scale * numerator / denominator


def ctr(f: Figures) -> float | None:
    return ratio(f.clicks, f.impressions)


def cpc(f: Figures) -> float | None:
    return ratio(f.spend, f.clicks)


def cpm(f: Figures) -> float | None:
    return ratio(f.spend, f.impressions, 1000.0)


def cpl(f: Figures) -> float | None:
    return ratio(f.spend, f.leads)


def cpa(f: Figures) -> float | None:
    return ratio(f.spend, f.orders)


def cac(f: Figures) -> float | None:
    return ratio(f.spend, f.new_customers)


def conversion_rate(f: Figures) -> float | None:
    return ratio(f.orders, f.clicks)


def aov(f: Figures) -> float | None:
    return ratio(f.revenue, f.orders)


def roas(f: Figures) -> float | None:
    return ratio(f.revenue, f.spend)


def roi(f: Figures) -> float | None:
    return ratio(f.revenue - f.spend, f.spend)


def romi(f: Figures) -> float | None:
    return ratio(f.gross_profit - f.spend, f.spend)


KPIS = {
    "ctr": ctr,
    "cpc": cpc,
    "cpm": cpm,
    "cpl": cpl,
    "cpa": cpa,
    "cac": cac,
    "conversion_rate": conversion_rate,
    "aov": aov,
    "roas": roas,
    "roi": roi,
    "romi": romi,
}


def metrics_message(
    channel: str, campaign: str | None, window_start: int, window_ms: int, final: bool, f: Figures
) -> dict[str, object]:
    """The `metrics.channel` / `metrics.campaign` message of one key and window."""
    return {
        "channel": channel,
        "campaign": campaign,
        "window_start": window_start,
        "window_end": window_start + window_ms,
        "final": final,
        "impressions": int(f.impressions),
        "clicks": int(f.clicks),
        "leads": f.leads,
        "orders": f.orders,
        "new_customers": f.new_customers,
        "revenue": f.revenue,
        "spend": f.spend,
        "gross_profit": f.gross_profit,
        "suspect_clicks": int(f.suspect_clicks),
        **{name: kpi(f) for name, kpi in KPIS.items()},
        "refunds": f.refunds,
        "refunded_revenue": f.refunded_revenue,
    }
