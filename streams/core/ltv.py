"""Lifetime value by acquisition channel (CONTRACT.md section 7). Pure: no Kafka, no clock.

A customer (`customer_id`) is acquired by the credits of their FIRST order by event time,
ordered by `(ts, event_id)`: its channels and weights under ATTRIBUTION_MODEL. Every order
of the customer, the first one included, adds its revenue and gross profit x those weights
to the acquiring channels, whatever touchpoints the order itself had.

One customer's state is one compact list (`Customer.to_row`), the value of one table key:

    [first_ts, first_event_id, [channel, weight, ...], orders, revenue, gross_profit, last_ts, ids(, past)]

`ids` holds a 12-hex-char hash of every absorbed order's event_id, so an order read again
after a restart (or sent twice upstream) changes nothing. The customer's contribution to the
per-channel figures is a function of that row alone (`contribution`), so the per-partition
sums are always "the retired sums + the contributions of the remembered customers" and can
be rebuilt from the table after a restart.

Orders arrive out of order. When an order with an earlier `(ts, event_id)` than the
remembered first one arrives, it becomes the first order and the customer is RE-ACQUIRED:
all of the customer's contributions move from the old acquisition weights to the new ones
(`absorb` returns that move as a delta). The figures are therefore the same whatever order
the orders arrive in, and the same after a replay.

Retention: a customer is remembered for CUSTOMER_RETENTION after their last order, in event
time. An order later than that starts a new life: the old life's contribution stays counted
(kept in `past` until the sweep retires the row) and the customer is acquired again. The sweep
forgets a customer once the newest order time of its partition has passed their last order
by the retention. An order that would only belong to a forgotten life (more than the retention
before the remembered first order, or older than what the partition has already retired)
counts in no lifetime figure, as an event after ALLOWED_LATENESS counts in no window.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from streams.core.kpis import ratio

FIGURES = ("customers", "orders", "repeat_orders", "revenue", "gross_profit")
CUSTOMERS, ORDERS, REPEAT_ORDERS, REVENUE, GROSS_PROFIT = range(len(FIGURES))
ID_HASH_CHARS = 12  # 48 bits of blake2b per order id: collisions within one customer are ~n^2/2^49
ROUND_DIGITS = 9  # published figures are rounded: moving a customer between channels leaves float dust

Sums = dict[str, list[float]]  # channel -> figures, in the order of FIGURES
Outcome = Literal["new", "repeat", "reacquired", "duplicate", "late"]


class CustomerOrder(NamedTuple):
    """One order of a customer as the journeys stage hands it over (`attribution-customer-orders`)."""

    event_id: str
    ts: int
    revenue: float
    gross_profit: float
    credits: tuple[tuple[str, float], ...]  # its channels and weights, merged per channel

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CustomerOrder:
        return cls(
            str(record["event_id"]),
            int(record["ts"]),
            float(record["revenue"]),
            float(record["gross_profit"]),
            acquisition_weights(record["credits"]),
        )


def acquisition_weights(credits: Iterable[Sequence[Any]]) -> tuple[tuple[str, float], ...]:
    """`[[channel, weight], ...]` (one per channel/campaign/affiliate) -> weights per channel, in first-seen order."""
    merged: dict[str, float] = {}
    for channel, weight in credits:
        merged[channel] = merged.get(channel, 0.0) + float(weight)
    return tuple((sys.intern(channel), weight) for channel, weight in merged.items() if weight)


def id_hash(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode(), digest_size=ID_HASH_CHARS // 2).hexdigest()


class Customer(NamedTuple):
    first_ts: int
    first_id: str
    acquisition: tuple[tuple[str, float], ...]
    orders: int
    revenue: float
    gross_profit: float
    last_ts: int
    ids: str  # ID_HASH_CHARS per absorbed order
    past: Sums | None = None  # contributions of earlier lives, until the sweep retires the row

    def to_row(self) -> list[Any]:
        acquisition = [item for pair in self.acquisition for item in pair]
        row = [self.first_ts, self.first_id, acquisition, self.orders, self.revenue, self.gross_profit,
               self.last_ts, self.ids]
        if self.past:
            row.append(self.past)
        return row

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Customer:
        flat = row[2]
        acquisition = tuple((sys.intern(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2))
        past = row[8] if len(row) > 8 else None
        return cls(row[0], row[1], acquisition, row[3], row[4], row[5], row[6], row[7], past)

    def has(self, hashed: str) -> bool:
        ids, n = self.ids, ID_HASH_CHARS
        return any(ids[i:i + n] == hashed for i in range(0, len(ids), n))

    def is_expired(self, watermark: int, retention_ms: int) -> bool:
        """Forgotten: the newest order time seen has passed the last order by the retention."""
        return self.last_ts + retention_ms < watermark


class Absorbed(NamedTuple):
    outcome: Outcome
    customer: Customer | None  # the new state (None: unchanged)
    delta: Sums  # what to add to the per-channel sums


def absorb(customer: Customer | None, order: CustomerOrder, retention_ms: int, retired_before: int = 0) -> Absorbed:
    """Take one order into the customer's state.

    `retired_before` is the partition's retirement watermark: customers whose last order + retention
    is before it were already moved into the retired sums (a row left behind by a crash is ignored).
    """
    if customer is not None and customer.is_expired(retired_before, retention_ms):
        customer = None
    hashed = id_hash(order.event_id)
    if customer is not None and customer.has(hashed):
        return Absorbed("duplicate", None, {})
    if customer is None:
        if order.ts + retention_ms < retired_before:
            return Absorbed("late", None, {})
        new = _first_life(order, hashed, None)
        return Absorbed("new", new, contribution(new))
    if order.ts > customer.last_ts + retention_ms:  # a new life: the old one stays counted in `past`
        new = _first_life(order, hashed, add_sums({}, contribution(customer)))
        return Absorbed("new", new, live_contribution(new))
    if order.ts + retention_ms < customer.first_ts:  # belongs to a life before the remembered one
        return Absorbed("late", None, {})
    earlier = (order.ts, order.event_id) < (customer.first_ts, customer.first_id)
    new = customer._replace(
        orders=customer.orders + 1,
        revenue=customer.revenue + order.revenue,
        gross_profit=customer.gross_profit + order.gross_profit,
        last_ts=max(customer.last_ts, order.ts),
        ids=customer.ids + hashed,
    )
    if earlier:
        new = new._replace(first_ts=order.ts, first_id=order.event_id, acquisition=order.credits)
    if new.acquisition != customer.acquisition:
        delta = add_sums(live_contribution(new), live_contribution(customer), -1.0)
        return Absorbed("reacquired", new, delta)
    delta = {
        channel: [0.0, weight, weight, weight * order.revenue, weight * order.gross_profit]
        for channel, weight in new.acquisition
    }
    return Absorbed("repeat", new, delta)


def absorb_refund(customer: Customer | None, refund_id: str, revenue: float, gross_profit: float) -> Absorbed:
    """A refund of one of the customer's orders (CONTRACT.md section 9): lifetime revenue and gross profit
    drop on the acquiring channels; `customers` and `orders` stay. Remembered by the hash of the refund's
    event_id like an order, so a refund read again changes nothing. A customer no longer remembered: late."""
    if customer is None:
        return Absorbed("late", None, {})
    hashed = id_hash(refund_id)
    if customer.has(hashed):
        return Absorbed("duplicate", None, {})
    new = customer._replace(revenue=customer.revenue - revenue, gross_profit=customer.gross_profit - gross_profit,
                            ids=customer.ids + hashed)
    delta = {channel: [0.0, 0.0, 0.0, -weight * revenue, -weight * gross_profit]
             for channel, weight in customer.acquisition}
    return Absorbed("repeat", new, delta)


def _first_life(order: CustomerOrder, hashed: str, past: Sums | None) -> Customer:
    return Customer(order.ts, order.event_id, order.credits, 1, order.revenue, order.gross_profit, order.ts, hashed,
                    past or None)


def live_contribution(customer: Customer) -> Sums:
    """The remembered life's figures per acquiring channel: weight x (1, orders, orders - 1, revenue, gross profit)."""
    n = customer.orders
    return {
        channel: [weight, weight * n, weight * (n - 1), weight * customer.revenue, weight * customer.gross_profit]
        for channel, weight in customer.acquisition
    }


def contribution(customer: Customer) -> Sums:
    """Everything the customer's row adds to the per-channel sums: the remembered life and earlier ones."""
    sums = live_contribution(customer)
    return add_sums(sums, customer.past) if customer.past else sums


def row_contribution(row: Sequence[Any]) -> Sums:
    """`contribution` straight from a stored row (for scans over every customer: no objects built)."""
    acquisition, n, revenue, gross_profit = row[2], row[3], row[4], row[5]
    sums = {
        acquisition[i]: [w, w * n, w * (n - 1), w * revenue, w * gross_profit]
        for i in range(0, len(acquisition), 2) for w in (acquisition[i + 1],)
    }
    return add_sums(sums, row[8]) if len(row) > 8 and row[8] else sums


def add_sums(into: Sums, other: Mapping[str, Sequence[float]], sign: float = 1.0) -> Sums:
    for channel, figures in other.items():
        total = into.get(channel)
        if total is None:
            total = into[channel] = [0.0] * len(FIGURES)
        for i, value in enumerate(figures):
            total[i] += sign * value
    return into


# --- the channel stage: cumulative spend from the metric windows -----------------------------------------


class Spend(NamedTuple):
    """Cumulative spend of one channel from `metrics.channel`: the latest spend per window (a later
    message for a window replaces the earlier), windows older than `keep_ms` before the newest one
    folded into one number. A message for a window already folded changes nothing; a non-final one
    for a window that old (a stale re-send) is ignored."""

    windows: dict[str, float]  # str(window_start) -> latest spend
    folded: float = 0.0
    newest: int = 0

    def to_row(self) -> list[Any]:
        return [self.windows, self.folded, self.newest]

    @classmethod
    def from_row(cls, row: Sequence[Any] | None) -> Spend:
        return cls(dict(row[0]), row[1], row[2]) if row else cls({})

    @property
    def total(self) -> float:
        return self.folded + sum(self.windows.values())

    def absorb(self, window_start: int, spend: float, final: bool, keep_ms: int) -> Spend:
        newest = max(self.newest, window_start)
        windows, folded = self.windows, self.folded
        key = str(window_start)
        if key in windows:
            windows[key] = spend
        elif window_start >= newest - keep_ms:
            if spend:
                windows[key] = spend
        elif final:  # an unseen window older than the horizon: only its final counts, once
            folded += spend
        # else: a non-final message for a window that old is a stale re-send
        horizon = newest - keep_ms
        for old in [k for k in windows if int(k) < horizon]:
            folded += windows.pop(old)
        return Spend(windows, folded, newest)


def spend_horizon_ms(window_ms: int, allowed_lateness_ms: int) -> int:
    """How long a window's latest spend is kept apart before it is folded: twice the time a window
    stays open, so a final re-sent after a metrics-stage restart still replaces instead of adding."""
    return 2 * (window_ms + allowed_lateness_ms)


# --- the message -----------------------------------------------------------------------------------------


def clean(value: float) -> float:
    return round(value, ROUND_DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


def clv(revenue: float, customers: float) -> float | None:
    return ratio(revenue, customers)


def cac(spend: float, customers: float) -> float | None:
    return ratio(spend, customers)


def ltv_cac(clv_value: float | None, cac_value: float | None) -> float | None:
    if clv_value is None or cac_value is None:
        return None
    return ratio(clv_value, cac_value)


def ltv_message(channel: str, figures: Sequence[float], spend: float) -> dict[str, Any]:
    """The `metrics.ltv` message of one channel (cumulative figures)."""
    customers, orders, repeat_orders, revenue, gross_profit = (clean(v) for v in figures)
    spend = clean(spend)
    clv_value, cac_value = clv(revenue, customers), cac(spend, customers)
    return {
        "channel": channel,
        "customers": customers,
        "orders": orders,
        "repeat_orders": repeat_orders,
        "revenue": revenue,
        "gross_profit": gross_profit,
        "spend": spend,
        "clv": clv_value,
        "cac": cac_value,
        "ltv_cac": ltv_cac(clv_value, cac_value),
    }


# --- memory ------------------------------------------------------------------------------------------------


def deep_size(obj: Any, shared: frozenset[int] = frozenset(), seen: set[int] | None = None) -> int:
    """Bytes of the Python objects reachable from `obj` (containers and their items), each object once,
    leaving out the objects in `shared` (interned channel names, shared by every customer)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or id(obj) in shared:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, shared, seen) + deep_size(v, shared, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(item, shared, seen) for item in obj)
    return size


def customer_bytes(key: str, row: Sequence[Any]) -> int:
    """Memory of one remembered customer in the in-memory table: its key, its row, and the slot of
    the table's dict (about 3 words per entry at a load of 2/3)."""
    channels = frozenset(id(sys.intern(c)) for c in row[2][::2])
    return deep_size(key) + deep_size(row, channels) + 3 * 8 * 3 // 2
