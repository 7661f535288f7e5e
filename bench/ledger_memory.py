"""Bytes per order remembered in the order ledger (CONTRACT.md section 9), in the in-memory table.

Each attributed order is kept for REFUND_WINDOW (90 days) as one packed row (`streams/core/refunds.py`).
This builds rows the way the journeys stage does (a journey of 1-4 touchpoints, every model's credits, a
promo code on some, commissions), keeps N of them in a dict as the memory store does, and reports the bytes
per order two ways: `tracemalloc` (what the process allocated for the dict, its keys and rows) and
`ledger_bytes` (the row's own objects). Channel, campaign and affiliate names are interned, as in the stage.

    .venv/bin/python bench/ledger_memory.py [N]
"""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
from typing import Any

from streams.config import MODELS
from streams.core.attribution import Affiliate, Lookback, Touchpoint, commissions, credits, journey_for
from streams.core.refunds import LedgerOrder, ledger_bytes, remember_order

DAY = 86_400_000
TS = 1_763_800_000_000
CHANNELS = [("google_ads", "brand"), ("google_ads", "generic"), ("facebook", "prospecting"),
            ("facebook", "retarget"), ("email", "(none)"), ("tiktok", "ugc"), ("affiliate", "partners")]
ANNA = Affiliate("anna", "influencer", ("ANNA10",), 0.1, 2.0)
BOB = Affiliate("bob", "affiliate", (), 0.05, 1.5)


def order_row(rng: random.Random, n: int, touches: int) -> tuple[str, list[Any]]:
    ts = TS + n * 1000
    path = []
    for k in range(touches):
        channel, campaign = rng.choice(CHANNELS)
        path.append(Touchpoint(ts - (touches - k) * 3_600_000, rng.choice("ci"), channel, campaign,
                               "bob" if channel == "affiliate" else None, f"t{n}-{k}"))
    promo = ANNA if rng.random() < 0.1 else None
    journey = journey_for(path, ts, Lookback(30 * DAY, DAY), promo, f"o{n}")
    revenue = round(rng.uniform(5, 300), 2)

    def as_json(cs: Any) -> list[dict[str, Any]]:
        return [{"channel": c.channel, "campaign": c.campaign, "affiliate_id": c.affiliate_id, "weight": c.weight,
                 "revenue": c.weight * revenue} for c in cs]

    models = {m: as_json(credits(m, journey, ts, 7 * DAY)) for m in MODELS}
    models["markov"] = models["linear"]
    message = {"conversion_id": f"evt-{n:012d}-order", "ts": ts, "revenue": revenue, "margin": 0.4,
               "customer_id": f"customer-{n:010d}" if rng.random() < 0.7 else None, "models": models,
               "commissions": [{"affiliate_id": a, "role": r, "amount": x}
                               for a, r, x in commissions(journey, revenue, {"anna": ANNA, "bob": BOB})]}
    row, _ = remember_order(None, LedgerOrder.from_attribution(message))
    return f"order-{n:012d}", row


def measure(n: int, touches: int) -> tuple[float, float]:
    rng = random.Random(touches)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table: dict[str, list[Any]] = {}
    for i in range(n):
        key, row = order_row(rng, i, touches)
        table[key] = row
    gc.collect()
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    own = sum(ledger_bytes(key, row) for key, row in table.items()) / n
    return allocated / n, own


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(f"order ledger, {n:,} orders per row of the table (Python {sys.version.split()[0]})")
    header = ("touchpoints", "tracemalloc B/order", "ledger_bytes B/order", "90 days at 10 orders/s")
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, (11, 19, 20, 22), strict=True)))
    print(f"{'-' * 11}-+-{'-' * 19}-+-{'-' * 20}-+-{'-' * 22}")
    for touches in (0, 1, 2, 4):
        allocated, own = measure(n, touches)
        ninety_days = allocated * 10 * 90 * 86_400 / 2**30
        print(f"{touches:>11} | {allocated:>19,.0f} | {own:>20,.0f} | {ninety_days:>19,.1f} GiB")


if __name__ == "__main__":
    main()
