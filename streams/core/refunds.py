"""The order ledger and the rules of refunds (CONTRACT.md section 9). Pure: no Kafka, no clock.

Each attributed order is remembered, keyed by its `order_id`, for REFUND_WINDOW after its `ts`, as
one compact list (the value of one table key):

    [ts, order, refunded, ids, pending]

- `ts`: the order's (None while only refunds of it are known), for the sweep without decoding `order`;
- `order`: `LedgerOrder.to_row()` as one JSON text (one string object, not a tree of them; it is read
  only when a refund of the order is judged), None while only refunds are known:
  `[event_id, ts, revenue, margin, customer_id, [channel, campaign, affiliate_id, ...],
    weights (float64, one per credited touch and model, model-major, models in LEDGER_MODELS order, base64),
    [affiliate_id, role, amount, ...]]`;
- `refunded`: the revenue refunded so far;
- `ids`: ID_HASH_CHARS of hash per refund `event_id` judged, taken or rejected (a repeat is a duplicate);
- `pending`: `[[seq, refund_row, dlq], ...]`, refunds waiting to be judged (`dlq`: where the input was,
  for the dead-letter message).

A refund is judged (`judge`) once the orders have been read and attributed past its `ts`; a taken
refund is spread over the order's credits (`refund_effects`), under every model, in the window of the
refund's own `ts`.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from streams.config import METRIC_MODELS
from streams.core.events import Refund
from streams.core.ltv import deep_size, id_hash

LEDGER_MODELS = METRIC_MODELS  # the five rules of position, then markov
UNKNOWN_ORDER = "unknown order_id"
EXCEEDS_ORDER = "refund exceeds order"
EPSILON = 1e-9  # money left below this (times the revenue) is nothing: float dust of partial refunds
ORDER_TS, ORDER, REFUNDED, IDS, PENDING = range(5)
DICT_SLOT_BYTES = 40  # a key's share of a dict's hash table (entries ~24 B at 2/3 load, plus the index)

Touch = tuple[str, str, str | None]  # channel, campaign, affiliate_id


class LedgerOrder(NamedTuple):
    """What a refund needs of an attributed order."""

    event_id: str
    ts: int
    revenue: float
    margin: float
    customer_id: str | None
    touches: tuple[Touch, ...]  # every credited (channel, campaign, affiliate_id), under any model
    weights: tuple[tuple[float, ...], ...]  # per model of LEDGER_MODELS: the weight of each touch
    commissions: tuple[tuple[str, str, float], ...]  # (affiliate_id, role, amount) owed on the order

    def to_row(self) -> list[Any]:
        weights = array("d", [weight for weights in self.weights for weight in weights])
        return [self.event_id, self.ts, self.revenue, self.margin, self.customer_id,
                [item for touch in self.touches for item in touch],
                base64.b64encode(weights.tobytes()).decode("ascii"),  # one string, not a float object each
                [item for commission in self.commissions for item in commission]]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> LedgerOrder:
        flat, n = row[5], len(row[5]) // 3
        touches = tuple((flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3))
        packed = array("d", base64.b64decode(row[6]))
        weights = tuple(tuple(packed[m * n:(m + 1) * n]) for m in range(len(LEDGER_MODELS)))
        owed = row[7]
        commissions = tuple((owed[i], owed[i + 1], owed[i + 2]) for i in range(0, len(owed), 3))
        return cls(row[0], row[1], row[2], row[3], row[4], touches, weights, commissions)

    @classmethod
    def from_attribution(cls, message: dict[str, Any]) -> LedgerOrder:
        """The ledger's form of an order's `attributions` message (credits of every model, commissions)."""
        models = message["models"]
        touches: dict[Touch, int] = {}
        for model in LEDGER_MODELS:
            for credit in models[model]:
                touches.setdefault((credit["channel"], credit["campaign"], credit["affiliate_id"]), len(touches))
        weights = []
        for model in LEDGER_MODELS:
            row = [0.0] * len(touches)
            for credit in models[model]:
                row[touches[credit["channel"], credit["campaign"], credit["affiliate_id"]]] += credit["weight"]
            weights.append(tuple(row))
        owed = tuple((c["affiliate_id"], c["role"], float(c["amount"])) for c in message["commissions"])
        return cls(message["conversion_id"], message["ts"], float(message["revenue"]), float(message["margin"]),
                   message.get("customer_id"), tuple(touches), tuple(weights), owed)

    def credits(self, model: str) -> list[tuple[str, str, str | None, float]]:
        """(channel, campaign, affiliate_id, weight) of the order's credit under `model`."""
        weights = self.weights[LEDGER_MODELS.index(model)]
        return [(*touch, weight) for touch, weight in zip(self.touches, weights, strict=True) if weight]


def empty_row() -> list[Any]:
    return [None, None, 0.0, "", []]


def order_of(row: list[Any]) -> LedgerOrder | None:
    return None if row[ORDER] is None else LedgerOrder.from_row(orjson.loads(row[ORDER]))


def remember_order(row: list[Any] | None, order: LedgerOrder) -> tuple[list[Any], bool]:
    """The ledger row with the order in it; False when it held it already (an order sent twice)."""
    row = row or empty_row()
    if row[ORDER] is not None:
        return row, False
    row[ORDER_TS], row[ORDER] = order.ts, orjson.dumps(order.to_row()).decode()
    return row, True


def without_customer(row: list[Any] | None) -> list[Any] | None:
    """The ledger row with its order's customer_id removed (erasure, CONTRACT.md section 10); None when it names
    none. A refund of the order still works; it no longer lowers a customer's lifetime value."""
    order = None if not row else order_of(row)
    if order is None or order.customer_id is None:
        return None
    erased = list(row)  # type: ignore[arg-type]
    erased[ORDER] = orjson.dumps(order._replace(customer_id=None).to_row()).decode()
    return erased


def has_refund(row: list[Any] | None, event_id: str) -> bool:
    """The refund was taken, or is waiting: a repeat of it is a duplicate."""
    if not row:
        return False
    hashed = id_hash(event_id)
    ids, n = row[IDS], len(hashed)
    return any(ids[i:i + n] == hashed for i in range(0, len(ids), n)) or any(
        pending[1][1] == event_id for pending in row[PENDING])


def add_pending(row: list[Any] | None, seq: int, refund: Refund, dlq: list[Any]) -> list[Any]:
    row = row or empty_row()
    row[PENDING].append([seq, list(refund), dlq])
    return row


class Taken(NamedTuple):
    amount: float  # refunded now
    share: float  # of the order's revenue
    full: bool  # nothing is left of the order after it


def judge(row: list[Any] | None, refund: Refund, refund_window_ms: int) -> Taken | str:
    """A refund against what the ledger knows of its order: what it takes, or why it is rejected."""
    order = None if not row else order_of(row)
    if order is None:
        return UNKNOWN_ORDER
    order_ts, revenue = order.ts, order.revenue
    if refund.ts > order_ts + refund_window_ms:
        return UNKNOWN_ORDER  # forgotten by now: the ledger keeps an order REFUND_WINDOW after its ts
    left = revenue - row[REFUNDED]
    amount = left if refund.amount is None else refund.amount
    tolerance = EPSILON * max(1.0, revenue)
    if amount > left + tolerance or left <= tolerance and refund.amount is None and row[REFUNDED] > 0:
        return EXCEEDS_ORDER  # beyond what is left (a second cancellation of a refunded order included)
    amount = min(amount, left)
    share = amount / revenue if revenue else 1.0
    return Taken(amount, share, left - amount <= tolerance)


def take(row: list[Any], seq: int, refund: Refund, taken: Taken | None) -> list[Any]:
    """The row once the pending refund `seq` is judged (`taken` None: rejected, the order keeps its money).
    Its id is remembered either way: a repeat of it is a duplicate, not a second dead letter."""
    row[PENDING] = [pending for pending in row[PENDING] if pending[0] != seq]
    row[IDS] += id_hash(refund.event_id)
    if taken is not None:
        row[REFUNDED] += taken.amount
    return row


def is_expired(row: list[Any], stream_time: int, refund_window_ms: int) -> bool:
    """Nothing waits and the order (if any) is past REFUND_WINDOW: the row can go."""
    if row[PENDING]:
        return False
    return row[ORDER_TS] is None or row[ORDER_TS] + refund_window_ms < stream_time


class Effects(NamedTuple):
    """What a taken refund changes, for the stage to apply."""

    # (channel, campaign, refunds, refunded_revenue, gross_profit) per credit under the metric model
    figures: list[tuple[str, str, float, float, float]]
    commissions: list[tuple[str, str, float]]  # (affiliate_id, role, amount reversed: negative)
    message: dict[str, Any]  # the `attributions` message, keyed by the refund's event_id
    gross_profit: float  # refunded amount x the order's margin (lifetime value)


def refund_effects(order: LedgerOrder, refund: Refund, taken: Taken, model: str, currency: str) -> Effects:
    amount = taken.amount
    figures = [(channel, campaign, weight * taken.share, weight * amount, weight * amount * order.margin)
               for channel, campaign, _, weight in order.credits(model)]
    reversed_ = []
    for affiliate_id, role, owed in order.commissions:
        # The converter: commission_rate x refunded amount; an assist fee comes back only with the whole order.
        back = owed * taken.share if role == "converter" else owed if taken.full else 0.0
        if back:
            reversed_.append((affiliate_id, role, -back))

    def credit_json(credits: list[tuple[str, str, str | None, float]]) -> list[dict[str, Any]]:
        return [{"channel": c, "campaign": cmp, "affiliate_id": a, "weight": w, "revenue": -w * amount}
                for c, cmp, a, w in credits]

    message = {
        "conversion_id": order.event_id,
        "type": "refund",
        "order_id": refund.order_id,
        "ts": refund.ts,
        "revenue": -amount,
        "currency": currency,
        "model": model,
        "credits": credit_json(order.credits(model)),
        "commissions": [{"affiliate_id": a, "role": role, "amount": back} for a, role, back in reversed_],
        "models": {m: credit_json(order.credits(m)) for m in LEDGER_MODELS},
        "full": taken.full,
    }
    return Effects(figures, reversed_, message, amount * order.margin)


def ledger_bytes(key: str, row: list[Any]) -> int:
    """The memory one remembered order takes in the in-memory table: its key, its row and the slot of the
    table's dict."""
    return deep_size(key) + deep_size(row) + DICT_SLOT_BYTES
