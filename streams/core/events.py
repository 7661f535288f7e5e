"""Raw input bytes -> normalised events or rejections (pure: no I/O beyond reading schemas once).

The JSON Schemas in `schemas/` are the single source of truth for what a valid input is;
this module compiles them once with fastjsonschema and adds the two rules a schema cannot
say: a currency must be convertible (FX_RATES), and `ts` becomes epoch milliseconds.

Normalised events are NamedTuples whose first field is a one-letter kind, so they travel
between stages as plain JSON arrays (`list(event)`) and come back with `from_row`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import fastjsonschema
import orjson

from streams.config import Settings
from streams.core.fast_events import decode_valid, struct_for

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
NONE_CAMPAIGN = "(none)"
# The tracking_id (and order_id) of an event sent with "consent": false: no identifier of the visitor goes further
# than the intake, and the event joins no journey (CONTRACT.md section 10). Never a valid id: they are not empty.
ANONYMOUS = ""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# input topic -> event type its events must have
TOPIC_TYPES = {"impressions": "impression", "clicks": "click", "leads": "lead", "orders": "order", "spend": "spend",
               "refunds": "refund"}
INPUT_TOPICS = tuple(TOPIC_TYPES)


class Touch(NamedTuple):
    """An impression (kind "i") or a click (kind "c"); `cost` is in the reporting currency."""

    kind: str
    event_id: str
    ts: int
    tracking_id: str
    channel: str
    campaign: str
    affiliate_id: str | None
    cost: float


class Lead(NamedTuple):
    kind: str  # "l"
    event_id: str
    ts: int
    tracking_id: str
    customer_id: str | None


class Order(NamedTuple):
    """An order; `revenue` is in the reporting currency; `margin` None means DEFAULT_MARGIN."""

    kind: str  # "o"
    event_id: str
    ts: int
    tracking_id: str
    order_id: str
    revenue: float
    margin: float | None
    promo_code: str | None
    customer_id: str | None


class Spend(NamedTuple):
    kind: str  # "s"
    event_id: str
    ts: int
    channel: str
    campaign: str
    amount: float


class Refund(NamedTuple):
    """A refund of an order (CONTRACT.md section 9); `amount` in the reporting currency, None: the whole order."""

    kind: str  # "r"
    event_id: str
    ts: int
    order_id: str
    amount: float | None


Event = Touch | Lead | Order | Spend | Refund
Conversion = Lead | Order
_ROW_TYPES: dict[str, type] = {"i": Touch, "c": Touch, "l": Lead, "o": Order, "s": Spend, "r": Refund}
_ROW_SHAPES = {kind: (event_type, len(event_type._fields)) for kind, event_type in _ROW_TYPES.items()}
# A named tuple built from a plain tuple in C: calling the class binds each field in Python, twice the cost.
_new_event = tuple.__new__


class Rejection(NamedTuple):
    """Why one input (or one element of an input array, at `index`) was not processed."""

    error: str
    index: int | None


def from_row(row: list[Any]) -> Event:
    """A normalised event from its JSON array form (`list(event)`)."""
    event_type, size = _ROW_SHAPES[row[0]]
    if len(row) != size:
        raise ValueError(f"an event row of kind {row[0]!r} has {size} fields, not {len(row)}")
    return _new_event(event_type, row)


@cache
def load_schema(kind: str) -> dict[str, Any]:
    return orjson.loads((SCHEMA_DIR / f"{kind}.json").read_bytes())


@cache
def _validator(kind: str):
    return fastjsonschema.compile(load_schema(kind))


@cache
def _struct(kind: str) -> Any:
    return struct_for(kind, load_schema(kind))


def decode(raw: bytes | None) -> list[tuple[int | None, Any]] | Rejection:
    """Bytes -> the event objects they hold, with each one's index in a batch (None: a single object)."""
    if raw is None:
        return Rejection("empty message (no value)", None)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"not valid UTF-8 JSON: {exc}", None)
    if isinstance(value, dict):
        return [(None, value)]
    if isinstance(value, list) and value:
        return list(enumerate(value))
    if isinstance(value, list):
        return Rejection("empty array: expected event objects", None)
    found = f"{type(value).__name__} {short_repr(value)}"
    return Rejection(f"expected a JSON object or an array of objects, got {found}", None)


def validate(obj: Any, topic: str, settings: Settings) -> Event | str:
    """One decoded JSON value from `topic` -> a normalised event, or the reason it is rejected."""
    kind = TOPIC_TYPES.get(topic)
    if kind is None:
        return f"unknown input topic {topic!r}"
    if not isinstance(obj, dict):
        return f"expected an event object, got {type(obj).__name__} {short_repr(obj)}"
    if obj.get("type") != kind and isinstance(obj.get("type"), str):
        return f"type must be {kind!r} on topic {topic}, got {obj['type']!r}"
    try:
        _validator(kind)(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        return schema_error(exc)
    try:
        return _normalise(kind, obj, settings)
    except ValueError as exc:
        return str(exc)


def parse_message(raw: bytes | None, topic: str, settings: Settings) -> tuple[list[Event], list[Rejection]]:
    """One input message -> its valid events and its rejections (each batch element judged alone).

    A message that its kind's struct takes whole (`streams.core.fast_events`) skips the schema walk; any
    other goes the schema path, which words the errors."""
    kind = TOPIC_TYPES.get(topic)
    decoded = decode_valid(_struct(kind), raw) if kind is not None and raw is not None else None
    if decoded is None:
        return parse_with_schema(raw, topic, settings)
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, obj in decoded:
        try:
            events.append(_normalise(kind, obj, settings))
        except ValueError as exc:
            rejections.append(Rejection(str(exc), index))
    return events, rejections


def parse_with_schema(raw: bytes | None, topic: str, settings: Settings) -> tuple[list[Event], list[Rejection]]:
    """`parse_message` by the JSON Schemas alone: every message that is not plainly valid comes here."""
    decoded = decode(raw)
    if isinstance(decoded, Rejection):
        return [], [decoded]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, obj in decoded:
        result = validate(obj, topic, settings)
        if isinstance(result, str):
            rejections.append(Rejection(result, index))
        else:
            events.append(result)
    return events, rejections


def parse_ts(value: int | float | str) -> int:
    """An already schema-checked `ts` -> epoch milliseconds.

    The schema's `integer` admits 1763800000000.0 (JSON Schema counts a float with no fraction
    as an integer), and RFC 3339 admits a lower-case `t` and `z`: both are taken as they mean.
    """
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"ts must be integer epoch milliseconds, got {value!r}")
        return int(value)
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValueError(f"ts is not a valid ISO-8601 date-time, got {value!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"ts needs a UTC offset (like Z or +02:00), got {value!r}")
    ms = (moment - _EPOCH) // _ONE_MS  # exact integer arithmetic: no float rounding of the milliseconds
    if ms < 0:
        raise ValueError(f"ts must be at or after 1970-01-01T00:00:00Z, got {value!r}")
    return ms


def to_reporting(amount: float, currency: str | None, settings: Settings, field: str) -> float:
    if currency is None or currency == settings.reporting_currency:
        return float(amount)
    rate = settings.fx_rates.get(currency)
    if rate is None:
        known = ", ".join(sorted(settings.fx_rates))
        raise ValueError(f"{field}: currency {currency!r} has no rate in FX_RATES (known: {known})")
    return float(amount) * rate


def _normalise(kind: str, obj: dict[str, Any], settings: Settings) -> Event:
    ts = parse_ts(obj["ts"])
    currency = obj.get("currency")
    if kind == "spend":
        return Spend(
            "s",
            obj["event_id"],
            ts,
            obj["channel"],
            obj.get("campaign") or NONE_CAMPAIGN,
            to_reporting(obj["amount"], currency, settings, "amount"),
        )
    if kind == "refund":
        amount = obj.get("amount")
        return Refund("r", obj["event_id"], ts, obj["order_id"],
                      None if amount is None else to_reporting(amount, currency, settings, "amount"))
    consented = obj.get("consent") is not False
    tracking_id = obj["tracking_id"] if consented else ANONYMOUS
    if kind in ("impression", "click"):
        cost = obj.get("cost")
        return _new_event(Touch, (  # nearly every event: built from a tuple (see `_new_event`)
            "i" if kind == "impression" else "c",
            obj["event_id"],
            ts,
            tracking_id,
            obj["channel"],
            obj.get("campaign") or NONE_CAMPAIGN,
            obj.get("affiliate_id") if kind == "click" else None,
            0.0 if cost is None else to_reporting(cost, currency, settings, "cost"),
        ))
    customer_id = obj.get("customer_id") if consented else None
    if kind == "order":
        margin = obj.get("margin")
        return Order(
            "o",
            obj["event_id"],
            ts,
            tracking_id,
            obj["order_id"] if consented else ANONYMOUS,
            to_reporting(obj["revenue"], currency, settings, "revenue"),
            None if margin is None else float(margin),
            obj.get("promo_code") or None,
            customer_id,
        )
    return Lead("l", obj["event_id"], ts, tracking_id, customer_id)


def schema_error(exc: fastjsonschema.JsonSchemaValueException) -> str:
    field = (exc.name or "data").removeprefix("data").lstrip(".") or "event"
    message = exc.message.removeprefix(exc.name or "").strip()
    if exc.rule == "required":
        present = exc.value if isinstance(exc.value, dict) else {}
        missing = [name for name in exc.definition.get("required", ()) if name not in present]
        return f"missing required field(s): {', '.join(missing)}"
    if exc.rule in ("oneOf", "anyOf") and "description" in exc.definition:
        message = f"must be {exc.definition['description']}"
    return f"{field} {message}, got {short_repr(exc.value)}"


def short_repr(value: Any) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
