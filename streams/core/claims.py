"""Claims on customers and order ids, judged in event time (CONTRACT.md: new customers, order dedup).

A claim row is `[holder event_id, expires_at_ms]`. The first event to claim a key holds it; the same
event claiming again (a replay after a crash) still holds it, so a replay gives the same answer.
A hold ends at `expires_at_ms` of event time: an event whose `ts` is at or after it takes the key.

- Customers (`refresh=True`): the first order's event holds the customer for `CUSTOMER_RETENTION`
  after the customer's latest order, so every order pushes the end out.
- Order ids (`refresh=False`): the first event with an order_id holds it for `DEDUP_WINDOW` after its
  own `ts`; a repeat does not extend it.
"""

from __future__ import annotations

from typing import Any

CUSTOMER_KEY_PREFIX = "c|"
ORDER_KEY_PREFIX = "o|"


def claim(row: Any, event_id: str, ts: int, ttl_ms: int, refresh: bool) -> tuple[bool, list[Any]]:
    """Whether `event_id` (at event time `ts`) holds the key, and the key's row after the claim."""
    if row is None or ts >= row[1]:
        return True, [event_id, ts + ttl_ms]
    held = row[0] == event_id
    if refresh:
        return held, [row[0], max(row[1], ts + ttl_ms)]
    return held, row


def expired(row: Any, before_ms: int) -> bool:
    """A row whose hold ended before `before_ms`: no event still accepted can be judged by it."""
    return row[1] < before_ms
